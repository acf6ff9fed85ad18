"""GGUF files (llama.cpp's format) on the scratch decoder: metadata, tensors and tokenizer.

A GGUF file holds one model: key/value metadata (the architecture's shape, the tokenizer's
vocabulary and merges, the chat template) and tensors, many of them quantized. Loading it here
parses the file once (:func:`open_gguf`) and takes five named steps:

1. metadata -> :class:`LlamaConfig` (:func:`config_from_gguf`);
2. every tensor dequantized to float32 with the ``gguf`` package (``gguf.quants.dequantize``:
   F32, F16, BF16, Q8_0, Q4_0, Q4_1, the K-quants and the rest it knows);
3. names mapped to ours (:data:`GGUF_NAMES`), and llama.cpp's rotary permutation of the query
   and key projections undone (:func:`unpermute`) for the ``llama`` architecture;
4. the tokenizer built from the metadata by transformers' GGUF conversion (kept in the model
   cache after the first load);
5. the weights brought to the precision asked for (``dtype``, see ``_quant``): for int4, the
   Q4_0 and Q4_1 blocks are taken as they are (:func:`int4_weights`), not dequantized and
   quantized again; ``auto`` keeps a Q4 file int4 and a Q8_0 file int8.

Needs the ``gguf`` package (and transformers for the tokenizer); raises ConfigurationError
naming what is missing or unsupported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ConfigurationError
from .._chat_templates import ChatTemplate
from ._checkpoint import load_state
from ._quant import GROUP, Int4Weights, auto_precision
from ._reduce import reduce_precision
from ._tokenizer import Tokenizer
from .llama import Llama, LlamaConfig

__all__ = [
    "GGUF_NAMES",
    "config_from_gguf",
    "gguf_chat_template",
    "gguf_tokenizer",
    "int4_weights",
    "load_gguf",
    "open_gguf",
    "read_gguf",
    "unpermute",
]

logger = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2")  # general.architecture values this decoder runs
PERMUTED = ("llama",)  # architectures whose convert script permutes Q and K (not qwen2)

# GGUF tensor name pieces -> ours, per block ("blk.3.attn_q.weight" -> "h.3.attn.q_proj.weight").
GGUF_NAMES = {
    "attn_norm": "attn_norm",
    "attn_q": "attn.q_proj",
    "attn_k": "attn.k_proj",
    "attn_v": "attn.v_proj",
    "attn_output": "attn.o_proj",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "wte", "output_norm": "norm", "output": "lm_head"}
# Block types whose precision a model keeps under dtype="auto" (those of its blocks' weights).
FILE_PRECISIONS = {"Q4_0": "int4", "Q4_1": "int4", "Q8_0": "int8"}


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ConfigurationError(
            "reading GGUF files needs the gguf package: pip install gguf"
        ) from None
    return gguf


@functools.cache
def _reader_class() -> type:
    """``gguf.GGUFReader`` over a plain ndarray view of its memory map. ``np.memmap`` runs
    Python hooks on every slice, and the reader slices once or twice per vocabulary entry:
    a 50k-token file parses in about 1.5 s instead of 5 (same fields, same tensor bytes)."""

    class PlainReader(_gguf().GGUFReader):  # type: ignore[misc]
        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, mapped: np.ndarray) -> None:
            self._plain = mapped.view(np.ndarray)

    return PlainReader


def open_gguf(path: str | os.PathLike[str]) -> Any:
    """A ``gguf.GGUFReader`` of a file (see :func:`_reader_class`): it parses every field and
    tensor header at once, so a load opens the file once and passes the reader on. Raises
    ConfigurationError for an unreadable file."""
    try:
        return _reader_class()(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{str(path)!r} is not a readable GGUF file: {exc}") from None


def read_gguf(reader: Any, source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata (key -> value; the tokenizer's vocabulary arrays, ``tokenizer.ggml.*``,
    left to :func:`gguf_tokenizer`: turning them into Python lists takes seconds) and the
    dequantized float32 tensors (GGUF names, PyTorch shapes) of an opened GGUF file
    (:func:`open_gguf`); raises ConfigurationError for a tensor type the gguf package cannot
    dequantize."""
    gguf = _gguf()
    array = gguf.GGUFValueType.ARRAY
    metadata = {
        key: field.contents()
        for key, field in reader.fields.items()
        if not (key.startswith("tokenizer.ggml.") and field.types[:1] == [array])
    }
    tensors = {}
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions inner first
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise ConfigurationError(
                f"{source!r}: tensor {tensor.name!r} is stored as {tensor.tensor_type.name}, "
                "which the gguf package cannot dequantize"
            ) from None
        tensors[tensor.name] = torch.from_numpy(values.astype("float32").reshape(shape))
    return metadata, tensors


def config_from_gguf(
    metadata: dict[str, Any], tensors: dict[str, torch.Tensor], source: str
) -> LlamaConfig:
    """Our config from a GGUF file's metadata (``{arch}.block_count`` and the rest); refuses
    an architecture or rotary scaling this decoder does not implement."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConfigurationError(
            f"{source}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ConfigurationError(f"{source}: GGUF metadata lacks {arch}.{key}")
        return value

    scaling_kind = metadata.get(f"{arch}.rope.scaling.type", "none")
    if "rope_freqs.weight" in tensors or scaling_kind not in ("none", "linear"):
        raise ConfigurationError(
            f"{source}: rotary scaling {scaling_kind!r} (or per-frequency factors) in a GGUF "
            "file is not supported; load the model's Hugging Face folder instead"
        )
    scaling = None
    if scaling_kind == "linear":
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    lacking = [name for name in ("token_embd.weight", "blk.0.attn_q.weight") if name not in tensors]
    if lacking:
        raise ConfigurationError(f"{source}: the GGUF file has no tensor {lacking[0]!r}")
    heads = int(get("attention.head_count"))
    width = int(get("embedding_length"))
    embedding = tensors["token_embd.weight"]
    return LlamaConfig(
        vocab_size=int(embedding.shape[0]),
        context_length=int(get("context_length")),
        n_layer=int(get("block_count")),
        n_head=heads,
        n_kv_head=int(get("attention.head_count_kv", heads)),
        n_embd=width,
        head_dim=int(tensors["blk.0.attn_q.weight"].shape[0]) // heads,
        n_inner=int(get("feed_forward_length")),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        o_bias="blk.0.attn_output.bias" in tensors,
        tie_embeddings="output.weight" not in tensors,
    )


def unpermute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's convert-script permutation of a query or key projection ``(n_head *
    head_dim, in)``: it reorders each head's rows from the two-halves rotary layout (ours and
    transformers') to interleaved pairs, ``reshape(n_head, 2, hd/2, in).swapaxes(1, 2)``; this
    is the inverse, ``reshape(n_head, hd/2, 2, in).swapaxes(1, 2)``."""
    rows = weight.shape[0]
    half = rows // n_head // 2
    return weight.reshape(n_head, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _our_name(name: str, config: LlamaConfig, arch: str) -> tuple[str, int | None]:
    """Our name for a GGUF tensor, and the head count to unpermute its rows by (None when
    they are in our order already)."""
    stem, _, kind = name.rpartition(".")  # "blk.3.attn_q", "weight"
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in GGUF_NAMES:
        heads = {"attn_q": config.n_head, "attn_k": config.n_kv_head}.get(parts[2])
        return f"h.{parts[1]}.{GGUF_NAMES[parts[2]]}.{kind}", heads if arch in PERMUTED else None
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{kind}", None
    return name, None  # unknown: load_state names it as unexpected


def state_from_gguf(
    tensors: dict[str, torch.Tensor], config: LlamaConfig, arch: str
) -> dict[str, torch.Tensor]:
    """GGUF tensors under our names, with Q and K unpermuted where the architecture needs it."""
    state = {}
    for name, tensor in tensors.items():
        ours, heads = _our_name(name, config, arch)
        state[ours] = tensor if heads is None else unpermute(tensor, heads)
    return state


def int4_weights(reader: Any, config: LlamaConfig, arch: str) -> dict[str, Int4Weights]:
    """The Q4_0 and Q4_1 linear weights of an opened GGUF file as int4 weights, block for block
    (by our module names, Q and K unpermuted): a Q4_1 block ``d * q + m`` has scale ``d`` and
    zero ``m + 8d``, a Q4_0 block ``d * (q - 8)`` scale ``d`` and zero 0."""
    found = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        ours, heads = _our_name(tensor.name, config, arch)
        if kind not in ("Q4_0", "Q4_1") or not ours.startswith("h.") or len(tensor.shape) != 2:
            continue
        out, width = (int(n) for n in reversed(tensor.shape))
        blocks = np.asarray(tensor.data).reshape(out, width // GROUP, -1)  # (out, groups, bytes)
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (out, groups)
        if kind == "Q4_1":
            m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
            zero, packed = m + 8 * d, blocks[..., 4:]
        else:
            zero, packed = np.zeros_like(d), blocks[..., 2:]
        # byte j of a block holds value j (low nibble) and value j + 16 (high nibble)
        codes = np.concatenate((packed & 0x0F, packed >> 4), axis=-1).reshape(out, width)
        weights = Int4Weights(
            torch.from_numpy(codes.astype(np.uint8)), torch.from_numpy(d), torch.from_numpy(zero)
        )
        if heads is not None:
            order = unpermute(torch.arange(out), heads)
            weights = weights.rows(order)
        found[ours.removesuffix(".weight")] = weights
    return found


def file_precision(reader: Any) -> str | None:
    """The precision an opened GGUF file's block weights are quantized to (int4 for Q4_0/Q4_1,
    int8 for Q8_0; the most common type among them), or None for another type."""
    tensors = reader.tensors
    kinds = [t.tensor_type.name for t in tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    common = max(set(kinds), key=kinds.count) if kinds else None
    return FILE_PRECISIONS.get(common) if common is not None else None


def gguf_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer a GGUF file describes, built by transformers' GGUF conversion (several
    seconds for a 50k vocabulary), kept in the model cache keyed by the file's path, size and
    modification time so that later loads read it back at once."""
    from tokenizers import Tokenizer as HFTokenizer

    from ...models._registry import models_dir

    stat = path.stat()
    key = hashlib.sha256(
        f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    ).hexdigest()
    cached = models_dir() / ".gguf-tokenizers" / f"{key}.json"
    if cached.is_file():
        saved = json.loads(cached.read_text(encoding="utf-8"))
        return Tokenizer(HFTokenizer.from_str(saved["tokenizer"]), end_of_text=saved["eos"])
    backend, eos = _convert_tokenizer(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(
            json.dumps({"eos": eos, "tokenizer": backend.to_str()}), encoding="utf-8"
        )
        os.replace(partial, cached)
    except OSError as exc:  # a read-only cache only costs the conversion next time
        logger.info("could not keep the converted tokenizer of %s: %s", path, exc)
    return Tokenizer(backend, end_of_text=eos)


def _convert_tokenizer(path: Path) -> tuple[Any, str]:
    """transformers' conversion of the file's tokenizer: the ``tokenizers`` object and the
    end-of-text token."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigurationError(
            "the tokenizer of a GGUF file is built by transformers: pip install transformers"
        ) from None
    try:
        converted = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigurationError(f"{str(path)!r}: cannot build its tokenizer: {exc}") from None
    eos = converted.eos_token
    if not isinstance(eos, str):
        raise ConfigurationError(f"{str(path)!r}: the GGUF tokenizer names no end-of-text token")
    return converted.backend_tokenizer, eos


def load_gguf(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    chat_template: bool = False,
) -> tuple[Llama, Tokenizer, ChatTemplate | None]:
    """A GGUF file as our Llama in precision ``dtype`` (default float32; ``auto``: the file's
    own where it is Q4 or Q8_0, see ``_quant``), its tokenizer (see the module docstring for
    the steps) and, with ``chat_template``, the chat template in its metadata (None when it
    has none). The file is parsed once. Raises ConfigurationError, or TemplateError for a chat
    template that does not compile."""
    source = Path(path)
    reader = open_gguf(source)
    metadata, tensors = read_gguf(reader, str(source))
    config = config_from_gguf(metadata, tensors, str(source))
    model = Llama.for_loading(config)
    arch = metadata["general.architecture"]
    load_state(model, state_from_gguf(tensors, config, arch), source)
    del tensors
    if dtype == "auto":
        dtype = auto_precision(torch.device(device).type, file_precision(reader))
    known = int4_weights(reader, config, arch) if dtype == "int4" else None
    del reader  # its memory map
    reduce_precision(model, dtype or "float32", known)
    tokenizer = gguf_tokenizer(source)
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigurationError(
            f"{str(source)!r}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size}"
        )
    template = gguf_chat_template(metadata, tokenizer, source) if chat_template else None
    return model.to(device).eval(), tokenizer, template


def gguf_chat_template(
    metadata: dict[str, Any], tokenizer: Tokenizer, path: Path
) -> ChatTemplate | None:
    """The chat template in a GGUF file's metadata (``tokenizer.chat_template``, read by
    :func:`read_gguf`) with its beginning- and end-of-text tokens, or None when it has none;
    raises TemplateError for a template that does not compile."""
    source = metadata.get("tokenizer.chat_template")
    if not isinstance(source, str) or not source.strip():
        return None
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    return ChatTemplate(
        source,
        bos_token=tokenizer.decode([bos_id]) if isinstance(bos_id, int) else "",
        eos_token=tokenizer.decode([tokenizer.eot_id]),
        name=f"{path} (tokenizer.chat_template)",
    )
