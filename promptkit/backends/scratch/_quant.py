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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigurationError

__all__ = [
    "GROUP",
    "PRECISIONS",
    "Int4Linear",
    "Int4Weights",
    "Int8Linear",
    "auto_precision",
    "check_precision",
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
        """The layer's output ``(N, out)`` for ``rows`` ``(N, in)`` (bfloat16, or cast to it)."""
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
        """The layer's output ``(N, out)`` for ``rows`` ``(N, in)`` (bfloat16, or cast to it)."""
        return _biased(_INT4_MM(_bfloat16(rows), self.packed, GROUP, self.scale_zero), self.bias)


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
