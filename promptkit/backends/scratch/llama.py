"""The Llama family from scratch, read top to bottom: norm, rotary, attention, MLP, block, model.

One decoder covers Llama, Qwen2 and Mistral (and SmolLM2, a small Llama): token embedding,
pre-RMSNorm blocks of grouped-query causal self-attention with rotary positions and a SwiGLU
MLP, a final RMSNorm, and an output projection (tied to the embedding or its own). Qwen2 adds
biases to the query, key and value projections. The model keeps the interface of the GPT in
``model.py`` (``forward`` with positions, key validity and a :class:`KVCache`; ``logits``;
``new_cache``), so the scratch backend's generation, batching, streaming, scoring and
constrained decoding run it unchanged. ``loading.py`` imports Hugging Face folders into it,
``gguf.py`` GGUF files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigurationError
from ._quant import Int4Linear, Int8Linear, plain_logits
from .gpt2 import KVCache, attention_mask

__all__ = ["Llama", "LlamaCache", "LlamaConfig"]

# Rotary scalings implemented (rope_type), with the settings each needs.
ROPE_KINDS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama-family decoder. Defaults are SmolLM2-135M."""

    vocab_size: int = 49152  # tokens in the vocabulary
    context_length: int = 8192  # most positions the model attends to
    n_layer: int = 30  # Transformer blocks
    n_head: int = 9  # query heads per block
    n_kv_head: int = 3  # key/value heads (grouped-query attention: n_head / n_kv_head share one)
    n_embd: int = 576  # embedding width
    head_dim: int = 64  # width of one head
    n_inner: int = 1536  # SwiGLU hidden width
    rms_norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 100000.0  # base of the rotary frequencies
    rope_scaling: dict[str, Any] | None = field(default=None)  # {"rope_type": ..., ...} or None
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
    o_bias: bool = False  # a bias on the attention output projection (Llama attention_bias)
    tie_embeddings: bool = True  # output projection shares the token embedding's weights

    def __post_init__(self) -> None:
        counts = ("vocab_size", "context_length", "n_layer", "n_head", "n_kv_head", "n_embd")
        problems = [
            f"{f.name} must be a positive integer, got {getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name in (*counts, "head_dim", "n_inner")
            and (not isinstance(getattr(self, f.name), int) or getattr(self, f.name) <= 0)
        ]
        if not problems and self.n_head % self.n_kv_head:
            problems.append(
                f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})"
            )
        if not problems and self.head_dim % 2:
            problems.append(f"head_dim must be even for rotary positions, got {self.head_dim}")
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        if kind not in ROPE_KINDS:
            problems.append(
                f"rope scaling {kind!r} is not implemented; supported: {', '.join(ROPE_KINDS)}"
            )
        else:
            lacking = [key for key in ROPE_KINDS[kind] if key not in (self.rope_scaling or {})]
            if lacking:
                problems.append(f"rope scaling {kind!r} needs {', '.join(lacking)}")
        if problems:
            raise ConfigurationError("invalid Llama config: " + "; ".join(problems))


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in float32 (Zhang & Sennrich, 2019)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:class:`RMSNorm` of ``x`` with ``weight``: one call in float32; in bfloat16, normalized
    in float32 (``F.rms_norm`` computes in float32 inside), rounded, then scaled:
    transformers' order and values, without two casts."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.size(-1),), weight, eps)
    return weight * F.rms_norm(x, (x.size(-1),), eps=eps)


def rotary_frequencies(config: LlamaConfig) -> torch.Tensor:
    """The ``head_dim / 2`` rotary frequencies, with the config's scaling (linear or Llama 3's
    wavelength-dependent one) applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":  # long wavelengths slowed by `factor`, short ones kept, a blend between
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_context = float(scaling["original_max_position_embeddings"])
        wavelength = 2 * math.pi / inv_freq
        scaled = torch.where(wavelength > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelength - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelength >= old_context / high) & (wavelength <= old_context / low)
        return torch.where(medium, blended, scaled)
    return inv_freq


def rotary(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and signed ``sin`` ``(B, T, 1, head_dim)`` of each position's rotation angles,
    for :func:`rotate`: the sine's first half negated, so that rotating is two products and a
    sum (transformers' ``x * cos + rotate_half(x) * sin``, the same values)."""
    angles = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    sin = angles.sin()
    signed = torch.cat((-sin, sin), dim=-1)[:, :, None]  # (B, T, 1, hd)
    return torch.cat((angles, angles), dim=-1)[:, :, None].cos().to(dtype), signed.to(dtype)


def rotate(x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Heads ``x`` ``(B, T, heads, head_dim)`` turned by their positions' angles: each pair
    ``(x1, x2)`` of the two halves becomes ``(x1 cos - x2 sin, x2 cos + x1 sin)``."""
    cos, signed_sin = rotation
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * signed_sin  # roll: (x2, x1)


def _product(layer: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """``layer`` applied to ``rows`` ``(N, in)``: a plain or reduced-precision linear layer's
    product called directly, any other module (an adapter's LoRA wrapper) called as usual.
    At batch 1 on a CPU a module call and the reshapes around it cost about as much as a
    small product, and a step makes some 200 of them."""
    if type(layer) is nn.Linear:
        return F.linear(rows, layer.weight, layer.bias)
    if isinstance(layer, (Int4Linear, Int8Linear)):
        return layer.multiply(rows)
    out: torch.Tensor = layer(rows)
    return out


class Attention(nn.Module):
    """Causal self-attention with rotary positions and grouped key/value heads."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        qkv = config.qkv_bias
        self.q_proj = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=qkv)
        self.k_proj = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=qkv)
        self.v_proj = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=qkv)
        self.o_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.o_bias)
        # q, k and v as one product, in reduced precision (``_quant`` joins them)
        self.qkv_proj: nn.Module | None = None

    def forward(
        self,
        x: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        past: int,
    ) -> torch.Tensor:
        """Attention of ``x`` ``(B, T, C)``; see :meth:`attend`."""
        B, T, C = x.size()
        return self.attend(x.reshape(B * T, C), rotation, mask, cache, past).view(B, T, -1)

    def attend(
        self,
        rows: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        past: int,
    ) -> torch.Tensor:
        """Attention of the ``(B * T, C)`` rows of ``B`` sequences of ``T`` positions (the
        shape of ``rotation``'s ``(B, T, 1, head_dim)``); with ``cache`` (this layer's key and
        value tensors) the new keys and values go after its ``past`` ones."""
        B, T = rotation[0].shape[:2]  # batch, time
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        if self.qkv_proj is not None:  # one product
            qkv = _product(self.qkv_proj, rows)
        else:
            parts = (self.q_proj, self.k_proj, self.v_proj)
            qkv = torch.cat([_product(part, rows) for part in parts], dim=-1)
        qkv = qkv.view(B, T, nh + 2 * nkv, hs)
        turned = rotate(qkv[:, :, : nh + nkv], rotation)  # queries and keys together
        k = turned[:, :, nh:].transpose(1, 2)  # (B, nkv, T, hs)
        v = qkv[:, :, nh + nkv :].transpose(1, 2)
        if cache is not None:  # the cache holds rotated keys
            key_cache, value_cache = cache
            key_cache[:, :, past : past + T] = k
            value_cache[:, :, past : past + T] = v
            k = key_cache[:, :, : past + T]  # (B, nkv, past + T, hs)
            v = value_cache[:, :, : past + T]
        if T == 1:  # one new position sees every key: a group's query heads attend as if they
            # were positions of one head (the same values; SDPA takes 40% less time at batch 8)
            y = F.scaled_dot_product_attention(
                turned[:, :, :nh].view(B, nkv, nh // nkv, hs), k, v, attn_mask=mask
            )  # (B, nkv, nh / nkv, hs): the heads in order
            return _product(self.o_proj, y.reshape(B, nh * hs))
        y = F.scaled_dot_product_attention(
            turned[:, :, :nh].transpose(1, 2),  # (B, nh, T, hs)
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=nkv != nh,
        )  # (B, nh, T, hs)
        return _product(self.o_proj, y.transpose(1, 2).reshape(B * T, nh * hs))


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer, 2020): ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.n_inner, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.n_inner, bias=False)
        self.down_proj = nn.Linear(config.n_inner, config.n_embd, bias=False)
        # gate and up as one product, in reduced precision (``_quant`` joins them)
        self.gate_up_proj: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP on ``x`` ``(..., C)``; see :meth:`transform`."""
        return self.transform(x.reshape(-1, x.size(-1))).view(*x.shape[:-1], -1)

    def transform(self, rows: torch.Tensor) -> torch.Tensor:
        """The MLP on ``(N, C)`` rows, its products called directly (:func:`_product`)."""
        if self.gate_up_proj is not None:
            gate, up = _product(self.gate_up_proj, rows).chunk(2, dim=-1)
        else:
            gate, up = _product(self.gate_proj, rows), _product(self.up_proj, rows)
        return _product(self.down_proj, F.silu(gate) * up)


class Block(nn.Module):
    """One pre-RMSNorm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        past: int,
    ) -> torch.Tensor:
        """The block on ``x`` ``(B, T, C)``; see :meth:`step`."""
        B, T, C = x.size()
        return self.step(x.reshape(B * T, C), rotation, mask, cache, past).view(B, T, C)

    def step(
        self,
        rows: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        past: int,
    ) -> torch.Tensor:
        """The block on ``(B * T, C)`` rows (see :meth:`Attention.attend`), its layers' math
        run without module calls (:func:`_product`)."""
        norm = self.attn_norm
        h = rms_norm(rows, norm.weight, norm.eps)
        x = rows + self.attn.attend(h, rotation, mask, cache, past)
        norm = self.mlp_norm
        return x + self.mlp.transform(rms_norm(x, norm.weight, norm.eps))


class LlamaCache(KVCache):
    """The key/value cache of :class:`KVCache` shaped for grouped-query attention:
    ``(B, n_kv_head, capacity, head_dim)`` per layer."""

    def __init__(self, config: LlamaConfig, batch: int, capacity: int, device: Any, dtype: Any):
        shape = (batch, config.n_kv_head, capacity, config.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [
            torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)
        ]
        self.inputs = []  # no local convolution in this family
        self.capacity = capacity
        self.length = 0


class Llama(nn.Module):
    """The decoder. ``forward`` returns final hidden states; ``logits`` projects them."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        )
        self.head: Int8Linear | None = None  # the output projection in int8 (see _quant)
        self.inv_freq: torch.Tensor  # rotary frequencies (move with .to(device), never saved)
        self.register_buffer("inv_freq", rotary_frequencies(config), persistent=False)
        self._output_key: tuple[Any, ...] | None = None  # what _output_t was copied from
        self._output_t = torch.empty(0)

    @classmethod
    def for_loading(cls, config: LlamaConfig) -> Llama:
        """A model whose parameters are allocated on the CPU but not initialized, for a loader
        that then copies every one of them in (``load_state`` refuses a missing tensor): the
        random initialization of 135M parameters costs about a second."""
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu")
        model.inv_freq = rotary_frequencies(config)  # computed, not loaded
        model._output_t = torch.empty(0)
        return model

    @property
    def output_weight(self) -> torch.Tensor:
        """The ``(vocab, n_embd)`` matrix that maps hidden states to logits."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        idx: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        key_valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(B, T, n_embd)`` of token ids ``idx`` ``(B, T)``.

        ``positions`` ``(B, T)`` default to ``past + 0..T-1`` (left padding passes each row's
        own); ``key_valid`` ``(B, past + T)`` marks real (not padding) tokens; with ``cache`` the
        new keys and values are stored after the ``cache.length`` cached ones.
        """
        B, T = idx.size()
        past = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(past, past + T, device=idx.device).expand(B, T)
        mask = attention_mask(key_valid, T, past)
        x = self.wte(idx.reshape(B * T))  # (B * T, C): rows
        rotation = rotary(self.inv_freq, positions, x.dtype)
        for i, block in enumerate(self.h):
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            x = cast(Block, block).step(x, rotation, mask, layer_cache, past)
        if cache is not None:
            cache.length = past + T
        norm = self.norm
        out = rms_norm(x, norm.weight, norm.eps).float()  # float32 whatever the precision
        return out.view(B, T, -1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states to float32 vocabulary logits: ``(..., n_embd) -> (..., vocab)``
        (in reduced precision, by the int8 head or the bfloat16 matrix)."""
        weight = self.output_weight
        plain = plain_logits(hidden, weight, self.head)
        if plain is not None:
            return plain
        return hidden @ self.output_matrix()

    def output_matrix(self) -> torch.Tensor:
        """The float32 output matrix as ``(n_embd, vocab)`` (the int8 head's, when there is
        one), cached until the weights change."""
        weight = self.output_weight if self.head is None else self.head.weight
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        if self._output_key != key:
            full = weight if self.head is None else self.head.dequantized()
            self._output_t = full.detach().float().t().contiguous()
            self._output_key = key
        return self._output_t

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        weight = self.wte.weight
        return LlamaCache(self.config, batch, capacity, weight.device, weight.dtype)
