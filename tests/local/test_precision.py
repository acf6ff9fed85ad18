"""Reduced-precision weights on the scratch decoder (bfloat16, int8, int4): the kernels compute
what the dequantized weights do, every precision's logits stay close to float32's on tiny
random Llama and GPT-2 models (closer than a wrong scale, zero point or permutation allows),
greedy tokens agree wherever float32's choice is clear, GGUF Q4 blocks stay int4 block for
block, and the dtype is chosen by option or spec and is part of the cache identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import promptkit as pk
from promptkit._grammar import grammar_for
from promptkit._parsing import output_spec
from promptkit.backends._base import GenerationConfig
from promptkit.backends.scratch import _quant
from promptkit.backends.scratch._quant import Int4Linear, Int4Weights, Int8Linear
from promptkit.errors import ConfigurationError

from .conftest import make_hf_gpt2
from .test_llama import make_hf_llama

# Largest relative error ||logits - float32 logits|| / ||float32 logits|| each precision may
# have on the tiny models. A wrong scale, zero point or row order gives errors near 1 or more.
TOLERANCE = {"bfloat16": 0.015, "int8": 0.025, "int4": 0.15}  # measured: 0.006, 0.01, 0.08
REDUCED = sorted(TOLERANCE)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int
    ok: bool


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "llama": make_hf_llama(tmp_path_factory.mktemp("llama"), "llama"),
        "gpt2": make_hf_gpt2(tmp_path_factory.mktemp("gpt2"), mini_tokenizer=True),
    }


def logits_of(backend: object, ids: torch.Tensor) -> torch.Tensor:
    model = backend.model  # type: ignore[attr-defined]
    with torch.no_grad():
        return model.logits(model(ids))  # type: ignore[no-any-return]


def random_ids(vocab: int, length: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(5))


def relative_error(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float((found - expected).norm() / expected.norm())


# -- the kernels ------------------------------------------------------------------------------


def test_int8_layer_computes_with_its_dequantized_weight():
    weight, bias = torch.randn(48, 64), torch.randn(48)
    layer = Int8Linear(weight, bias)
    x = torch.randn(3, 5, 64)
    expected = x.bfloat16().float() @ layer.dequantized().t() + bias.bfloat16().float()
    assert layer(x).shape == (3, 5, 48)
    assert torch.allclose(layer(x).float(), expected, rtol=0.02, atol=0.05)
    # one scale per output channel, each weight within half a step of the original
    step = layer.scale.float()[:, None]
    assert bool(((layer.dequantized() - weight).abs() <= step / 2 + 1e-6).all())


def test_int4_layer_computes_with_its_dequantized_weight():
    """The kernel's scales-and-zeros layout: ``w = (q - 8) * scale + zero`` per group of 32."""
    weight, bias = torch.randn(32, 96), torch.randn(32)
    weights = Int4Weights.quantize(weight)
    assert weights.codes.dtype == torch.uint8 and int(weights.codes.max()) <= 15
    assert weights.scale.shape == (32, 3) and weights.zero.shape == (32, 3)
    dequantized = weights.dequantized()
    step = weights.scale.repeat_interleave(32, dim=1)
    assert bool(((dequantized - weight).abs() <= step * 0.51 + 1e-3).all())
    layer = Int4Linear(weights, bias)
    x = torch.randn(4, 96)
    expected = x.bfloat16().float() @ dequantized.t() + bias.bfloat16().float()
    assert torch.allclose(layer(x).float(), expected, rtol=0.02, atol=0.1)
    # reordering rows reorders the outputs (what unpermuting a GGUF projection relies on)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    swapped = Int4Linear(weights.rows(order), bias[order])
    assert torch.allclose(swapped(x).float(), layer(x).float()[:, order], rtol=1e-3, atol=1e-3)


def test_int4_layer_shapes_the_kernel_cannot_take_become_int8(folders, tmp_path):
    assert Int4Linear.fits(16, 64) and not Int4Linear.fits(24, 64)
    assert not Int4Linear.fits(16, 48)
    odd = make_hf_llama(tmp_path / "odd", "llama", intermediate_size=80)  # down_proj: 80 inputs
    backend = pk.get_backend(f"scratch:{odd}", device="cpu", dtype="int4")
    assert isinstance(backend.model.h[0].mlp.down_proj, Int8Linear)
    assert isinstance(backend.model.h[0].mlp.gate_up_proj, Int4Linear)  # 160 outputs, 64 inputs


# -- whole models -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", REDUCED)
def test_each_precision_stays_close_to_float32(folders, family, dtype):
    reference = pk.get_backend(f"scratch:{folders[family]}", device="cpu")
    reduced = pk.get_backend(f"scratch:{folders[family]}", device="cpu", dtype=dtype)
    assert _quant.precision_of(reduced.model) == dtype
    ids = random_ids(reference.model.config.vocab_size)
    expected, found = logits_of(reference, ids), logits_of(reduced, ids)
    assert found.dtype == torch.float32
    assert relative_error(found, expected) <= TOLERANCE[dtype]
    # greedy choices agree wherever float32's lead is wider than the error could bridge
    top = expected.topk(2, dim=-1).values
    margin = top[..., 0] - top[..., 1]
    clear = margin > 2 * (found - expected).abs().amax(dim=-1)
    assert bool((found.argmax(-1)[clear] == expected.argmax(-1)[clear]).all())
    assert bool(clear.any()) or dtype != "bfloat16"
    # scoring reads the same weights as decoding
    assert abs(reduced.loglikelihood("The quick", " brown fox")) < float("inf")


@pytest.mark.parametrize("dtype", REDUCED)
def test_each_precision_generates_valid_output(folders, dtype):
    backend = pk.get_backend(f"scratch:{folders['llama']}", device="cpu", dtype=dtype)
    config = GenerationConfig(max_tokens=12, temperature=0)
    alone = backend.generate("The quick brown", config)
    assert alone.usage.completion_tokens > 0
    batched = backend.generate_batch(["The quick brown", "A journey of a"], config)
    assert batched[0].text == alone.text  # left padding still gives each prompt its own tokens
    grammar = grammar_for(output_spec(Answer))
    constrained = backend.generate("JSON:", GenerationConfig(max_tokens=40, grammar=grammar))
    Answer.model_validate_json(constrained.text)


def test_untied_llama_keeps_its_own_output_matrix(tmp_path):
    folder = make_hf_llama(tmp_path / "untied", "llama", tie_word_embeddings=False)
    reference = pk.get_backend(f"scratch:{folder}", device="cpu")
    reduced = pk.get_backend(f"scratch:{folder}", device="cpu", dtype="int8")
    assert not torch.equal(reference.model.lm_head.weight, reference.model.wte.weight)
    ids = random_ids(reference.model.config.vocab_size)
    assert relative_error(logits_of(reduced, ids), logits_of(reference, ids)) <= 0.05
    matrix = reduced.model.output_matrix()
    assert matrix.dtype == torch.float32
    assert torch.allclose(matrix, reference.model.output_matrix(), atol=0.01)


# -- GGUF Q4 blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_gguf_q4_blocks_become_int4_weights_block_for_block(tmp_path, qtype):
    gguf = pytest.importorskip("gguf")
    from promptkit.backends.scratch._gguf import (
        int4_weights,
        open_gguf,
        read_gguf,
        state_from_gguf,
    )

    from .test_gguf import write_gguf

    Q = gguf.GGMLQuantizationType
    folder = make_hf_llama(tmp_path / "hf", "llama", num_key_value_heads=4)
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, {"*": getattr(Q, qtype), "token_embd": Q.Q8_0})
    float32 = pk.get_backend(f"scratch:{path}", device="cpu")
    reader = open_gguf(path)
    _, tensors = read_gguf(reader, str(path))
    config = float32.model.config
    state = state_from_gguf(tensors, config, "llama")  # gguf's own dequantization, unpermuted
    found = int4_weights(reader, config, "llama")
    assert set(found) == {n.removesuffix(".weight") for n in state if n.startswith("h.")} - {
        f"h.{i}.{norm}" for i in range(config.n_layer) for norm in ("attn_norm", "mlp_norm")
    }
    for name, weights in found.items():  # the same weights, to float32 rounding
        assert torch.allclose(weights.dequantized(), state[f"{name}.weight"], rtol=0, atol=1e-6)
    # the loaded int4 model holds those blocks (scales as the kernel keeps them, bfloat16)
    reduced = pk.get_backend(f"scratch:{path}", device="cpu", dtype="int4")
    layer = reduced.model.h[1].attn.qkv_proj  # q, k and v joined, in that order
    assert isinstance(layer, Int4Linear)
    parts = [found[f"h.1.attn.{p}_proj"] for p in "qkv"]
    kept = Int4Weights(
        *(torch.cat([getattr(p, f) for p in parts]) for f in ("codes", "scale", "zero"))
    )
    assert torch.equal(layer.scale_zero[..., 0], kept.scale.t().bfloat16())
    assert torch.equal(layer.scale_zero[..., 1], kept.zero.t().bfloat16())
    x = torch.randn(3, config.n_embd)
    exact = Int4Weights(kept.codes, kept.scale.bfloat16().float(), kept.zero.bfloat16().float())
    expected = x.bfloat16().float() @ exact.dequantized().t()
    assert torch.allclose(layer(x).float(), expected, rtol=0.02, atol=0.02)
    # and computes the float32 model's logits up to bfloat16 rounding
    ids = random_ids(config.vocab_size)
    assert relative_error(logits_of(reduced, ids), logits_of(float32, ids)) <= 0.05
    # "auto" keeps a Q4 file int4
    auto = pk.get_backend(f"scratch:{path}", device="cpu", dtype="auto")
    assert _quant.precision_of(auto.model) == "int4"


# -- choosing the precision -------------------------------------------------------------------


def test_the_spec_names_the_dtype_and_the_cache_identity_keeps_it(folders):
    spec = f"scratch:{folders['gpt2']}"
    identities = {
        dtype: pk.get_backend(f"{spec}@{dtype}", device="cpu").cache_identity()
        for dtype in ("float32", "bfloat16", "int8", "int4")
    }
    assert {d: i["dtype"] for d, i in identities.items()} == {d: d for d in identities}
    assert pk.get_backend(spec, device="cpu").cache_identity() == identities["float32"]
    backend = pk.get_backend(f"{spec}@int8", device="cpu", dtype="int8")
    assert backend.name.endswith("@int8")


def test_bad_dtypes_are_configuration_errors_naming_the_choices(folders, monkeypatch):
    spec = f"scratch:{folders['gpt2']}"
    with pytest.raises(ConfigurationError, match=r"unknown dtype 'int3'.*int8, int4 or auto"):
        pk.get_backend(f"{spec}@int3", device="cpu")
    with pytest.raises(ConfigurationError, match=r"unknown dtype 'float64'.*bfloat16"):
        pk.get_backend(spec, device="cpu", dtype="float64")
    with pytest.raises(ConfigurationError, match=r"asks for dtype 'int8'.*'int4'; give it once"):
        pk.get_backend(f"{spec}@int8", device="cpu", dtype="int4")
    with pytest.raises(ConfigurationError, match=r"device 'cuda' is not available here"):
        pk.get_backend(spec, device="cuda", dtype="int4")  # this CPU-only PyTorch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigurationError, match=r"dtype='int4' runs on the CPU only"):
        pk.get_backend(spec, device="cuda", dtype="int4")


def test_a_path_with_an_at_sign_stays_a_path(folders, tmp_path):
    import shutil

    copy = tmp_path / "model@int8"
    shutil.copytree(folders["gpt2"], copy)
    backend = pk.get_backend(f"scratch:{copy}", device="cpu")
    assert backend.cache_identity()["dtype"] == "float32"


@pytest.mark.parametrize(("native", "expected"), [(True, "int8"), (False, "float32")])
def test_auto_picks_by_what_the_cpu_offers(folders, monkeypatch, native, expected):
    monkeypatch.setattr(_quant, "has_bfloat16_arithmetic", lambda: native)
    backend = pk.get_backend(f"scratch:{folders['llama']}@auto", device="cpu")
    assert backend.cache_identity()["dtype"] == expected
    assert _quant.auto_precision("cuda") == "bfloat16"
    assert _quant.auto_precision("cpu", "int4") == "int4"


def test_llama_projections_are_joined_in_reduced_precision(folders):
    """q, k and v are one product, and so are gate and up; the separate layers are gone (no
    second copy of their weights). float32 keeps the layers as loaded."""
    plain = pk.get_backend(f"scratch:{folders['llama']}", device="cpu").model.h[0]
    assert plain.attn.qkv_proj is None and plain.mlp.gate_up_proj is None
    for dtype in REDUCED:
        block = pk.get_backend(f"scratch:{folders['llama']}", device="cpu", dtype=dtype).model.h[0]
        children = {name for name, _ in block.named_modules()}
        assert {"attn.qkv_proj", "mlp.gate_up_proj", "attn.o_proj", "mlp.down_proj"} <= children
        assert not children & {"attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.gate_proj"}


def test_auto_keeps_a_q8_0_file_int8(tmp_path):
    gguf = pytest.importorskip("gguf")

    from .test_gguf import write_gguf

    folder = make_hf_llama(tmp_path / "hf", "llama")
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, {"*": gguf.GGMLQuantizationType.Q8_0})
    backend = pk.get_backend(f"scratch:{path}@auto", device="cpu")
    assert backend.cache_identity()["dtype"] == "int8"
    assert backend.name.endswith("@int8")


@pytest.mark.parametrize("dtype", REDUCED)
def test_the_shipped_model_runs_in_every_precision(dtype):
    """promptkit-mini's ALiBi biases, smeared keys and local convolution follow the dtype."""
    from promptkit.models import mini_path

    if mini_path() is None:
        pytest.skip("this copy of promptkit ships no promptkit-mini")
    reference = pk.get_backend("scratch:", device="cpu")
    backend = pk.get_backend(f"scratch:@{dtype}", device="cpu")
    assert backend.name == f"scratch:promptkit-mini@{dtype}"
    prompt = "Review: I loved it.\nSentiment:"
    config = GenerationConfig(max_tokens=8, temperature=0)
    assert backend.generate(prompt, config).usage.completion_tokens > 0
    ids = torch.tensor([reference.tokenizer.encode(prompt)])
    assert relative_error(logits_of(backend, ids), logits_of(reference, ids)) <= TOLERANCE[dtype]


def test_the_command_line_passes_the_dtype_in_the_spec(folders, tmp_path):
    import json

    from click.testing import CliRunner

    from promptkit import cli as cli_module

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4, encoding="utf-8")
    figures = {}
    for dtype in ("float32", "int4"):
        spec = f"scratch:{folders['llama']}@{dtype}"
        result = CliRunner().invoke(
            cli_module.cli, ["perplexity", str(text), "--backend", spec, "--json"]
        )
        assert result.exit_code == 0, result.output
        figures[dtype] = json.loads(result.output)["perplexity"]
    assert figures["int4"] != figures["float32"]  # another precision did run
    assert abs(figures["int4"] / figures["float32"] - 1) < 0.1
    refused = CliRunner().invoke(
        cli_module.cli,
        ["perplexity", str(text), "--backend", f"scratch:{folders['llama']}@int2"],
    )
    assert refused.exit_code != 0 and "unknown dtype 'int2'" in refused.output
    assert "Traceback" not in refused.output


def test_an_adapter_is_merged_in_float32_before_the_precision_is_reduced(tmp_path):
    from promptkit.backends.scratch._adapter import weights_fingerprint

    from .test_finetune import fake_adapter

    folder = make_hf_gpt2(tmp_path / "base", mini_tokenizer=True)
    base = pk.get_backend(f"scratch:{folder}", device="cpu")
    task = {"base": f"scratch:{folder}"}
    fake_adapter(task, tmp_path / "adapter", weights_fingerprint(base.model))
    merged = pk.get_backend(f"scratch:{tmp_path / 'adapter'}", device="cpu")
    reduced = pk.get_backend(f"scratch:{tmp_path / 'adapter'}@int8", device="cpu")
    assert reduced.name == f"scratch:{tmp_path / 'adapter'}@int8"
    assert reduced.cache_identity()["dtype"] == "int8"
    assert reduced.cache_identity()["adapter"] == merged.cache_identity()["adapter"]
    ids = random_ids(base.model.config.vocab_size)
    unmerged = relative_error(logits_of(base, ids), logits_of(merged, ids))
    assert relative_error(logits_of(reduced, ids), logits_of(merged, ids)) < unmerged / 4


# -- constrained decoding at the new speeds ---------------------------------------------------


class CountingTokenizer:
    """An llguidance tokenizer that records what it is asked to tokenize."""

    def __init__(self, inner: object):
        self.inner = inner
        self.tokenized: list[bytes] = []

    def tokenize_bytes(self, data: bytes) -> list[int]:
        self.tokenized.append(data)
        return list(self.inner.tokenize_bytes(data))  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_the_masker_tokenizes_a_recurring_ending_once(folders):
    """Near the end of the budget the same ending is checked step after step (inside a string
    or a number): it is tokenized once, and callers get their own copy of the tokens."""
    backend = pk.get_backend(f"scratch:{folders['llama']}@int4", device="cpu")
    config = GenerationConfig(max_tokens=40, grammar=grammar_for(output_spec(Answer)))
    masker = backend._masker(config, 1)
    counting = CountingTokenizer(masker.tokenizer)
    masker.tokenizer = counting  # type: ignore[assignment]
    row = masker.rows[0]
    first = masker._tokens(row, b'{"count":1,"ok":true}', ())
    first.append(-1)  # a caller's change stays its own
    again = masker._tokens(row, b'{"count":1,"ok":true}', ())
    assert again == first[:-1] and again
    assert counting.tokenized == [b'{"count":1,"ok":true}']
