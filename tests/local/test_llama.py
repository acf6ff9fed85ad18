"""The Llama family on the scratch decoder: tiny random Llama / Qwen2 / Mistral folders written
by transformers give transformers' logits, and everything the scratch backend does for GPT-2
(cache, left padding, streaming, scoring, perplexity, constrained decoding, multiple choice)
works on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

import promptkit as pk
from promptkit.backends._base import GenerationConfig
from promptkit.backends.scratch._loading import config_from_hf
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.backends.scratch.llama import Llama, LlamaConfig
from promptkit.errors import ConfigurationError

from .conftest import MINI_TOKENIZER
from .test_scratch_backend import hf_sliding_perplexity

SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
    "rope_theta": 500000.0,
}


def make_hf_llama(folder: Path, kind: str = "llama", **options: object) -> Path:
    """A randomly initialised transformers Llama-family model, saved with save_pretrained,
    plus promptkit-mini's small tokenizer (shipped in the package; a small vocabulary keeps
    writing and converting GGUF files fast). Biases and norm weights are randomised too (zeros
    and ones would hide a missing bias or a norm weight applied in the wrong place)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(MINI_TOKENIZER, folder / "tokenizer.json")
    tokenizer = Tokenizer.from_folder(folder)
    torch.manual_seed(0)
    config_class = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }[kind]
    config = config_class(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.eot_id,
        eos_token_id=tokenizer.eot_id,
        **{**SHAPE, **options},
    )
    model_class = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "mistral": transformers.MistralForCausalLM,
    }[kind]
    model = model_class(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(folder)
    return folder


VARIANTS = {
    "llama-gqa-untied": ("llama", {}),
    "llama-tied-mha": ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    "llama3-rope-bias": ("llama", {"rope_parameters": LLAMA3_ROPE, "attention_bias": True}),
    "qwen2-qkv-bias": ("qwen2", {"tie_word_embeddings": True}),
    "mistral": ("mistral", {"sliding_window": 4096}),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def llama_pair(request, tmp_path_factory):
    kind, options = VARIANTS[request.param]
    folder = make_hf_llama(tmp_path_factory.mktemp(request.param), kind, **options)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return pk.get_backend(f"scratch:{folder}", device="cpu"), reference


@pytest.fixture(scope="module")
def llama_backend(tmp_path_factory):
    folder = make_hf_llama(tmp_path_factory.mktemp("llama"), "llama")
    return pk.get_backend(f"scratch:{folder}", device="cpu")


def max_logit_difference(backend, reference, ids: torch.Tensor) -> float:
    with torch.no_grad():
        ours = backend.model.logits(backend.model(ids))
        theirs = reference(ids).logits
    return float((ours - theirs).abs().max())


def test_logits_equal_transformers_over_128_positions(llama_pair):
    backend, reference = llama_pair
    assert isinstance(backend.model, Llama)
    ids = torch.randint(
        0, backend.model.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1)
    )
    assert max_logit_difference(backend, reference, ids) <= 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotating_queries_and_keys_gives_transformers_rotary_values_exactly(dtype):
    """The decoder turns queries and keys with a roll and a signed sine (fewer operations a
    step); the values must be transformers' ``q * cos + rotate_half(q) * sin``, bit for bit,
    at every position of a left-padded batch."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from promptkit.backends.scratch.llama import rotary, rotary_frequencies, rotate

    config = LlamaConfig(head_dim=16, rope_theta=10000.0)
    positions = torch.tensor([[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]])  # (B, T)
    q, k = torch.randn(2, 5, 6, 16).to(dtype), torch.randn(2, 5, 3, 16).to(dtype)
    angles = positions.float()[..., None] * rotary_frequencies(config)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)  # transformers' (B, T, hd)
    expected_q, expected_k = apply_rotary_pos_emb(
        q.transpose(1, 2), k.transpose(1, 2), cos, sin
    )  # (B, heads, T, hd)
    rotation = rotary(rotary_frequencies(config), positions, dtype)
    assert torch.equal(rotate(q, rotation).transpose(1, 2), expected_q)
    assert torch.equal(rotate(k, rotation).transpose(1, 2), expected_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_gives_transformers_values_exactly(dtype):
    """In bfloat16 the norm is normalized in float32, rounded, then scaled, as transformers'
    LlamaRMSNorm does: the same values bit for bit (a different order changes the roundings)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from promptkit.backends.scratch.llama import rms_norm

    torch.manual_seed(0)
    for width in (64, 576):
        reference = LlamaRMSNorm(width, eps=1e-5)
        with torch.no_grad():
            reference.weight.copy_(torch.randn(width))
        reference = reference.to(dtype)
        x = (torch.randn(3, 40, width) * 5).to(dtype)
        with torch.no_grad():
            assert torch.equal(rms_norm(x, reference.weight, 1e-5), reference(x))


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8", "int4"])
def test_blocks_called_as_modules_give_the_model_s_values(precision):
    """``Llama.forward`` runs each block's math over rows without module calls (cheaper at
    batch 1); the blocks, attentions and MLPs called as modules on ``(B, T, C)`` must give
    the same hidden states, with the q/k/v and gate/up products separate or joined."""
    from promptkit.backends.scratch._reduce import reduce_precision
    from promptkit.backends.scratch.llama import rotary

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, head_dim=16, n_inner=96
    )
    model = Llama(config).eval()
    reduce_precision(model, precision)
    idx = torch.randint(0, 96, (2, 5))
    with torch.no_grad():
        expected = model(idx)
        x = model.wte(idx)
        rotation = rotary(model.inv_freq, torch.arange(5).expand(2, 5), x.dtype)
        for block in model.h:
            attended = x + block.attn(block.attn_norm(x), rotation, None, None, 0)
            by_parts = attended + block.mlp(block.mlp_norm(attended))
            x = block(x, rotation, None, None, 0)
            assert torch.equal(x, by_parts)
        assert torch.equal(model.norm(x).float(), expected)


def test_cache_and_left_padding_equal_a_full_pass(llama_pair):
    backend, _ = llama_pair
    model = backend.model
    ids = torch.randint(
        0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 12)
        parts = [model(ids[:, :5], cache=cache)]
        parts += [model(ids[:, i : i + 1], cache=cache) for i in range(5, 12)]
        assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
        padded = torch.cat([torch.zeros((1, 3), dtype=torch.long), ids], 1)
        valid = torch.tensor([[False] * 3 + [True] * 12])
        positions = torch.tensor([[0, 0, 0, *range(12)]])
        out = model(padded, positions=positions, key_valid=valid)
        assert torch.allclose(out[:, 3:], full, atol=1e-5)
        # rotary positions are relative: shifting all of them changes nothing, but a
        # position reused does
        shifted = model(padded, key_valid=valid)
        assert torch.allclose(shifted[:, 3:], full, atol=1e-5)
        repeated = model(
            padded, positions=torch.tensor([[0, 0, 0, 0, *range(11)]]), key_valid=valid
        )
        assert not torch.allclose(repeated[:, 3:], full, atol=1e-4)


def test_greedy_generation_matches_transformers(llama_pair):
    backend, reference = llama_pair
    prompt = "The quick brown fox"
    ids = torch.tensor([backend.tokenizer.encode(prompt)])
    expected = reference.generate(
        ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
    )[0, ids.size(1) :].tolist()
    got, _ = backend.generate_ids(
        [ids[0].tolist()], GenerationConfig(max_tokens=8), stop_at_end_of_text=False
    )
    assert got[0] == expected


def test_batched_generation_equals_generating_alone(llama_backend):
    prompts = ["Hello there", "A much longer prompt about the weather in the hills", "x"]
    config = GenerationConfig(max_tokens=6)
    together = [c.text for c in llama_backend.generate_batch(prompts, config)]
    alone = [llama_backend.generate_batch([p], config)[0].text for p in prompts]
    assert together == alone


def test_streaming_yields_the_generated_text(llama_backend):
    config = GenerationConfig(max_tokens=8)
    streamed = "".join(llama_backend.stream("Once upon a time", config=config))
    assert streamed == llama_backend.generate("Once upon a time", config=config).text


def test_loglikelihood_and_multiple_choice_match_transformers(tmp_path):
    folder = make_hf_llama(tmp_path, "qwen2")
    backend = pk.get_backend(f"scratch:{folder}", device="cpu")
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    context, choices = "The sky is", [" blue", " green today", " a lie"]
    context_ids = backend.tokenizer.encode(context)
    expected = []
    for choice in choices:
        choice_ids = backend.tokenizer.encode(choice)
        ids = torch.tensor([context_ids + choice_ids])
        with torch.no_grad():
            logprobs = reference(ids).logits[0, :-1].log_softmax(-1)
        picked = logprobs[len(context_ids) - 1 :].gather(1, ids[0, len(context_ids) :, None])
        expected.append(float(picked.sum()))
    assert backend.loglikelihood(context, choices[1]) == pytest.approx(expected[1], abs=1e-3)
    shared_prefix = [score for score, _ in backend.score_choices(context, choices)]
    assert shared_prefix == pytest.approx(expected, abs=1e-3)


def test_sliding_window_perplexity_matches_transformers(tmp_path):
    folder = make_hf_llama(tmp_path, "llama", max_position_embeddings=64)
    backend = pk.get_backend(f"scratch:{folder}", device="cpu")
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    text = "The quick brown fox jumps over the lazy dog. To be, or not to be. " * 6
    ids = backend.tokenizer.encode(text)
    expected, count = hf_sliding_perplexity(reference, ids, 64, 32)
    stats = backend.perplexity_stats(text, stride=32)
    assert stats.tokens == count
    assert stats.perplexity == pytest.approx(expected, rel=1e-4)


def test_constrained_json_answer_is_valid_with_fast_forward(llama_backend, monkeypatch):
    from typing import Literal

    from pydantic import BaseModel, ConfigDict

    from promptkit._grammar import grammar_for
    from promptkit._parsing import output_spec
    from promptkit.backends.scratch._backend import ScratchBackend

    class Keys(BaseModel):  # short values, long keys: most tokens are forced by the grammar
        model_config = ConfigDict(extra="forbid")
        a_rather_long_field_name: bool
        another_quite_long_field_name: Literal["x", "y"]

    assert isinstance(llama_backend, ScratchBackend)
    grammar = grammar_for(output_spec(Keys))
    passes = []
    forward = llama_backend.model.forward
    monkeypatch.setattr(
        llama_backend.model, "forward", lambda *a, **k: passes.append(1) or forward(*a, **k)
    )
    completion = llama_backend.generate("JSON:", GenerationConfig(max_tokens=40, grammar=grammar))
    Keys.model_validate_json(completion.text)
    assert len(passes) < completion.usage.completion_tokens / 4


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigurationError, match="multiple of n_kv_head"):
        LlamaConfig(n_head=9, n_kv_head=2)
    with pytest.raises(ConfigurationError, match="rope scaling 'yarn' is not implemented"):
        LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ConfigurationError, match="'llama3' needs low_freq_factor, high_freq"):
        LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0})
    base = {"model_type": "llama", "vocab_size": 10, "num_hidden_layers": 1, **SHAPE}
    with pytest.raises(ConfigurationError, match="hidden_act='gelu'"):
        config_from_hf({**base, "hidden_act": "gelu"}, "here")
    with pytest.raises(ConfigurationError, match="mlp_bias"):
        config_from_hf({**base, "mlp_bias": True}, "here")
    mistral = config_from_hf({**base, "model_type": "mistral", "sliding_window": 32}, "here")
    assert mistral.context_length == 32  # never slides: the window is the context


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = make_hf_llama(tmp_path, "llama")
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ConfigurationError, match="missing tensor 'h.1.mlp.up_proj.weight'"):
        pk.get_backend(f"scratch:{folder}", device="cpu")


def test_end_of_text_comes_from_the_model_config(tmp_path):
    folder = make_hf_llama(tmp_path, "llama")
    config = json.loads((folder / "config.json").read_text())
    backend = pk.get_backend(f"scratch:{folder}", device="cpu")
    assert backend.tokenizer.eot_id == config["eos_token_id"]


def test_sharded_weights_load_and_a_missing_shard_is_named(tmp_path):
    folder = make_hf_llama(tmp_path, "llama")
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    (folder / "model.safetensors").unlink()
    reference.save_pretrained(folder, max_shard_size="100KB")
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    backend = pk.get_backend(f"scratch:{folder}", device="cpu")
    ids = torch.randint(0, backend.model.config.vocab_size, (1, 16))
    assert max_logit_difference(backend, reference, ids) <= 1e-3
    shards[-1].unlink()
    with pytest.raises(ConfigurationError, match=f"no weights file '{shards[-1].name}'"):
        pk.get_backend(f"scratch:{folder}", device="cpu")


def test_served_over_the_openai_api(llama_backend):
    """`promptkit serve` on a Llama-family model: the official client gets what generate gives."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from servers import serve_in_thread

    from promptkit.server import create_app

    app = create_app(llama_backend, model_name="tiny-llama")
    with (
        serve_in_thread(app) as base,
        openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client,
    ):
        response = client.completions.create(
            model="tiny-llama", prompt="Once upon", max_tokens=6, temperature=0
        )
    expected = llama_backend.generate("Once upon", GenerationConfig(max_tokens=6))
    assert response.choices[0].text == expected.text
