"""Checkpoints: promptkit's own folders, and Hugging Face GPT-2 folders imported tensor by tensor.

A promptkit checkpoint is one folder: ``config.json`` (``{"format": "promptkit-gpt", "model":
{...}}``), ``model.safetensors`` and ``tokenizer.json``. Files store every projection weight
as ``(in, out)``, GPT-2's Conv1D layout, whatever layout the model uses in memory. A Hugging
Face GPT-2 folder holds ``config.json`` (``model_type: gpt2``) and ``model.safetensors`` or
``pytorch_model.bin``; its tensors are mapped by name onto ours (the same names without
``transformer.``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigurationError
from ._tokenizer import Tokenizer
from .gpt2 import GPT, GPTConfig

__all__ = ["FORMAT", "load_checkpoint", "load_hf_gpt2", "load_state", "save_checkpoint"]

FORMAT = "promptkit-gpt"

# GPT-2's Conv1D layers store weights as (in, out); our Linear stores a narrowing layer (such as
# mlp.c_proj, 3072 -> 768) as (out, in), so those are transposed on import, the others copied.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers that old GPT-2 checkpoints carry and that hold no learned weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def save_checkpoint(
    model: GPT, tokenizer: Tokenizer, folder: str | os.PathLike[str], **extra: Any
) -> Path:
    """Write model, config and tokenizer into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    state = {
        name: (_in_out(model, name, v)).detach().contiguous().cpu()
        for name, v in model.state_dict().items()
    }
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(root / "model.safetensors"), metadata={"format": FORMAT})
    config = {"format": FORMAT, "model": model.config.to_dict(), **extra}
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save(root)
    return root


def load_checkpoint(
    folder: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[GPT, Tokenizer]:
    """Load a promptkit checkpoint or a Hugging Face GPT-2 folder; raises ConfigurationError."""
    root = Path(folder)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ConfigurationError(
            f"{str(root)!r} is not a model folder: no config.json (expected a promptkit "
            "checkpoint written by `promptkit train`, or a Hugging Face GPT-2 folder)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{config_path} is not valid JSON: {exc}") from None
    if config.get("format") == FORMAT:
        model = GPT(GPTConfig.from_dict(config["model"]))
        state = {
            k: _in_out(model, k, v) for k, v in _read_tensors(root, ("model.safetensors",)).items()
        }
        load_state(model, state, root)
        tokenizer = Tokenizer.from_folder(root)
    elif config.get("model_type") == "gpt2":
        model = load_hf_gpt2(root, config)
        tokenizer = Tokenizer.from_folder(root)
    else:
        raise ConfigurationError(
            f"{config_path} describes neither a promptkit checkpoint (format {FORMAT!r}) nor a "
            f"GPT-2 model (model_type 'gpt2'); found model_type {config.get('model_type')!r}"
        )
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigurationError(
            f"the tokenizer in {str(root)!r} has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}"
        )
    return model.to(device).eval(), tokenizer


def config_from_hf(config: dict[str, Any], source: str) -> GPTConfig:
    """Our config for a Hugging Face GPT-2 config; refuses variants we do not implement."""
    unsupported = {
        "activation_function": config.get("activation_function", "gelu_new")
        not in ("gelu_new", "gelu_pytorch_tanh"),
        "scale_attn_by_inverse_layer_idx": bool(config.get("scale_attn_by_inverse_layer_idx")),
        "scale_attn_weights=false": config.get("scale_attn_weights", True) is False,
        "add_cross_attention": bool(config.get("add_cross_attention")),
    }
    found = [name for name, bad in unsupported.items() if bad]
    if found:
        raise ConfigurationError(f"{source}: GPT-2 variant not supported: {', '.join(found)}")
    return GPTConfig(
        vocab_size=config["vocab_size"],
        context_length=config.get("n_positions", config.get("n_ctx", 1024)),
        n_layer=config["n_layer"],
        n_head=config["n_head"],
        n_embd=config["n_embd"],
        n_inner=config.get("n_inner"),
        layer_norm_eps=config.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=config.get("tie_word_embeddings", True),
    )


def load_hf_gpt2(folder: str | os.PathLike[str], config: dict[str, Any] | None = None) -> GPT:
    """Import a Hugging Face GPT-2 checkpoint folder into our GPT, naming every tensor.

    Keys lose their ``transformer.`` prefix; Conv1D weights (:data:`CONV1D`) are transposed
    where our Linear stores them ``(out, in)``. Raises ConfigurationError naming the first
    missing, unexpected or
    mis-shaped tensor.
    """
    root = Path(folder)
    if config is None:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    model = GPT(config_from_hf(config, str(root)))
    hf_state = _read_tensors(root, ("model.safetensors", "pytorch_model.bin"))
    state: dict[str, torch.Tensor] = {}
    for key, tensor in hf_state.items():
        name = key.removeprefix("transformer.")
        if name.endswith(IGNORED_SUFFIXES):
            continue
        state[name] = _in_out(model, name, tensor)
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # tied: the token embedding is the output matrix
    load_state(model, state, root)
    return model


def _in_out(model: GPT, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Swap a weight between the file layout, (in, out) as GPT-2's Conv1D, and the model's
    layout (a transposed Linear keeps (out, in)); the same swap both ways."""
    if name.endswith(CONV1D) and getattr(
        model.get_submodule(name.removesuffix(".weight")), "transposed", False
    ):
        return tensor.t()
    return tensor


def _read_tensors(root: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for name in names:
        path = root / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        return dict(loaded)
    raise ConfigurationError(f"no weights in {str(root)!r}: expected one of {', '.join(names)}")


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], root: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        first = (
            f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        )
        raise ConfigurationError(
            f"weights in {str(root)!r} do not fit the model: {first} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for name, tensor in expected.items():
        found, needed = tuple(state[name].shape), tuple(tensor.shape)
        if found != needed:
            hint = " (transposed: an (out, in) nn.Linear layout?)" if found == needed[::-1] else ""
            raise ConfigurationError(
                f"weights in {str(root)!r} do not fit the model: tensor {name!r} has shape "
                f"{found}, the model needs {needed}{hint}"
            )
    with torch.no_grad():
        for name, parameter in model.state_dict().items():
            if name in state:
                parameter.copy_(state[name])
