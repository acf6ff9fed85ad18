"""The CPU weight layout of promptkit's decoders: a Linear layer that stores each weight the
way decoding on a CPU streams it fastest (shared by every model family)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEW_ROWS", "Linear", "rows_times"]


FEW_ROWS = 32  # up to this many rows, (W @ x^T)^T beats x @ W^T for (out, in) weights on CPU


def rows_times(
    weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight.T + bias`` for a ``(out, in)`` weight, by the faster route for the rows."""
    flat = x.reshape(-1, x.size(-1))  # (N, in)
    if not 1 < flat.size(0) <= FEW_ROWS:
        return F.linear(x, weight, bias)
    # (out, N): a large-by-small product, efficient for a few rows
    y = weight @ flat.t() if bias is None else torch.addmm(bias[:, None], weight, flat.t())
    return y.t().reshape(*x.shape[:-1], weight.size(0))


class Linear(nn.Module):
    """``y = x W + b``, with ``W`` laid out for fast decoding on a CPU.

    Decoding multiplies a few vectors by large matrices, bound by how fast weights stream from
    memory; which layout streams fastest depends on the shape (bench/decode.py). A widening or
    square layer keeps ``(in, out)`` as GPT-2's Conv1D; a narrowing one keeps nn.Linear's
    ``(out, in)`` (``transposed``) and, for a few rows, computes ``(W x^T)^T``.
    """

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.transposed = n_out < n_in
        shape = (n_out, n_in) if self.transposed else (n_in, n_out)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return rows_times(self.weight, x, self.bias)
        flat = x.reshape(-1, x.size(-1))  # (B*T, in)
        y = flat @ self.weight if self.bias is None else torch.addmm(self.bias, flat, self.weight)
        return y.view(*x.shape[:-1], self.weight.size(1))  # (B, T, out)
