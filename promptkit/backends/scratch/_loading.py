"""Loading every model the scratch backend runs from a folder, and Hugging Face Llama-family
folders (``model_type`` llama, qwen2, mistral) imported tensor by tensor into :class:`Llama`.

:func:`load_model` is the one entry: a promptkit checkpoint or GPT-2 folder goes to
``checkpoint.load_checkpoint``; a Llama-family folder is read here: config -> :class:`LlamaConfig`
(refusing variants not implemented), tensors renamed (:data:`HF_RENAMES`) from
``model.safetensors`` or its shards, and the tokenizer with the model's own end-of-text token.
:func:`save_hf_llama` writes such a folder back from a :class:`Llama` (a fine-tuned model, a
dequantized GGUF one), with its tokenizer and chat template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigurationError
from .._chat_templates import ChatTemplate
from ._checkpoint import load_checkpoint, load_state
from ._tokenizer import END_OF_TEXT, Tokenizer
from .gpt2 import GPT
from .llama import Llama, LlamaConfig

__all__ = [
    "HF_MODEL_TYPES",
    "config_from_hf",
    "hf_end_of_text",
    "load_hf_llama",
    "load_model",
    "save_hf_llama",
]

HF_MODEL_TYPES = ("llama", "qwen2", "mistral")


def load_model(
    folder: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[GPT | Llama, Tokenizer]:
    """Load any model folder promptkit runs: what ``load_checkpoint`` loads (promptkit
    checkpoints, GPT-2 folders), or a Hugging Face Llama-family folder; raises
    ConfigurationError."""
    root = Path(folder)
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None  # load_checkpoint says what is wrong with the folder
    if not isinstance(config, dict) or config.get("model_type") not in HF_MODEL_TYPES:
        return load_checkpoint(root, device=device)
    model = load_hf_llama(root, config)
    tokenizer = Tokenizer.from_folder(root, end_of_text=hf_end_of_text(root, config))
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigurationError(
            f"the tokenizer in {str(root)!r} has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}"
        )
    return model.to(device).eval(), tokenizer


# Hugging Face name pieces -> ours (``model.layers.3.self_attn.q_proj`` -> ``h.3.attn.q_proj``).
HF_RENAMES = (
    ("model.embed_tokens.", "wte."),
    ("model.layers.", "h."),
    (".self_attn.", ".attn."),
    (".input_layernorm.", ".attn_norm."),
    (".post_attention_layernorm.", ".mlp_norm."),
    ("model.norm.", "norm."),
)
IGNORED = (".rotary_emb.inv_freq",)  # buffers some old checkpoints carry; recomputed here


def config_from_hf(config: dict[str, Any], source: str) -> LlamaConfig:
    """Our config for a Hugging Face llama / qwen2 / mistral config; refuses what we do not
    implement (another activation, MLP biases, a sliding window narrower than the context)."""
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigurationError(
            f"{source}: model_type {model_type!r} is not a Llama-family model "
            f"({', '.join(HF_MODEL_TYPES)})"
        )
    unsupported = {
        f"hidden_act={config.get('hidden_act')!r}": config.get("hidden_act", "silu") != "silu",
        "mlp_bias": bool(config.get("mlp_bias")),
        "pretraining_tp > 1": config.get("pretraining_tp", 1) > 1,
    }
    found = [name for name, bad in unsupported.items() if bad]
    if found:
        raise ConfigurationError(f"{source}: variant not supported: {', '.join(found)}")
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
    if "type" in rope:  # the older spelling of rope_type
        rope.setdefault("rope_type", rope.pop("type"))
    context = config.get("max_position_embeddings", 2048)
    if model_type == "mistral" and config.get("sliding_window"):  # never slide: stay inside it
        context = min(context, config["sliding_window"])
    if model_type == "qwen2" and config.get("use_sliding_window"):
        raise ConfigurationError(f"{source}: Qwen2 with use_sliding_window is not supported")
    heads = config["num_attention_heads"]
    attention_bias = bool(config.get("attention_bias"))
    return LlamaConfig(
        vocab_size=config["vocab_size"],
        context_length=context,
        n_layer=config["num_hidden_layers"],
        n_head=heads,
        n_kv_head=config.get("num_key_value_heads") or heads,
        n_embd=config["hidden_size"],
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        n_inner=config["intermediate_size"],
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=rope if rope.get("rope_type", "default") != "default" else None,
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias,
        tie_embeddings=config.get("tie_word_embeddings", model_type != "mistral"),
    )


def load_hf_llama(folder: str | os.PathLike[str], config: dict[str, Any] | None = None) -> Llama:
    """Import a Hugging Face llama / qwen2 / mistral folder (safetensors), naming every tensor.

    Raises ConfigurationError for a variant we do not implement, or naming the first missing,
    unexpected or mis-shaped tensor.
    """
    root = Path(folder)
    if config is None:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    model = Llama(config_from_hf(config, str(root)))
    state: dict[str, torch.Tensor] = {}
    for key, tensor in _read_shards(root).items():
        if key.endswith(IGNORED):
            continue
        for old, new in HF_RENAMES:
            key = key.replace(old, new)
        state[key] = tensor
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # tied: the token embedding is the output matrix
    load_state(model, state, root)
    return model


def _read_shards(root: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``, or of the shards that
    ``model.safetensors.index.json`` lists; raises ConfigurationError naming a missing file."""
    from safetensors.torch import load_file

    index = root / "model.safetensors.index.json"
    if index.is_file() and not (root / "model.safetensors").is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    missing = [name for name in shards if not (root / name).is_file()]
    if missing:
        raise ConfigurationError(
            f"no weights file {missing[0]!r} in {str(root)!r} ({len(missing)} of {len(shards)} "
            "missing); a Llama-family folder needs model.safetensors or all its shards"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in shards:
        tensors.update(load_file(str(root / name)))
    return tensors


def hf_end_of_text(root: Path, config: dict[str, Any]) -> str:
    """The token that ends a text for a Hugging Face folder: ``eos_token`` of
    tokenizer_config.json, else the token of config.json's ``eos_token_id`` (the first of a
    list), else GPT-2's ``<|endoftext|>``."""
    settings = root / "tokenizer_config.json"
    if settings.is_file():
        eos = json.loads(settings.read_text(encoding="utf-8")).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str) and eos:
            return eos
    eos_id = config.get("eos_token_id")
    eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
    if isinstance(eos_id, int) and (root / "tokenizer.json").is_file():
        vocab = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
        for token in vocab.get("added_tokens", []):
            if token.get("id") == eos_id:
                return str(token["content"])
        names = {index: name for name, index in vocab.get("model", {}).get("vocab", {}).items()}
        if eos_id in names:
            return str(names[eos_id])
    return END_OF_TEXT


# Our block-level names -> Hugging Face's (the inverse of HF_RENAMES inside a layer).
_HF_LAYER_PARTS = {
    "attn": "self_attn",
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
}


def _hf_name(name: str) -> str:
    """A tensor's Hugging Face name (``h.3.attn.q_proj.weight`` -> ``model.layers.3.self_attn.
    q_proj.weight``), the inverse of :data:`HF_RENAMES`."""
    if name.startswith("wte."):
        return "model.embed_tokens." + name.removeprefix("wte.")
    if name.startswith("norm."):
        return "model." + name
    if name.startswith("h."):
        _, index, rest = name.split(".", 2)
        part, _, tail = rest.partition(".")
        return f"model.layers.{index}.{_HF_LAYER_PARTS.get(part, part)}.{tail}"
    return name


def _hf_config(config: LlamaConfig, eos_id: int) -> dict[str, Any]:
    """The Hugging Face config.json of a model of this shape (``llama``, or ``qwen2`` for
    biases on q/k/v alone); raises ConfigurationError for a bias layout neither has."""
    if config.o_bias and not config.qkv_bias:
        raise ConfigurationError(
            "a Llama-family model with a bias on the attention output but none on q/k/v has no "
            "Hugging Face model_type to save it as"
        )
    model_type = "qwen2" if config.qkv_bias and not config.o_bias else "llama"
    architecture = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model_type]
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "hidden_size": config.n_embd,
        "head_dim": config.head_dim,
        "intermediate_size": config.n_inner,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "attention_bias": config.o_bias,
        "tie_word_embeddings": config.tie_embeddings,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def save_hf_llama(
    model: Llama,
    tokenizer: Tokenizer,
    folder: str | os.PathLike[str],
    *,
    chat_template: ChatTemplate | None = None,
    **extra: Any,
) -> Path:
    """Write ``model`` as a Hugging Face Llama-family folder that :func:`load_model` (and
    transformers) read back: config.json (with ``extra`` keys beside the model's), float32
    ``model.safetensors``, tokenizer.json, and tokenizer_config.json naming the end-of-text
    token and carrying ``chat_template``. Raises ConfigurationError for a shape no Hugging Face
    model_type describes."""
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    config = {**_hf_config(model.config, tokenizer.eot_id), **extra}
    state = {
        _hf_name(name): tensor.detach().float().contiguous().cpu()
        for name, tensor in model.state_dict().items()
    }
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save(root)
    settings: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": tokenizer.decode([tokenizer.eot_id]),
    }
    if chat_template is not None:
        settings["chat_template"] = chat_template.source
        if chat_template.bos_token:
            settings["bos_token"] = chat_template.bos_token
    text = json.dumps(settings, indent=2) + "\n"
    (root / "tokenizer_config.json").write_text(text, encoding="utf-8")
    return root
