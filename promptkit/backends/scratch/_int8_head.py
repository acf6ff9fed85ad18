"""The int8 output projection, its inputs quantized to int8 per row on CPUs with AVX512-VNNI.

An int8 or int4 model's output projection (``head``: 49,152 x 576 int8 weights in SmolLM2) is
the largest product of a decoding step. PyTorch's weight-only kernel (``_weight_int8pack_mm``)
widens every weight to bfloat16 and is bound by that arithmetic: in SmolLM2 int4 on the Intel
Xeon of bench/RESULTS.md, 3.3 ms for one row, 7.8 ms for 8 rows, 538 ms for 512. With FBGEMM's
int8 x int8 product (``quantized::linear_dynamic``, with AVX512-VNNI), :class:`Int8Head` takes
2.4, 4.4 and 274 ms there (``bench/head.py``); decoding gains 1-14%, by run.

That product quantizes its float32 input per tensor, to 8 bits with one scale and zero point.
Used as it is, a row's logits would depend on the other rows of its batch, and a few channels
far larger than the rest (in SmolLM2's final hidden states one channel averages 59 times the
median's magnitude, 16 over 4 times) would leave the others a handful of levels: WikiText-2
perplexity rose by 1.6% and top-1 agreement with float32 fell from 96.3% to 93.5% (256 rows a
call). :class:`Int8Head` does two things around it:

- **Per row.** Each row is divided by its own largest magnitude, and two columns holding -1
  and +1 (their weights zero) are appended: the tensor's range is then [-1, 1] whatever the
  batch, so each row is quantized on its own scale, and a row's logits are the same alone or
  in a batch, bit for bit. The product is multiplied back by each row's magnitude.
- **Outlier channels apart.** The channels whose mean magnitude is over 4 times the median
  channel's, on hidden states of random tokens computed once at load
  (:func:`outlier_channels`), stay out of the int8 product and are added in float32, one
  product per row (a matrix product of several rows rounds differently from one row's).

On SmolLM2-135M int4 (``bench/head.py``): perplexity 15.256 against the weight-only head's
15.251, top-1 agreement with float32 97.0% against 96.3%. FBGEMM keeps its own packed copy of
the weights (28 MB for SmolLM2) beside the int8 buffer that :meth:`dequantized` reads; finding
the outliers and packing add about 0.6 s to loading SmolLM2.
Where FBGEMM is missing or its product is not exact at full range (its AVX2 kernels saturate;
:func:`row_quantized_products`), the head is the weight-only kernel.
"""

from __future__ import annotations

import functools
import threading
import warnings
from typing import Any

import torch
from torch import nn

from ._quant import Int8Linear

__all__ = ["Int8Head", "head_kind", "outlier_channels", "row_quantized_products"]

_OUTLIER_RATIO = 4.0  # an outlier channel's mean magnitude, in median channels' magnitudes
_CALIBRATION = (1, 64)  # random-token rows and positions whose hidden states find the outliers
_PACKING = threading.Lock()  # packing sets the process-wide quantized engine for a moment


@functools.cache
def row_quantized_products() -> bool:
    """Whether :class:`Int8Head`'s int8 x int8 product runs here, exactly: FBGEMM built in, its
    operators and quantized tensors still in PyTorch, and a product at full range that comes
    out right. FBGEMM's AVX2 and plain AVX512 kernels add pairs of 8-bit products in 16 bits,
    which saturates there (the head's inputs reach 255 after quantization); its AVX512-VNNI
    kernels do not. Checked once per process on a small product."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    operators = ("linear_prepack", "linear_dynamic")
    if not all(hasattr(torch.ops.quantized, name) for name in operators):
        return False
    if not hasattr(torch, "_make_per_channel_quantized_tensor"):
        return False
    return _exact_at_full_range()


def _exact_at_full_range() -> bool:
    """FBGEMM's product of 63 inputs at +1 and one at -1 (so quantized to 255 and 0) with
    weights of 127, against the exact 62 * 127: saturating kernels are about half off."""
    codes = torch.full((16, 64), 127, dtype=torch.int8)
    packed = _fbgemm_pack(codes, torch.ones(16, dtype=torch.float64))
    x = torch.ones(1, 64)
    x[0, 0] = -1.0
    found = torch.ops.quantized.linear_dynamic(x, packed, False)
    return bool(((found - 62 * 127).abs() < 0.02 * 62 * 127).all())


def outlier_channels(model: nn.Module) -> torch.Tensor:
    """Indices of the channels of ``model``'s final hidden states (a GPT or Llama) whose mean
    magnitude is over 4 times the median channel's, at most one in 16 channels: measured on
    64 random tokens (seeded, so a model always gets the same channels)."""
    config: Any = model.config
    rows, positions = _CALIBRATION
    generator = torch.Generator().manual_seed(0)
    shape = (rows, min(positions, config.context_length))
    ids = torch.randint(0, config.vocab_size, shape, generator=generator)
    device = next(model.parameters()).device
    with torch.inference_mode():
        hidden: torch.Tensor = model(ids.to(device))
        magnitude = hidden.float().abs().mean(dim=(0, 1)).cpu()  # (n_embd,)
    ranked = magnitude.argsort(descending=True)[: magnitude.numel() // 16]
    chosen = ranked[magnitude[ranked] > _OUTLIER_RATIO * magnitude.median()]
    return chosen.sort().values


class Int8Head(Int8Linear):
    """An :class:`Int8Linear` output projection whose CPU product quantizes its inputs to int8
    per row, with ``outliers`` (channel indices) kept in float32 (see the module's docstring).
    Its weights, scales and :meth:`dequantized` are :class:`Int8Linear`'s."""

    def __init__(self, head: Int8Linear, outliers: torch.Tensor):
        """The same weights and scales as ``head`` (no bias: an output projection has none)."""
        nn.Module.__init__(self)  # the codes are taken as they are, not quantized again
        if head.bias is not None:
            raise ValueError("Int8Head is an output projection, which has no bias")
        self.weight: torch.Tensor
        self.scale: torch.Tensor
        self.bias: torch.Tensor | None
        self.outliers: torch.Tensor
        self.kept: torch.Tensor
        kept = torch.ones(head.weight.size(1), dtype=torch.bool)
        kept[outliers] = False
        self.register_buffer("weight", head.weight)  # (out, in)
        self.register_buffer("scale", head.scale)  # (out,)
        self.register_buffer("bias", None)
        self.register_buffer("outliers", outliers.long(), persistent=False)
        self.register_buffer("kept", kept.nonzero().squeeze(1), persistent=False)
        self._bounds = torch.tensor([[-1.0, 1.0]])  # the two appended columns
        # (what they came from, FBGEMM's packed kept columns, the outliers' (outliers, out)
        # float32 weights), replaced whole when the weights change
        self._packed: tuple[tuple[Any, ...], Any, torch.Tensor] | None = None
        if self.weight.is_cpu:
            self._prepared()  # packed now, not by the first of several threads to decode

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 outputs ``(N, out)`` of ``rows`` ``(N, in)``, each row computed as it would
        be alone (a row holding NaN or infinity comes out NaN, as in the weight-only kernel,
        and leaves the others alone); off the CPU, the weight-only kernel's (bfloat16)."""
        if not rows.is_cpu:
            return super().multiply(rows)
        packed, outlier_t = self._prepared()
        x = rows.float()
        kept = x.index_select(1, self.kept)
        magnitude = kept.abs().amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
        # NaN (a row with NaN or infinity) to 0 here: FBGEMM's range would fail on it
        scaled = (kept / magnitude).nan_to_num_(nan=0.0)
        scaled = torch.cat((scaled, self._bounds.expand(x.size(0), 2)), dim=1)
        y: torch.Tensor = torch.ops.quantized.linear_dynamic(scaled, packed, False)
        y = y.mul_(magnitude)
        if outlier_t.numel():  # one product per row: a matrix product rounds a batch otherwise
            apart = x.index_select(1, self.outliers)[:, None]  # (N, 1, outliers)
            y = y.add_(torch.bmm(apart, outlier_t.expand(x.size(0), -1, -1))[:, 0])
        return y

    def _prepared(self) -> tuple[Any, torch.Tensor]:
        """FBGEMM's packing of the kept columns (and two zero columns for the bounds) and the
        outlier columns as float32 ``(outliers, out)``, made again when the weights change."""
        weight, scale = self.weight, self.scale
        key = (weight.data_ptr(), weight._version, scale.data_ptr(), scale._version, scale.dtype)
        if self._packed is None or self._packed[0] != key:
            codes = weight.index_select(1, self.kept)
            codes = torch.cat((codes, codes.new_zeros(codes.size(0), 2)), dim=1)
            packed = _fbgemm_pack(codes, scale.double())
            full = weight.index_select(1, self.outliers).float() * scale.float()[:, None]
            self._packed = (key, packed, full.t().contiguous())
        return self._packed[1], self._packed[2]


def head_kind(head: Int8Linear | None) -> str | None:
    """What computes an output projection, for a backend's cache identity: None (the model's
    own weights), ``"int8"`` (the weight-only kernel) or ``"int8 per row"`` (:class:`Int8Head`,
    whose logits differ slightly)."""
    if head is None:
        return None
    return "int8 per row" if isinstance(head, Int8Head) else "int8"


def _fbgemm_pack(codes: torch.Tensor, scale: torch.Tensor) -> Any:
    """``codes`` ``(out, in)`` int8 with ``scale`` per output channel, packed by FBGEMM (the
    process-wide engine set for the call and restored, under a lock). PyTorch warns once per
    process that quantized tensors, which the packing takes, are deprecated; that warning is
    silenced here (so a user's own use of them later in the process is not warned either), and
    :func:`row_quantized_products` is false on a PyTorch without them."""
    with _PACKING, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        zero = torch.zeros_like(scale, dtype=torch.long)
        quantized = torch._make_per_channel_quantized_tensor(codes, scale, zero, 0)
        engine = torch.backends.quantized.engine
        try:
            torch.backends.quantized.engine = "fbgemm"
            return torch.ops.quantized.linear_prepack(quantized, None)
        finally:
            torch.backends.quantized.engine = engine
