"""Converting a float32 GPT or Llama to a reduced precision in place (:func:`reduce_precision`).

The layers it puts in are :mod:`._quant`'s (bfloat16 ``nn.Linear``, :class:`Int8Linear`,
:class:`Int4Linear`) and, for the output projection of int8 and int4 models on CPUs that run
it, :mod:`._int8_head`'s :class:`Int8Head`.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ...errors import ConfigurationError
from ._int8_head import Int8Head, outlier_channels, row_quantized_products
from ._layout import Linear
from ._quant import Int4Linear, Int4Weights, Int8Linear, check_precision

__all__ = ["reduce_precision"]


# Llama projections that reduced precision computes as one product: (fused name, parts).
FUSED = (
    ("attn.qkv_proj", ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
    ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")),
)


def _weight_of(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A float linear layer's ``(out, in)`` weight and its bias."""
    if isinstance(layer, Linear):
        weight = layer.weight if layer.transposed else layer.weight.t()
        return weight.detach(), layer.bias
    assert isinstance(layer, nn.Linear)
    return layer.weight.detach(), layer.bias


def _groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The linear layers of the blocks to convert, as (new name, the layers it replaces):
    Llama's q/k/v and gate/up projections joined (see :data:`FUSED`), the rest one by one."""
    linears = [
        name
        for name, module in model.named_modules()
        if name.startswith("h.") and isinstance(module, (Linear, nn.Linear))
    ]
    groups, taken = [], set()
    for index in range(len(cast(nn.ModuleList, model.get_submodule("h")))):
        for fused, parts in FUSED:
            names = [f"h.{index}.{part}" for part in parts]
            if all(name in linears for name in names):
                groups.append((f"h.{index}.{fused}", names))
                taken.update(names)
    return groups + [(name, [name]) for name in linears if name not in taken]


def _reduced_layer(
    precision: str,
    weights: list[torch.Tensor],
    known: list[Int4Weights | None],
    bias: torch.Tensor | None,
) -> nn.Module:
    """One layer computing the float ``(out, in)`` ``weights`` stacked by rows, in
    ``precision``; ``known`` holds the int4 weights already known for some of them."""
    weight = torch.cat(weights)
    if precision == "bfloat16":
        layer = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None and layer.bias is not None:
                layer.bias.copy_(bias)
        return layer
    if precision == "int4" and Int4Linear.fits(*weight.shape):
        parts = [
            k if k is not None else Int4Weights.quantize(w)
            for w, k in zip(weights, known, strict=True)
        ]
        joined = Int4Weights(
            torch.cat([p.codes for p in parts]),
            torch.cat([p.scale for p in parts]),
            torch.cat([p.zero for p in parts]),
        )
        return Int4Linear(joined, bias)
    return Int8Linear(weight, bias)


def reduce_precision(
    model: nn.Module, precision: str, int4_weights: dict[str, Int4Weights] | None = None
) -> None:
    """Convert ``model`` (a GPT or Llama in float32) to ``precision`` in place; Llama's query,
    key and value projections become one layer (``attn.qkv_proj``), and so do its gate and up
    projections (``mlp.gate_up_proj``): one product each instead of three and two. int8 and
    int4 models get an int8 output projection, on a CPU with AVX512-VNNI an :class:`Int8Head`.

    For int4, ``int4_weights`` gives layers (by module name) whose int4 weights are already
    known (a GGUF file's Q4 blocks): they are taken as they are, not quantized again. A layer
    the int4 kernel cannot take (inputs not a multiple of 32, outputs not of 16) becomes int8.

    Raises ConfigurationError for an unknown precision.
    """
    if check_precision(precision) in (None, "float32"):
        return
    if precision == "auto":
        raise ConfigurationError("resolve dtype='auto' with auto_precision before converting")
    known = int4_weights or {}
    for target, names in _groups(model):
        if precision == "bfloat16" and len(names) == 1:
            continue  # converted with the rest below
        weights, biases = zip(
            *(_weight_of(model.get_submodule(name)) for name in names), strict=True
        )
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat(
                [
                    torch.zeros(w.size(0)) if b is None else b
                    for w, b in zip(weights, biases, strict=True)
                ]
            )
        layer = _reduced_layer(precision, list(weights), [known.get(n) for n in names], bias)
        for name in names:
            parent, _, child = name.rpartition(".")
            delattr(model.get_submodule(parent), child)
        parent, _, child = target.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    head = None
    if precision in ("int8", "int4"):  # quantized from the float32 weights
        head = Int8Linear(cast(torch.Tensor, model.output_weight), None)
        model.head = head
    exact = {n: b for n, b in model.named_buffers() if n in ("inv_freq", "slopes")}
    model.to(torch.bfloat16)
    for name, buffer in exact.items():  # rotary frequencies and ALiBi slopes stay float32
        setattr(model, name, buffer)
    if head is not None and head.weight.is_cpu and row_quantized_products():
        model.head = Int8Head(head, outlier_channels(model))  # its outliers: the blocks' own
