"""``scratch:SPEC``: building a :class:`~promptkit.backends.scratch._backend.ScratchBackend`
from a spec (a checkpoint or Hugging Face folder, a GGUF file, a registry name, a hub name, a
LoRA adapter folder; the precision after an ``@``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigurationError
from .._options import check_device, check_known, flag, text
from ._adapter import (
    ADAPTER_FILE,
    adapter_fingerprint,
    apply_adapter,
    is_adapter_folder,
    read_adapter_config,
)
from ._backend import ScratchBackend
from ._compiled import check_compilable
from ._prefix_cache import (
    DEFAULT_PREFIX_CACHE_BYTES,
    check_budget,
)
from ._quant import (
    auto_precision,
    check_precision,
    precision_of,
    split_spec_dtype,
)
from ._reduce import reduce_precision
from .gpt2 import GPT
from .llama import Llama

__all__ = ["HUB_FILES", "from_spec"]


HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",  # sharded weights (larger Llama-family models)
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",  # names a Llama-family model's end-of-text token
    "vocab.json",
    "merges.txt",
]


def _from_hub(name: str) -> Path:
    """The local folder of a hub model (downloaded once, then cached by huggingface_hub)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigurationError(
            f"scratch: no model folder at {name!r} (and huggingface_hub, needed to fetch a hub "
            "model by name, is not installed)"
        ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as exc:  # network, authentication and not-found errors all land here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigurationError(
            f"scratch: no model folder at {name!r}, and it could not be fetched from the Hugging "
            f"Face hub ({first}); give a local folder, or download it once where the network "
            "allows"
        ) from None


_OPTIONS = ("device", "chat_template", "prefix_cache_bytes", "dtype", "compile")


def from_spec(
    arg: str,
    *,
    device: str | None = None,
    chat_template: bool = True,
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    dtype: str | None = None,
    compile: bool = False,
    **options: Any,
) -> ScratchBackend:
    """``scratch:PATH``: a promptkit checkpoint folder, a Hugging Face GPT-2 or Llama-family
    folder, or a GGUF file; a known model name (``scratch:smollm2-135m-instruct``, see
    ``promptkit models``) is its pulled file, pulled on first use; a shipped adapter's name
    (``scratch:smollm2-135m-instruct-extract``) is its base with the adapter merged; another
    name that is no folder (``scratch:gpt2``) is fetched from the Hugging Face hub where the
    network allows (or found in its local cache); plain ``scratch`` is the shipped promptkit-mini.

    A model with a chat template (an instruction-tuned one) gets chat messages rendered with it;
    ``chat_template=False`` flattens them into text as for a model without one.

    ``prefix_cache_bytes`` bounds the cache of prompt prefixes kept across requests (see
    :class:`ScratchBackend`; 0 disables it).

    ``dtype`` is the weights' precision: ``float32`` (the default), ``bfloat16``, ``int8``,
    ``int4`` or ``auto`` (see ``_quant``); the spec may name it after an ``@``
    (``scratch:smollm2-135m-instruct@int4``), which is how the command line passes it. int8
    and int4 run on the CPU only.

    ``compile=True`` compiles the decoding steps with ``torch.compile`` (see
    :class:`ScratchBackend`); the spec asks for it with ``+compile`` after the ``@``
    (``scratch:smollm2-135m-instruct@int4+compile``, or ``@compile`` alone).

    Raises ConfigurationError for an unknown dtype, one the spec and the option give
    differently, int8/int4 on another device, or a compile option that cannot run here."""
    from ...models._registry import lookup, pull, shipped_adapter
    from .._chat_templates import folder_chat_template
    from ._gguf import load_gguf
    from ._loading import load_model

    check_known("scratch", options, _OPTIONS)
    device = text("scratch", "device", device)
    check_device("scratch", device)
    chat_template = flag("scratch", "chat_template", chat_template)
    check_budget(prefix_cache_bytes)  # before the model loads
    arg, compile = _split_compile(arg, flag("scratch", "compile", compile))
    arg, dtype = split_spec_dtype(arg, check_precision(dtype))
    chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if compile:
        check_compilable(torch.device(chosen))  # before the model loads
    if dtype in ("int8", "int4") and torch.device(chosen).type != "cpu":
        raise ConfigurationError(
            f"scratch: dtype={dtype!r} runs on the CPU only (PyTorch's weight-only CPU kernels); "
            f"use device='cpu', or dtype='bfloat16' on {chosen}"
        )
    name = None
    if not arg:
        from ...models import mini_path

        shipped = mini_path()
        if shipped is None:
            raise ConfigurationError(
                "scratch needs a model folder: scratch:PATH (a checkpoint from `promptkit train` "
                "or a Hugging Face GPT-2 folder); this copy of promptkit ships no default model"
            )
        arg, name = str(shipped), "scratch:promptkit-mini"
    path = Path(os.path.expanduser(arg))
    adapter = shipped_adapter(arg) if not path.exists() else None
    if adapter is not None:
        return _with_adapter(
            adapter.folder,
            device,
            dtype,
            prefix_cache_bytes,
            compile,
            name=f"scratch:{adapter.name}",
        )
    known = lookup(arg) if not path.exists() else None
    if known is not None:  # a registry name: its verified file, pulled on first use
        path, name = pull(known.name), f"scratch:{known.name}"
    if path.is_dir() and is_adapter_folder(path):
        return _with_adapter(path, device, dtype, prefix_cache_bytes, compile)
    model: GPT | Llama
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer, template = load_gguf(
            path, device=chosen, dtype=dtype, chat_template=chat_template
        )
        weights = path
    else:
        if path.is_file():
            raise ConfigurationError(
                f"scratch: {arg!r} is a file, not a model: give a model folder (a checkpoint or "
                "a Hugging Face folder) or a .gguf file"
            )
        if not path.is_dir() and _looks_like_a_path(arg):
            raise ConfigurationError(
                f"scratch: no such model folder or file: {arg!r}; give a checkpoint folder, a "
                "Hugging Face folder or a .gguf file (`promptkit models` lists pullable names)"
            )
        if not path.is_dir():
            path = _from_hub(arg)
        model, tokenizer = load_model(path, device=chosen)
        reduce_precision(model, auto_precision(chosen) if dtype == "auto" else dtype or "float32")
        weights = path / "model.safetensors"
        template = folder_chat_template(path) if chat_template else None
    backend = ScratchBackend(
        model,
        tokenizer,
        name=name or f"scratch:{path}",
        prefix_cache_bytes=prefix_cache_bytes,
        compile=compile,
    )
    # the spec's suffix as it would ask for this backend (auto: the precision it chose)
    suffix = [precision_of(model)] if precision_of(model) != "float32" else []
    suffix += ["compile"] if compile else []
    if suffix:
        backend.name += "@" + "+".join(suffix)
    backend.weights_path = weights
    backend.use_chat_template(template)
    return backend


def _split_compile(arg: str, compile: bool) -> tuple[str, bool]:
    """``arg`` without a ``+compile`` in its ``@`` suffix (``NAME@int4+compile``,
    ``NAME@compile``), and whether the option or the suffix asks to compile; a path that
    exists with an ``@`` in it stays whole. Raises ConfigurationError for ``NAME+compile``
    (the ``@`` left out), saying where it goes."""
    model, at, suffix = arg.rpartition("@")
    words = suffix.split("+")
    if Path(os.path.expanduser(arg)).exists():
        return arg, compile
    if not at and "compile" in words[1:]:  # NAME+compile: the @ left out
        meant = "+".join([w for w in words[1:] if w != "compile"] + ["compile"])
        raise ConfigurationError(
            f"scratch: {arg!r} is no model; +compile goes after an '@': scratch:{words[0]}@{meant}"
        )
    if not at or "compile" not in words:
        return arg, compile
    rest = "+".join(word for word in words if word != "compile")
    return (f"{model}@{rest}" if rest else model), True


def _looks_like_a_path(arg: str) -> bool:
    """Whether ``arg`` is written as a path (absolute, home- or dot-relative, or with a folder
    separator beyond a hub name's one ``owner/name``), so that a missing one is not looked up
    on the hub."""
    return (
        arg.startswith(("/", "~", ".")) or arg.count("/") > 1 or (os.sep != "/" and os.sep in arg)
    )


def _with_adapter(
    folder: Path,
    device: str | None,
    dtype: str | None,
    prefix_cache_bytes: int,
    compile: bool,
    name: str | None = None,
) -> ScratchBackend:
    """``scratch:DIR`` for a LoRA adapter folder: its base (by the spec it records), checked
    against the recorded fingerprint, with the adapter merged in. The backend's weights file is
    the adapter's, so its cache identity is the adapter's, not the base's; ``adapter`` and
    ``adapter_sha256`` say which adapter, as it was when loaded. The adapter is merged into the
    float32 weights before they are brought to ``dtype``. ``name`` is the backend's name
    (default ``scratch:FOLDER``)."""
    config = read_adapter_config(folder)
    base = from_spec(config["base"]["spec"].partition(":")[2], device=device, prefix_cache_bytes=0)
    apply_adapter(base.model, folder, config)
    chosen = device or base.device.type
    reduce_precision(base.model, auto_precision(chosen) if dtype == "auto" else dtype or "float32")
    backend = ScratchBackend(
        base.model,
        base.tokenizer,
        name=name or f"scratch:{folder}",
        prefix_cache_bytes=prefix_cache_bytes,
        compile=compile,
    )
    if precision_of(base.model) != "float32":
        backend.name += f"@{precision_of(base.model)}"
    backend.weights_path = folder / ADAPTER_FILE
    backend.use_chat_template(base.chat_template)
    backend.adapter = folder
    backend.adapter_sha256 = adapter_fingerprint(folder)
    return backend
