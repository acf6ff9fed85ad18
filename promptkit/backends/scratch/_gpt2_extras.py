"""promptkit-mini's extras to GPT-2, each off unless a GPTConfig asks (the ``mini`` preset does).

- ALiBi positions (:func:`alibi_slopes`, :func:`alibi_bias`) in place of the learned table;
- smeared keys (:func:`smeared`): each head's keys mix in the key before;
- a local convolution before attention (:class:`LocalMix`);
- a mimetic start of attention (:func:`mimetic`): each key map starts equal to its query map;
- the learned position table's start from sinusoids (:func:`sinusoids`, every preset that has
  the table and is trained here).

:mod:`promptkit.backends.scratch.gpt2` calls them; see GPTConfig there for why each helps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._layout import Linear

__all__ = [
    "MIMETIC_SCORE",
    "MIX_START",
    "LocalMix",
    "alibi_bias",
    "alibi_slopes",
    "mimetic",
    "sinusoids",
    "smeared",
]


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al., 2022): a geometric series from ``2^(-8/n)`` down
    to ``2^-8``, so some heads look only a few tokens back and others across the context."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / n_head) for i in range(n_head)])


def alibi_bias(
    slopes: torch.Tensor, mask: torch.Tensor | None, query_length: int, past_length: int
) -> torch.Tensor:
    """The additive attention bias ``(B or 1, n_head, T, past + T)``: ``-slope * distance``
    from each query back to each key, and ``-inf`` where ``mask`` (or causality) forbids.

    Distances are counted in cache slots. Left padding shifts every real token of a row by the
    same amount, so the distances between real tokens are the ones the row has alone."""
    total = past_length + query_length
    device = slopes.device
    query_pos = torch.arange(past_length, total, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(total, device=device)[None, :]  # (1, past + T)
    distance = (query_pos - key_pos).to(slopes.dtype)  # (T, past + T)
    bias = -slopes[:, None, None] * distance  # (nh, T, past + T)
    allowed = (key_pos <= query_pos)[None, None] if mask is None else mask
    return bias[None].masked_fill(~allowed, float("-inf"))


def smeared(
    k: torch.Tensor, smear: torch.Tensor, has_previous: torch.Tensor | None
) -> torch.Tensor:
    """Keys mixed with their predecessors: ``s * k[j] + (1 - s) * k[j - 1]``, ``s =
    sigmoid(smear)`` per head (Olsson et al., 2022). A query can then match the token
    *before* a key, which is what an induction head does ("find where the current token
    came before, copy what followed") without first needing a previous-token head in an
    earlier layer. ``has_previous`` ``(B, past + T)`` is False where the key before is
    absent or padding (it then counts as zero). The cache holds the raw keys."""
    share = torch.sigmoid(smear)[None, :, None, None]  # (1, nh, 1, 1)
    before = F.pad(k[:, :, :-1], (0, 0, 1, 0))  # (B, nh, past + T, hs), zero first
    if has_previous is not None:
        before = before * has_previous[:, None, :, None].to(k.dtype)
    return share * k + (1 - share) * before


MIX_START = 0.5  # LocalMix's starting weight on each earlier position


class LocalMix(nn.Module):
    """A causal depthwise convolution with a residual: ``h[t] + sum_d w[d] * h[t - d]`` for
    ``d`` in ``0..width-1``, one weight per channel and offset (a "Canon" layer, Allen-Zhu
    2025). Every position sees its last few tokens before attention does, so a head can match
    a key several tokens back, such as the word that a demonstration's label follows.

    With a cache, ``inputs`` ``(B, capacity, C)`` keeps what earlier positions fed in; padding
    (``valid`` False) feeds in zeros. Starts mixing every earlier offset at weight
    :data:`MIX_START`: from a zero start a head's use of a token ``d`` back has no gradient
    (the weight meets itself on the query and the key side), and the gap between a word and
    its label is never learned; with ALiBi, a summing start closes it in a few hundred steps."""

    def __init__(self, n_embd: int, width: int):
        super().__init__()
        self.width = width
        start = torch.full((n_embd, self.width), MIX_START)
        start[:, 0] = 0.0  # the residual already carries h[t]
        self.weight = nn.Parameter(start)

    def forward(
        self,
        h: torch.Tensor,
        valid: torch.Tensor | None,
        inputs: torch.Tensor | None,
        past: int,
    ) -> torch.Tensor:
        T = h.size(1)
        fed = h if valid is None else h * valid[..., None].to(h.dtype)
        if inputs is not None:
            inputs[:, past : past + T] = fed
            start = max(0, past - self.width + 1)
            window = inputs[:, start : past + T]
        else:
            start, window = past, fed
        window = F.pad(window, (0, 0, self.width - 1 - (past - start), 0))  # zeros before 0
        mixed = sum(
            window[:, self.width - 1 - d : self.width - 1 - d + T] * self.weight[:, d]
            for d in range(self.width)
        )
        return h + mixed


def sinusoids(positions: int, width: int, std: float) -> torch.Tensor:
    """``(positions, width)`` sine/cosine position codes (Vaswani et al., 2017) scaled to
    standard deviation ``std``: the starting point of the learned position embedding.

    The code of position ``t + k`` is a fixed rotation of the code of ``t``, so one attention
    map can look ``k`` tokens back from every position at once; with random starting vectors
    that has to be learned position by position, which slows down the heads that read an
    answer off an earlier demonstration.
    """
    position = torch.arange(positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * -math.log(1e4) / width)
    codes = torch.zeros(positions, width)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return codes * (std / codes.std())


MIMETIC_SCORE = 4.0  # the attention logit a token's query gives its own key, at the start


def mimetic(c_attn: Linear, n_embd: int, n_head: int) -> None:
    """Start the key map equal to the query map, scaled so that a (layer-normed) input
    scores about :data:`MIMETIC_SCORE` against itself: ``q . k / sqrt(d) = |W x|^2 / sqrt(d)``
    with ``|W x|^2 ~ d * n_embd * std^2``."""
    width, head = n_embd, n_embd // n_head
    std = math.sqrt(MIMETIC_SCORE / (math.sqrt(head) * width))
    weight = c_attn.weight  # (in, 3 * out), or (3 * out, in) when transposed
    query = weight[:width] if c_attn.transposed else weight[:, :width]
    key = weight[width : 2 * width] if c_attn.transposed else weight[:, width : 2 * width]
    query.normal_(0.0, std)
    key.copy_(query)
