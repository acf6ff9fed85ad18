"""LoRA adapters on promptkit's decoders, with peft: wrapping, fingerprints, loading.

peft's LoRA wraps ``torch.nn.Linear`` layers. The Llama family's projections are such layers
already, while GPT-2's store each projection in the CPU layout of
:class:`~promptkit.backends.scratch._layout.Linear`: for training, :func:`to_torch_linears` swaps
the targeted ones for equivalent ``nn.Linear`` layers before peft wraps them, and
:func:`to_layout_linears` swaps them back once the adapter is merged. Each family has its own
default targets (:func:`default_lora_targets`). Loading a saved adapter (:func:`apply_adapter`)
merges its matrices without peft.

An adapter folder (written by ``promptkit finetune --lora-rank R`` without ``--merge``) holds
peft's ``adapter_config.json`` and ``adapter_model.safetensors`` beside promptkit's
``config.json`` (``{"format": "promptkit-adapter", "base": {"spec", "sha256"}, ...}``): the base
model by its ``scratch:`` spec (a path or the shipped model's registry name) and the fingerprint
of its weights, so that an adapter is never applied to weights it was not trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigurationError
from ._layout import Linear
from .llama import Llama

__all__ = [
    "ADAPTER_FILE",
    "ADAPTER_FORMAT",
    "LLAMA_LORA_TARGETS",
    "LORA_TARGETS",
    "adapter_fingerprint",
    "apply_adapter",
    "default_lora_targets",
    "is_adapter_folder",
    "read_adapter_config",
    "to_layout_linears",
    "to_torch_linears",
    "weights_fingerprint",
]

ADAPTER_FORMAT = "promptkit-adapter"
ADAPTER_FILE = "adapter_model.safetensors"  # peft's name for the adapter's weights
# The projections LoRA wraps by default: attention's q/k/v and output, the MLP's two layers.
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
# The same for the Llama family: attention's four projections, the SwiGLU MLP's three.
LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def default_lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The projections LoRA wraps by default in ``model``: its family's attention and MLP
    layers."""
    return LLAMA_LORA_TARGETS if isinstance(model, Llama) else LORA_TARGETS


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's tensors (names, shapes, dtypes and values, in name order): the same
    weights give the same fingerprint whatever file or layout they were read from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        if isinstance(model.get_submodule(name.rpartition(".")[0] or ""), Linear):
            value = _torch_layout(model, name, value)
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}\n".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _torch_layout(model: nn.Module, name: str, value: torch.Tensor) -> torch.Tensor:
    """A layout Linear's weight as nn.Linear stores it, ``(out, in)``; biases unchanged."""
    module = model.get_submodule(name.rpartition(".")[0])
    if name.endswith(".weight") and not getattr(module, "transposed", False):
        return value.t().contiguous()
    return value


def to_torch_linears(model: nn.Module, targets: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Make every linear layer whose name ends with one of ``targets`` an ``nn.Linear`` (what
    peft wraps): a layout Linear is replaced, in place, by one computing the same function, an
    ``nn.Linear`` is kept. Returns the replaced modules' names.

    Raises ConfigurationError when no layer matches (naming the layers there are).
    """
    linears = (Linear, nn.Linear)
    matching = [
        name
        for name, module in model.named_modules()
        if isinstance(module, linears) and name.rpartition(".")[2] in targets
    ]
    found = [name for name in matching if isinstance(model.get_submodule(name), Linear)]
    if not matching:
        names = sorted(
            {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, linears)}
        )
        raise ConfigurationError(
            f"no linear layer named {', '.join(targets)} in the model; its linear layers are "
            f"named {', '.join(names) or '(none)'}"
        )
    for name in found:
        old = model.get_submodule(name)
        assert isinstance(old, Linear)
        weight = old.weight if old.transposed else old.weight.t()  # (out, in)
        new = nn.Linear(weight.size(1), weight.size(0), bias=old.bias is not None)
        new.to(device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        _set_module(model, name, new)
    return found


def to_layout_linears(model: nn.Module, names: list[str]) -> None:
    """Undo :func:`to_torch_linears` for the modules ``names`` (plain ``nn.Linear`` again,
    an adapter merged into them): each becomes a layout Linear with the same weights."""
    for name in names:
        old = model.get_submodule(name)
        if not isinstance(old, nn.Linear):
            raise ConfigurationError(f"{name!r} is a {type(old).__name__}, not a plain Linear")
        new = Linear(old.in_features, old.out_features, bias=old.bias is not None)
        new.to(device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight if new.transposed else old.weight.t())
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(old.bias)
        _set_module(model, name, new)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def adapter_fingerprint(folder: Path) -> str:
    """SHA-256 of an adapter folder's weights and settings (what makes it this adapter)."""
    digest = hashlib.sha256()
    for name in (ADAPTER_FILE, "adapter_config.json", "config.json"):
        digest.update(name.encode() + b"\0")
        with (folder / name).open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_adapter_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a promptkit adapter (its config.json says so)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and config.get("format") == ADAPTER_FORMAT


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The adapter folder's config.json, checked; raises ConfigurationError naming what is
    missing."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    base = config.get("base")
    lora = config.get("lora")
    if not (
        isinstance(base, dict)
        and isinstance(base.get("spec"), str)
        and isinstance(base.get("sha256"), str)
        and isinstance(lora, dict)
        and isinstance(lora.get("targets"), list)
    ):
        raise ConfigurationError(
            f"{folder / 'config.json'} is a {ADAPTER_FORMAT} config without its base "
            '({"spec": ..., "sha256": ...}) or its lora targets; write it again with '
            "`promptkit finetune`"
        )
    missing = [n for n in (ADAPTER_FILE, "adapter_config.json") if not (folder / n).is_file()]
    if missing:
        raise ConfigurationError(f"the adapter folder {str(folder)!r} has no {', '.join(missing)}")
    return dict(config)


def apply_adapter(model: nn.Module, folder: Path, config: dict[str, Any]) -> None:
    """Merge the LoRA adapter in ``folder`` into ``model`` (the base it was trained on), in
    place: each wrapped layer's weight gains ``scale * B @ A`` (peft's merge, without importing
    peft, so loading stays quick). The layers keep their layout (a layout Linear's, or
    ``nn.Linear``'s ``(out, in)``).

    Raises ConfigurationError when the base's weights are not those the adapter was trained
    on (their fingerprint differs), or for an adapter this loader does not read (not LoRA,
    DoRA, per-layer ranks, trained biases), or tensors that do not fit the model.
    """
    expected = config["base"]["sha256"]
    found = weights_fingerprint(model)
    if found != expected:
        raise ConfigurationError(
            f"the adapter in {str(folder)!r} was trained on other weights than those of its "
            f"base {config['base']['spec']!r} (sha256 {found[:12]}..., expected "
            f"{expected[:12]}...); load the base it was trained on, or fine-tune again"
        )
    from safetensors.torch import load_file

    settings = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    _check_lora_settings(settings, folder)
    rank = settings["r"]
    scale = settings["lora_alpha"] / (rank**0.5 if settings.get("use_rslora") else rank)
    tensors = load_file(str(folder / ADAPTER_FILE))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        pairs.setdefault(name, {})[part.removesuffix(".weight")] = tensor
    with torch.no_grad():
        for name, pair in sorted(pairs.items()):
            layer = _lora_layer(model, name, pair, folder)
            delta = scale * (pair["B"].float() @ pair["A"].float())  # (out, in)
            change = delta if _out_in(layer) else delta.t()  # the layer's orientation
            layer.weight.add_(change.to(device=layer.weight.device, dtype=layer.weight.dtype))


def _check_lora_settings(settings: dict[str, Any], folder: Path) -> None:
    unsupported = {
        "peft_type": settings.get("peft_type") != "LORA",
        "use_dora": bool(settings.get("use_dora")),
        "fan_in_fan_out": bool(settings.get("fan_in_fan_out")),
        "rank_pattern": bool(settings.get("rank_pattern")),
        "alpha_pattern": bool(settings.get("alpha_pattern")),
        "bias": settings.get("bias", "none") != "none",
        "modules_to_save": bool(settings.get("modules_to_save")),
    }
    found = [name for name, bad in unsupported.items() if bad]
    if found or not isinstance(settings.get("r"), int) or "lora_alpha" not in settings:
        raise ConfigurationError(
            f"{folder / 'adapter_config.json'}: not a plain LoRA adapter this loader reads "
            f"({', '.join(found) or 'no r or lora_alpha'}); write it with `promptkit finetune`"
        )


def _out_in(layer: Linear | nn.Linear) -> bool:
    """Whether ``layer`` stores its weight ``(out, in)`` (nn.Linear, a transposed layout
    Linear) rather than ``(in, out)``."""
    return isinstance(layer, nn.Linear) or layer.transposed


def _lora_layer(
    model: nn.Module, name: str, pair: dict[str, torch.Tensor], folder: Path
) -> Linear | nn.Linear:
    """The linear layer that adapter tensors ``name`` belong to, checked against them."""
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        layer = None
    if not isinstance(layer, (Linear, nn.Linear)) or set(pair) != {"A", "B"}:
        raise ConfigurationError(
            f"the adapter in {str(folder)!r} does not fit its base: {name!r} is not a linear "
            "layer of the model with both LoRA matrices (A and B)"
        )
    n_out, n_in = layer.weight.shape if _out_in(layer) else layer.weight.shape[::-1]
    a, b = pair["A"], pair["B"]
    if a.shape[1] != n_in or b.shape[0] != n_out or a.shape[0] != b.shape[1]:
        raise ConfigurationError(
            f"the adapter in {str(folder)!r} does not fit its base: layer {name!r} is "
            f"{n_in} -> {n_out}, its LoRA matrices are A {tuple(a.shape)} and B {tuple(b.shape)}"
        )
    return layer
