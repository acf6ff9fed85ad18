"""GPT-2 written from scratch, read top to bottom: config, cache, attention, MLP, block, GPT.

Decoder-only Transformer as in GPT-2: token + learned position embeddings, pre-LayerNorm blocks
of causal multi-head self-attention and a GELU MLP, a final LayerNorm, and an output projection
tied to the token embedding. Attention goes through PyTorch's scaled_dot_product_attention and
reads and writes a preallocated key/value cache for incremental decoding. Beside it:
:mod:`~promptkit.backends.scratch._layout` stores each weight the way decoding on a CPU streams
it fastest, and :mod:`~promptkit.backends.scratch._gpt2_extras` holds the options that GPT-2 does
not have, off unless a config asks (the ``mini`` preset does): ALiBi positions, smeared keys, a
local convolution before attention, and a mimetic start of attention (see GPTConfig).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigurationError
from ._gpt2_extras import LocalMix, alibi_bias, alibi_slopes, mimetic, sinusoids, smeared
from ._layout import FEW_ROWS, Linear, rows_times
from ._quant import Int8Linear, plain_logits

__all__ = ["GPT", "PRESETS", "GPTConfig", "KVCache", "attention_mask", "preset"]


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT. Defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257  # tokens in the vocabulary
    context_length: int = 1024  # most positions the model attends to
    n_layer: int = 12  # Transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # embedding width
    n_inner: int | None = None  # MLP hidden width (None: 4 * n_embd)
    dropout: float = 0.0  # dropout during training
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2
    tie_embeddings: bool = True  # output projection shares the token embedding's weights
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon
    # Smeared keys (not in GPT-2): each head's keys mix in the previous position's key, which
    # makes induction heads (copying from context) form far earlier in training.
    smear_keys: bool = False
    # Local convolution before each attention (not in GPT-2): every position mixes in the
    # inputs of its last conv_width - 1 positions (0: off). See LocalMix.
    conv_width: int = 0
    # Position by ALiBi (Press et al., 2022; not GPT-2's learned table): no position
    # embedding; each head's attention falls linearly with distance, at its own slope. A head
    # can then attend to "the nearest X" from every position at once (the word a label
    # follows), and the model runs on prompts longer than those it was trained on.
    alibi: bool = False
    # Mimetic start for attention (Trockman & Kolter, 2023; not GPT-2's init): every head's
    # key map starts equal to its query map, so a query first attends to keys like itself.
    # With smear_keys that is an induction head from step 0, which training sharpens.
    mimetic_init: bool = False

    def __post_init__(self) -> None:
        problems = [
            f"{f.name} must be a positive integer, got {getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd")
            and (not isinstance(getattr(self, f.name), int) or getattr(self, f.name) <= 0)
        ]
        if not problems and self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if isinstance(self.conv_width, bool) or not isinstance(self.conv_width, int):
            problems.append(f"conv_width must be an integer (0: off), got {self.conv_width!r}")
        elif self.conv_width < 0:
            problems.append(f"conv_width must be 0 (off) or positive, got {self.conv_width}")
        problems += [
            f"{name} must be true or false, got {getattr(self, name)!r}"
            for name in ("smear_keys", "mimetic_init", "alibi")
            if not isinstance(getattr(self, name), bool)
        ]
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ConfigurationError("invalid GPT config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigurationError(f"unknown GPT config field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


class KVCache:
    """Preallocated keys and values of every layer: ``(B, n_head, capacity, head_size)`` each.

    ``length`` is how many positions hold valid entries; a forward pass with the cache writes
    its new positions at ``length`` and advances it.
    """

    def __init__(self, config: GPTConfig, batch: int, capacity: int, device: Any, dtype: Any):
        shape = (batch, config.n_head, capacity, config.n_embd // config.n_head)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [
            torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)
        ]
        # the inputs of each block's local convolution (GPTConfig.conv_width), when it has one
        self.inputs = [
            torch.empty((batch, capacity, config.n_embd), device=device, dtype=dtype)
            for _ in range(config.n_layer if config.conv_width else 0)
        ]
        self.capacity = capacity
        self.length = 0

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (to drop finished sequences or repeat a prefix)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.inputs = [i.index_select(0, rows) for i in self.inputs]


def attention_mask(
    key_valid: torch.Tensor | None, query_length: int, past_length: int
) -> torch.Tensor | None:
    """Boolean mask ``(B, 1, T, past + T)``: causal, and blind to padding keys.

    ``key_valid`` is ``(B, past + T)``, False at padding. A padding query may still see itself,
    so that no row is fully masked (which would make NaNs that leak through the cache). Returns
    None when plain causal attention from position 0 does the job.
    """
    total = past_length + query_length
    if key_valid is None and (past_length == 0 or query_length == 1):
        return None  # plain causal attention (or one query that sees every key)
    device = key_valid.device if key_valid is not None else None
    query_pos = torch.arange(past_length, total, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(total, device=device)[None, :]  # (1, past + T)
    mask = key_pos <= query_pos  # (T, past + T)
    if key_valid is None:
        return mask[None, None]
    mask = mask[None] & (key_valid[:, None, :] | (key_pos == query_pos)[None])  # (B, T, past+T)
    return mask[:, None]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over the past (through the cache) and the present."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        # Smeared keys: per head, a learned mix sigmoid(a) of each key with the key before it.
        self.smear = nn.Parameter(torch.zeros(config.n_head)) if config.smear_keys else None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        past: int,
        has_previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()  # batch, time, channels
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            key_cache, value_cache = cache
            key_cache[:, :, past : past + T] = k
            value_cache[:, :, past : past + T] = v
            k = key_cache[:, :, : past + T]  # (B, nh, past + T, hs)
            v = value_cache[:, :, : past + T]
        if self.smear is not None:
            k = smeared(k, self.smear, has_previous)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T > 1,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    """Position-wise feed-forward: widen, GELU (tanh approximation, as GPT-2), project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.n_inner or 4 * config.n_embd
        self.c_fc = Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))
        return out


class Block(nn.Module):
    """One pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (with
    ``conv_width``, the attention reads ln(x) through a :class:`LocalMix`)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mix = LocalMix(config.n_embd, config.conv_width) if config.conv_width else None
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        past: int,
        has_previous: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.ln_1(x)
        if self.mix is not None:
            h = self.mix(h, valid, inputs, past)
        x = x + self.attn(h, mask, cache, past, has_previous)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    """The decoder. ``forward`` returns final hidden states; ``logits`` projects them."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
        self.wpe = (  # position embedding (none with ALiBi, which biases attention instead)
            None if config.alibi else nn.Embedding(config.context_length, config.n_embd)
        )
        self.slopes: torch.Tensor | None  # ALiBi's per-head slopes (moves with .to(device))
        self.register_buffer(
            "slopes", alibi_slopes(config.n_head) if config.alibi else None, persistent=False
        )
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        )
        self.head: Int8Linear | None = None  # the output projection in int8 (see _quant)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        with torch.no_grad():  # learned, but starting from the sinusoids of the Transformer
            if self.wpe is not None:
                self.wpe.weight.copy_(sinusoids(config.context_length, config.n_embd, std=0.02))
            if config.mimetic_init:
                for module in self.modules():
                    if isinstance(module, CausalSelfAttention):
                        mimetic(module.c_attn, config.n_embd, config.n_head)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (Linear, nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, (Linear, nn.Linear)) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def output_weight(self) -> torch.Tensor:
        """The ``(vocab, n_embd)`` matrix that maps hidden states to logits."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        key_valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(B, T, n_embd)`` of token ids ``idx`` ``(B, T)``.

        ``positions`` ``(B, T)`` default to ``past + 0..T-1``; ``key_valid`` ``(B, past + T)``
        marks real (not padding) tokens; with ``cache`` the new keys and values are stored
        after the ``cache.length`` cached ones, which the queries also attend to.
        """
        B, T = idx.size()
        past = cache.length if cache is not None else 0
        mask = attention_mask(key_valid, T, past)
        if self.slopes is not None:
            mask = alibi_bias(self.slopes, mask, T, past)
            kind = idx.device.type
            if torch.is_autocast_enabled(kind):  # once here, not in every layer
                mask = mask.to(torch.get_autocast_dtype(kind))
        has_previous = None
        if self.config.smear_keys and key_valid is not None:  # padding is nobody's predecessor
            has_previous = F.pad(key_valid[:, :-1], (1, 0), value=False)
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            if positions is None:
                positions = torch.arange(past, past + T, device=idx.device).expand(B, T)
            x = x + self.wpe(positions)
        x = self.drop(x)
        if mask is not None and mask.is_floating_point():  # ALiBi biases, in the model's dtype
            mask = mask.to(x.dtype)
        valid = key_valid[:, past:] if key_valid is not None else None
        for i, block in enumerate(self.h):
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            inputs = cache.inputs[i] if cache is not None and cache.inputs else None
            x = block(x, mask, layer_cache, past, has_previous, valid, inputs)
        if cache is not None:
            cache.length = past + T
        out: torch.Tensor = self.ln_f(x)
        return out.float()  # float32 whatever the weights' precision

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states to float32 vocabulary logits: ``(..., n_embd) -> (..., vocab)``.

        Without gradients it multiplies by a cached ``(n_embd, vocab)`` copy of the output
        matrix (the fast layout, see :class:`Linear`), refreshed whenever the weights change;
        in reduced precision, by the int8 head or the bfloat16 matrix.
        """
        weight = self.output_weight
        plain = plain_logits(hidden, weight, self.head)
        if plain is not None:
            return plain
        rows = hidden.numel() // hidden.size(-1)
        if 1 < rows <= FEW_ROWS:
            return rows_times(weight, hidden)
        return hidden @ self.output_matrix()

    def output_matrix(self) -> torch.Tensor:
        """The float32 output matrix as ``(n_embd, vocab)`` (the int8 head's, when there is
        one), cached until the weights change."""
        weight = self.output_weight if self.head is None else self.head.weight
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        if getattr(self, "_output_key", None) != key:
            full = weight if self.head is None else self.head.dequantized()
            self._output_t = full.detach().float().t().contiguous()
            self._output_key = key
        return self._output_t

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        weight = self.wte.weight
        return KVCache(self.config, batch, capacity, weight.device, weight.dtype)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    # Small models for tests and for training on a CPU (vocab_size follows the tokenizer).
    "tiny": GPTConfig(vocab_size=512, context_length=128, n_layer=2, n_head=2, n_embd=64),
    "small": GPTConfig(vocab_size=4096, context_length=256, n_layer=4, n_head=4, n_embd=256),
    # promptkit-mini: the small shape with room for few-shot prompts, and the extras
    # (see promptkit.training._recipes.MINI_RECIPE).
    "mini": GPTConfig(
        vocab_size=4096,
        context_length=512,
        n_layer=4,
        n_head=4,
        n_embd=256,
        smear_keys=True,
        conv_width=4,
        mimetic_init=True,
        alibi=True,
    ),
}


def preset(name: str, **overrides: Any) -> GPTConfig:
    """A preset config, with some fields replaced; raises ConfigurationError for a bad name."""
    if name not in PRESETS:
        raise ConfigurationError(
            f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
        )
    return GPTConfig(**{**PRESETS[name].to_dict(), **overrides})
