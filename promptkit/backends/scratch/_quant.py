"""Reduced-precision weights for promptkit's decoders: bfloat16, int8 and int4 weight-only.

A precision is chosen when a model is loaded (``get_backend("scratch:...", dtype=...)``):

- ``float32``: the weights as trained (the default);
- ``bfloat16``: every weight and activation in bfloat16;
- ``int8``: each linear layer's weight in int8 with one scale per output channel;
- ``int4``: each linear layer's weight in int4, in groups of 32 inputs with a scale and a zero
  point per group (``w = (q - 8) * scale + zero``, ``q`` in 0..15): GGUF's Q4_0 and Q4_1 blocks
  map onto it block for block (:class:`Int4Weights`);
- ``auto``: what suits the weights and the CPU (:func:`auto_precision`).

The int8 and int4 layers run PyTorch's weight-only CPU kernels (``_weight_int8pack_mm``,
``_weight_int4pack_mm_for_cpu``), fast with bfloat16 activations: the quantized models compute in
bfloat16 between their layers (norms in float32), as a bfloat16 model does. Their output
projection is int8 in both (int4 logits cost more perplexity than the time they save), with its
inputs quantized to int8 per row on CPUs with AVX512-VNNI (:mod:`._int8_head`), and the token
embedding stays bfloat16 (a lookup, not a product). Final hidden states are float32, so scoring
and sampling read float32 logits whatever the precision. :mod:`._reduce` converts a model.

Those kernels widen the weights again for every row they multiply, so their time grows with
the rows: on the Intel Xeon of bench/RESULTS.md, a 1536 x 576 int4 product took 0.03 ms for one
row and 39 ms for 4,096, where a bfloat16 product of the same shape took 2.2 ms. A prompt's pass
and scoring multiply hundreds of rows at once. From :data:`DENSE_ROWS` rows up, a layer
therefore widens its weight once per call (about 0.15 ms for int8 and 0.6-0.8 ms for int4 at
that shape) and runs a dense product: bfloat16 on CPUs with bfloat16 arithmetic, float32
elsewhere. The widened weight is the kernel's (``(q - 8) * scale + zero`` in float32), rounded
to bfloat16 in the first case, as the bfloat16 precision rounds its weights. The int4 codes are
read back from the kernel's own packed layout (:func:`int4_layout`): no second copy is kept
between calls, and a call holds the widened layer (4 bytes a weight) while it runs. Decoding
steps of fewer rows keep the kernels, and compiled steps always do. Whether a row goes dense
depends on the rows of its call, so the same row in a smaller batch, or after a prefix-cache
hit, can round differently.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigurationError

__all__ = [
    "DENSE_ROWS",
    "GROUP",
    "PRECISIONS",
    "Int4Linear",
    "Int4Weights",
    "Int8Linear",
    "auto_precision",
    "check_precision",
    "int4_layout",
    "plain_logits",
    "precision_of",
    "split_spec_dtype",
]

PRECISIONS = ("float32", "bfloat16", "int8", "int4")  # what dtype= accepts, besides "auto"
GROUP = 32  # int4 inputs sharing one scale and zero point
_PACK_ROWS = 16  # the int4 kernel packs output channels sixteen at a time
# The weight-only kernels' overloads, resolved once (a packet resolves its overload per call).
_INT8_MM = torch.ops.aten._weight_int8pack_mm.default
_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default
# Rows from which a layer widens its weight once and runs a dense product (module docstring):
# about where widening costs what the kernel spends on the rows (bench/dense.py).
DENSE_ROWS = {"int8": 48, "int4": 112}


def check_precision(dtype: str | None) -> str | None:
    """``dtype`` itself when it names a precision (or ``auto``, or None for the default);
    raises ConfigurationError naming the choices otherwise."""
    if dtype is None or dtype == "auto" or dtype in PRECISIONS:
        return dtype
    raise ConfigurationError(
        f"unknown dtype {dtype!r} for scratch; choose one of {', '.join(PRECISIONS)} or auto"
    )


def split_spec_dtype(arg: str, dtype: str | None) -> tuple[str, str | None]:
    """The model part of a ``scratch:`` argument and the dtype, from the ``dtype`` option or
    an ``@DTYPE`` suffix (``smollm2-135m-instruct@int4``: how the command line, which passes
    only a spec, asks for one); a path that exists with an ``@`` in it stays whole. Raises
    ConfigurationError for an unknown suffix or one that contradicts the option."""
    model, at, suffix = arg.rpartition("@")
    if not at or Path(os.path.expanduser(arg)).exists():
        return arg, dtype
    if suffix != "auto" and suffix not in PRECISIONS:
        raise ConfigurationError(
            f"scratch: unknown dtype {suffix!r} after '@' in {arg!r}; choose one of "
            f"{', '.join(PRECISIONS)} or auto (scratch:MODEL@int4), and +compile to compile "
            "the decoding steps (scratch:MODEL@int4+compile)"
        )
    if dtype is not None and dtype != suffix:
        raise ConfigurationError(
            f"scratch: the spec asks for dtype {suffix!r} but the dtype option for {dtype!r}; "
            "give it once"
        )
    return model, suffix


def has_bfloat16_arithmetic() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@functools.cache
def _cpu_dense_dtype() -> torch.dtype:
    return torch.bfloat16 if has_bfloat16_arithmetic() else torch.float32


def _dense_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the dense products: bfloat16, but float32 on a CPU without bfloat16
    arithmetic (emulated bfloat16 products are slower than float32 ones)."""
    return _cpu_dense_dtype() if device.type == "cpu" else torch.bfloat16


def _dense_here(rows: torch.Tensor, kind: str) -> bool:
    """Whether a product of ``rows`` goes dense (see the module's docstring): many rows, not
    inside a compiled graph (whose kernels are chosen by inductor)."""
    return not torch.compiler.is_compiling() and rows.size(0) >= DENSE_ROWS[kind]


def _dense_product(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``rows @ weight.T (+ bias)`` in ``weight``'s dtype, returned in bfloat16 as the kernels
    return it."""
    product = F.linear(rows.to(weight.dtype), weight).to(torch.bfloat16)
    return _biased(product, bias)


def auto_precision(device: str, file_precision: str | None = None) -> str:
    """What ``dtype="auto"`` picks: a quantized file's own precision (``file_precision``, int4
    for Q4_0/Q4_1 GGUF files, int8 for Q8_0); else bfloat16 on a GPU; else int8 on a CPU with
    bfloat16 arithmetic (about twice float32's decoding speed, perplexity within 1%), float32
    on one without (where bfloat16 is emulated and slower)."""
    if file_precision is not None:
        return file_precision
    if device != "cpu":
        return "bfloat16"
    return "int8" if has_bfloat16_arithmetic() else "float32"


@dataclass(frozen=True)
class Int4Weights:
    """An int4 weight ``(out, in)``: ``codes`` 0..15 (uint8, one per weight) and per group of
    :data:`GROUP` inputs a ``scale`` and ``zero`` ``(out, in / GROUP)``, float32; the weight is
    ``(codes - 8) * scale + zero``."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Int4Weights:
        """The nearest int4 weights of a float ``(out, in)`` weight, each group spanning its own
        minimum to maximum (as GGUF's Q4_1); scale and zero are rounded to bfloat16 (the
        kernel's) before the codes are chosen, so the rounding is accounted for."""
        out, width = weight.shape
        groups = weight.detach().float().reshape(out, width // GROUP, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)  # (out, in / GROUP)
        scale = ((high - low) / 15).to(torch.bfloat16).float()
        zero = (low + 8 * scale).to(torch.bfloat16).float()
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        codes = torch.round((groups - zero[..., None]) / safe[..., None] + 8).clamp(0, 15)
        return cls(codes.reshape(out, width).to(torch.uint8), scale, zero)

    def rows(self, order: torch.Tensor) -> Int4Weights:
        """The same weights with output channels reordered by ``order`` (a permutation)."""
        return Int4Weights(self.codes[order], self.scale[order], self.zero[order])

    def dequantized(self) -> torch.Tensor:
        """The float32 ``(out, in)`` weight these codes, scales and zeros stand for."""
        scale = self.scale.repeat_interleave(GROUP, dim=1)
        zero = self.zero.repeat_interleave(GROUP, dim=1)
        return (self.codes.float() - 8) * scale + zero


def _unpack(packed: torch.Tensor, out: int, width: int, layout: tuple[int, bool]) -> torch.Tensor:
    """The ``(out, width)`` codes, uint8 0..15, that PyTorch's int4 packing put in ``packed``
    with ``layout`` (see :func:`int4_layout`)."""
    block, paired = layout
    flat = packed.reshape(-1)
    full = out // block * block
    parts = []
    if full:
        blocks = flat[: full * width // 2].view(full // block, width, block // 2)
        low, high = blocks & 15, blocks >> 4
        if paired:  # channels 2i and 2i + 1 share a byte
            codes = torch.stack((low, high), dim=-1).reshape(full // block, width, block)
        else:  # the low halves hold the block's first half of channels, the high its second
            codes = torch.cat((low, high), dim=-1)
        parts.append(codes.transpose(1, 2).reshape(full, width))
    if out > full:  # a last, shorter block: paired channels
        tail = flat[full * width // 2 :].view(width, (out - full) // 2)
        parts.append(torch.stack((tail & 15, tail >> 4), dim=-1).reshape(width, -1).t())
    return parts[0] if len(parts) == 1 else torch.cat(parts)


_LAYOUTS = ((64, False), (32, False), (32, True))  # AVX512's, AVX2's, and the plain C++ one's


@functools.cache
def int4_layout() -> tuple[int, bool] | None:
    """How ``_convert_weight_to_int4pack_for_cpu`` lays codes out on this CPU, as ``(channels
    per block, whether pairs of channels share a byte)``; None when it is none of the layouts
    PyTorch 2.13 uses (AVX512, AVX2, plain C++), and int4 layers then keep the kernel for every
    product. Found once per process by packing a probe of 80 channels (full blocks and a
    shorter last one) and reading it back."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 16, (80, 64), dtype=torch.int32, generator=generator)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
    if packed.dtype != torch.uint8 or packed.numel() != probe.numel() // 2:
        return None
    for layout in _LAYOUTS:
        if torch.equal(_unpack(packed, 80, 64, layout).int(), probe):
            return layout
    return None


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(..., in)`` as the ``(N, in)`` rows the weight-only kernels take."""
    return x.reshape(-1, x.size(-1))


def _bfloat16(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` in bfloat16, the weight-only kernels' input (no cast when already so)."""
    return rows if rows.dtype == torch.bfloat16 else rows.to(torch.bfloat16)


def _biased(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A kernel's output with the layer's bias, if it has one, added."""
    return y if bias is None else y + bias


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` in int8, one bfloat16 scale per output channel; computes in
    bfloat16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        """Quantize the float ``(out, in)`` ``weight`` symmetrically per output channel."""
        super().__init__()
        weight = weight.detach().float().contiguous()
        scale = (weight.abs().amax(dim=1) / 127).to(torch.bfloat16)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
        self.weight: torch.Tensor
        self.scale: torch.Tensor
        self.bias: torch.Tensor | None
        codes = torch.round(weight / safe[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight", codes)  # (out, in)
        self.register_buffer("scale", scale)  # (out,)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.multiply(_rows(x)).view(*x.shape[:-1], self.weight.size(0))

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        """The layer's output ``(N, out)`` for ``rows`` ``(N, in)`` (bfloat16, or cast to it):
        from :data:`DENSE_ROWS` rows up, a dense product with the weight widened once."""
        if _dense_here(rows, "int8"):
            weight = self.weight.to(_dense_dtype(rows.device)) * self.scale[:, None]
            return _dense_product(rows, weight, self.bias)
        return _biased(_INT8_MM(_bfloat16(rows), self.weight, self.scale), self.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 ``(out, in)`` weight this layer multiplies by."""
        return self.weight.float() * self.scale.float()[:, None]


class Int4Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` in int4 (:class:`Int4Weights`), packed for PyTorch's CPU
    kernel; computes in bfloat16."""

    def __init__(self, weights: Int4Weights, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weights.codes.shape
        self.packed: torch.Tensor
        self.scale_zero: torch.Tensor
        self.bias: torch.Tensor | None
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weights.codes.int(), 1)
        scale_zero = torch.stack((weights.scale.t(), weights.zero.t()), dim=-1)  # (in/G, out, 2)
        self.register_buffer("packed", packed)  # (out, in / 2), two codes a byte
        self.register_buffer("scale_zero", scale_zero.to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    @staticmethod
    def fits(out_features: int, in_features: int) -> bool:
        """Whether the kernel takes a layer of this shape (else it stays int8)."""
        return in_features % GROUP == 0 and out_features % _PACK_ROWS == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.multiply(_rows(x)).view(*x.shape[:-1], self.out_features)

    def multiply(self, rows: torch.Tensor) -> torch.Tensor:
        """The layer's output ``(N, out)`` for ``rows`` ``(N, in)`` (bfloat16, or cast to it):
        from :data:`DENSE_ROWS` rows up, a dense product with the weight widened once."""
        if _dense_here(rows, "int4") and (layout := int4_layout()) is not None:
            weight = self._widened(layout, _dense_dtype(rows.device))
            return _dense_product(rows, weight, self.bias)
        return _biased(_INT4_MM(_bfloat16(rows), self.packed, GROUP, self.scale_zero), self.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 ``(out, in)`` weight this layer multiplies by."""
        layout = int4_layout()
        if layout is None:  # the kernel itself, on the identity (rounded to bfloat16)
            identity = torch.eye(self.in_features, dtype=torch.bfloat16)
            widened: torch.Tensor = _INT4_MM(identity, self.packed, GROUP, self.scale_zero)
            return widened.t().float()
        return self._widened(layout, torch.float32)

    def _widened(self, layout: tuple[int, bool], dtype: torch.dtype) -> torch.Tensor:
        """The ``(out, in)`` weight as the kernel widens it, ``(q - 8) * scale + zero`` in
        float32 from the bfloat16 scales and zeros, then in ``dtype``; the codes read with
        ``layout`` (:func:`int4_layout`)."""
        out, width = self.out_features, self.in_features
        codes = _unpack(self.packed, out, width, layout).view(out, width // GROUP, GROUP)
        scale, zero = self.scale_zero.float().permute(2, 1, 0).contiguous()[..., None]
        weight = codes.float().sub_(8).mul_(scale).add_(zero).view(out, width)
        return weight if dtype == torch.float32 else weight.to(dtype)


def precision_of(model: nn.Module) -> str:
    """The precision ``model``'s weights are in (see :data:`PRECISIONS`)."""
    kinds = {type(m) for m in model.modules()}
    if Int4Linear in kinds:
        return "int4"
    if Int8Linear in kinds:
        return "int8"
    return str(model.get_submodule("wte").weight.dtype).removeprefix("torch.")


def plain_logits(
    hidden: torch.Tensor, weight: torch.Tensor, head: Int8Linear | None
) -> torch.Tensor | None:
    """Float32 logits of ``hidden`` where no fast float32 layout applies: through the int8
    ``head``, the bfloat16 ``weight``, or ``weight`` itself while training (gradients flow);
    None when the caller's float32 inference path should project."""
    if head is not None:
        projected: torch.Tensor = head(hidden)
        return projected.float()
    if torch.is_grad_enabled() and weight.requires_grad:
        return F.linear(hidden, weight)
    if weight.dtype != hidden.dtype:
        return F.linear(hidden.to(weight.dtype), weight).float()
    return None
