"""Loading models for the Hugging Face backend: a local folder, a GGUF file, the local hub cache
or (unless offline) the hub, and the cache of loaded models.

A hub name is looked up in the local hub cache first (no network); a model that is not there is
fetched, once one request without retries (huggingface_hub's own metadata call, which honours
``HF_HUB_ETAG_TIMEOUT``) says whether the hub answers at all, so an unreachable hub or
``HF_HUB_OFFLINE`` fails at once with one line. Loaded models are kept for reuse, the
:data:`MODEL_CACHE_SIZE` most recently used ones.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigurationError

__all__ = ["DTYPES", "MODEL_CACHE_SIZE", "Loaded", "check_dtype", "load_cached"]

MODEL_CACHE_SIZE = 2  # loaded models kept for reuse (least recently used evicted first)
_CACHE: OrderedDict[tuple[str, str, str], Loaded] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class Loaded:
    """A loaded model, its tokenizer and the folder its files came from (None: unknown)."""

    def __init__(self, model: Any, tokenizer: Any, folder: Path | None):
        self.model = model
        self.tokenizer = tokenizer
        self.folder = folder


DTYPES = ("float32", "float16", "bfloat16")  # what transformers loads a model in here


def check_dtype(dtype: str | None) -> None:
    """Raise ConfigurationError unless ``dtype`` is None or one of :data:`DTYPES`."""
    if dtype is not None and dtype not in DTYPES:
        raise ConfigurationError(
            f"hf: unknown dtype {dtype!r}; use {', '.join(DTYPES)} (int8 and int4 weights are "
            "scratch:'s, e.g. scratch:smollm2-135m-instruct@int4)"
        )


def load_cached(name_or_path: str, device: str | None, dtype: str | None) -> Loaded:
    """The loaded model for ``name_or_path`` on ``device`` in ``dtype`` (default: cuda when
    available, else cpu; float32), from the cache or loaded now; raises ConfigurationError."""
    chosen_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = (name_or_path, chosen_device, dtype or "float32")
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        loaded = _load(*key)
        _CACHE[key] = loaded
        while len(_CACHE) > MODEL_CACHE_SIZE:
            _CACHE.popitem(last=False)
        return loaded


def _offline() -> bool:
    """Whether the hub must not be asked: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) now,
    or huggingface_hub's own reading of it at import."""
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    said = any(os.environ.get(n, "").lower() in ("1", "true", "yes", "on") for n in names)
    return said or constants.is_offline_mode()


def _load(name_or_path: str, device: str, dtype: str) -> Loaded:
    """Load from a local folder, else from the local hub cache, else (unless offline) from the
    hub once :func:`_check_hub` finds it answering; raises ConfigurationError in one line."""
    check_dtype(dtype)
    torch_dtype = getattr(torch, dtype)
    folder = Path(os.path.expanduser(name_or_path))
    if folder.is_file() and folder.suffix == ".gguf":  # transformers dequantizes it to dtype
        model, tokenizer = _load_gguf(folder, device, torch_dtype)
        return Loaded(model, tokenizer, folder)
    if folder.is_dir():
        _check_folder(folder)
        where = f"the local folder {str(folder)!r}"
    else:
        where = "the Hugging Face hub cache" + (" (HF_HUB_OFFLINE is set)" if _offline() else "")
    try:
        model, tokenizer = _from_pretrained(name_or_path, torch_dtype, local=True)
    except (OSError, ValueError) as exc:
        if folder.is_dir() or _offline():
            raise ConfigurationError(
                f"hf: cannot load model {name_or_path!r} from {where}: {_first_line(exc)}. "
                "Download it once where the network allows (it is then cached), or point hf: "
                "at a local folder holding config.json, the weights and the tokenizer files"
            ) from None
        _check_hub(name_or_path)
        try:
            model, tokenizer = _from_pretrained(name_or_path, torch_dtype, local=False)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"hf: cannot load {name_or_path!r} from the Hugging Face hub: {_first_line(exc)}"
            ) from None
    source = folder if folder.is_dir() else _snapshot(name_or_path)
    return Loaded(model.to(device).eval(), tokenizer, source)


def _from_pretrained(name_or_path: str, dtype: torch.dtype, *, local: bool) -> tuple[Any, Any]:
    """transformers' model and tokenizer (``local``: only files already on this machine).

    Raises what transformers raises (OSError, ValueError) for files it cannot have, and
    ConfigurationError for a model that is not a causal language model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(name_or_path, local_files_only=local)
    if getattr(config, "is_encoder_decoder", False) or config.model_type in (
        "bert",
        "roberta",
        "distilbert",
        "t5",
    ):
        raise ConfigurationError(
            f"hf: {name_or_path!r} is a {config.model_type!r} model, not a causal language "
            "model; hf: runs decoder-only models such as gpt2 or distilgpt2"
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
    model: Any = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=dtype,
        local_files_only=local,
        # transformers looks for a PEFT adapter on the hub without local_files_only (with peft
        # installed): five retries against an unreachable hub before a cached model loads
        adapter_kwargs={"local_files_only": local},
    )
    return model, tokenizer


def _snapshot(name: str) -> Path | None:
    """The hub cache's snapshot folder of ``name`` (its path holds the commit), or None."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(name, "config.json")
    except HFValidationError:  # not a repository name: nothing is cached under it
        return None
    return Path(found).parent if isinstance(found, str) else None


def _check_hub(name: str) -> None:
    """One request without retries (huggingface_hub's metadata call for the model's
    config.json, within ``HF_HUB_ETAG_TIMEOUT``): ConfigurationError, in one line, when the hub
    cannot be reached or has no such model, before transformers' downloads would retry."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HFValidationError

    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HFValidationError as exc:
        raise ConfigurationError(
            f"hf: {name!r} is neither a local folder nor a hub model name ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # unreachable, timed out, not found, gated: all end the load here
        raise ConfigurationError(
            f"hf: cannot fetch {name!r} from the Hugging Face hub at {constants.ENDPOINT} and it "
            f"is not in the local hub cache ({type(exc).__name__}: {_first_line(exc)}); "
            "download it once where the network allows, point hf: at a local folder, or set "
            "HF_HUB_OFFLINE=1 to use only cached models"
        ) from None


def _load_gguf(path: Path, device: str, torch_dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch_dtype
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigurationError(
            f"hf: cannot load the GGUF file {str(path)!r}: {_first_line(exc)} (transformers "
            "needs the gguf package for GGUF files: pip install gguf)"
        ) from None
    loaded: Any = model
    return loaded.to(device).eval(), tokenizer


def _check_folder(folder: Path) -> None:
    found = sorted(p.name for p in folder.iterdir())
    if not (folder / "config.json").is_file():
        raise ConfigurationError(
            f"hf: the folder {str(folder)!r} has no config.json (found: "
            f"{', '.join(found) or 'nothing'}); it needs config.json, the weights "
            "(model.safetensors) and the tokenizer files"
        )
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise ConfigurationError(
            f"hf: the folder {str(folder)!r} has no weights (found: {', '.join(found)}); "
            f"expected one of {', '.join(_WEIGHT_FILES)}"
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
