"""Many rows at once in int8 and int4 (a prompt's pass, scoring): from ``DENSE_ROWS`` rows up a
layer widens its weight once and runs a dense product instead of the weight-only kernel. The
int4 codes are read back from the kernel's own packing on every x86 layout PyTorch has, and
widened to the kernel's weights; fewer rows, compiled steps and unknown layouts keep the
kernel; a whole model's logits stay close to what the kernels give."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import promptkit as pk
from promptkit.backends.scratch import _quant
from promptkit.backends.scratch._quant import DENSE_ROWS, Int4Linear, Int4Weights, Int8Linear

from .test_llama import make_hf_llama

EXPECTED_LAYOUT = {"AVX512": (64, False), "AVX2": (32, False), "DEFAULT": (32, True)}
# (out, in): full blocks of 64 and of 32 channels, shorter last blocks of 16, 32 and 48
SHAPES = [(80, 64), (16, 32), (48, 96), (96, 64), (128, 32), (176, 64)]


def random_int4(out: int, width: int, seed: int = 0) -> Int4Weights:
    generator = torch.Generator().manual_seed(seed)
    return Int4Weights.quantize(torch.randn(out, width, generator=generator))


class Counting:
    """A stand-in for a kernel overload that counts its calls."""

    def __init__(self, kernel: object):
        self.kernel, self.calls = kernel, 0

    def __call__(self, *args: object) -> torch.Tensor:
        self.calls += 1
        return self.kernel(*args)  # type: ignore[operator, no-any-return]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counting]:
    kernels = {"int4": Counting(_quant._INT4_MM), "int8": Counting(_quant._INT8_MM)}
    monkeypatch.setattr(_quant, "_INT4_MM", kernels["int4"])
    monkeypatch.setattr(_quant, "_INT8_MM", kernels["int8"])
    return kernels


# -- reading the kernel's packing back ----------------------------------------------------------


def test_the_packing_of_this_cpu_is_read_back_code_for_code():
    capability = torch.backends.cpu.get_cpu_capability()
    layout = _quant.int4_layout()
    if capability in EXPECTED_LAYOUT:
        assert layout == EXPECTED_LAYOUT[capability]
    if layout is None:
        pytest.skip(f"PyTorch's int4 packing on {capability} is not one this release reads")
    for out, width in SHAPES:
        weights = random_int4(out, width)
        layer = Int4Linear(weights, None)
        assert torch.equal(_quant._unpack(layer.packed, out, width, layout), weights.codes)
        assert torch.equal(layer.dequantized(), weights.dequantized())


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 CPU capabilities"
)
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_other_packings_are_read_back_too(capability):
    """PyTorch packs int4 codes differently by the CPU capability it runs with; the variable
    ATEN_CPU_CAPABILITY chooses a lower one, in a process of its own."""
    code = (
        "import torch\n"
        "from promptkit.backends.scratch import _quant\n"
        "from tests.local.test_dense_products import SHAPES, random_int4\n"
        "layout = _quant.int4_layout()\n"
        "print(torch.backends.cpu.get_cpu_capability(), layout)\n"
        "for out, width in SHAPES:\n"
        "    weights = random_int4(out, width)\n"
        "    layer = _quant.Int4Linear(weights, None)\n"
        "    assert torch.equal(_quant._unpack(layer.packed, out, width, layout), weights.codes)\n"
        "    assert torch.equal(layer.dequantized(), weights.dequantized())\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    name, layout = run.stdout.split(" ", 1)
    assert name == capability.upper()
    assert layout.strip() == str(EXPECTED_LAYOUT[name])


# -- which product runs -------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_many_rows_take_a_dense_product_of_the_kernels_own_weight(
    kind, dense, counted, monkeypatch
):
    """In bfloat16 (CPUs with bfloat16 arithmetic) and in float32 (the others)."""
    if kind == "int4" and _quant.int4_layout() is None:
        pytest.skip("PyTorch's int4 packing here is not one this release reads")
    monkeypatch.setattr(_quant, "_cpu_dense_dtype", lambda: dense)
    products = []
    real_product = _quant._dense_product

    def dense_product(rows: torch.Tensor, weight: torch.Tensor, bias: object) -> torch.Tensor:
        products.append(weight.dtype)
        return real_product(rows, weight, bias)  # type: ignore[arg-type]

    monkeypatch.setattr(_quant, "_dense_product", dense_product)
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(96, 64, generator=generator), torch.randn(96, generator=generator)
    layer: Int4Linear | Int8Linear
    if kind == "int4":
        layer = Int4Linear(Int4Weights.quantize(weight), bias)
    else:
        layer = Int8Linear(weight, bias)
    threshold = DENSE_ROWS[kind]
    x = torch.randn(threshold, 64, generator=generator).bfloat16()
    kernel = counted[kind]
    few = layer.multiply(x[: threshold - 1])
    assert kernel.calls == 1  # under the threshold: the kernel, as it always was
    many = layer.multiply(x)
    assert kernel.calls == 1 and products == [dense]  # from it on: the dense product
    assert many.dtype == few.dtype == torch.bfloat16 and many.shape == (threshold, 96)
    expected = x.float() @ layer.dequantized().t() + bias.bfloat16().float()
    assert torch.allclose(many.float(), expected, rtol=0.02, atol=0.1)
    # the rows the two ways share agree to bfloat16's rounding (a wrong code, scale or channel
    # order would be off by whole units)
    assert torch.allclose(many[:-1].float(), few.float(), rtol=0.02, atol=0.1)


def test_an_unknown_packing_keeps_the_kernel_for_every_product(monkeypatch, counted):
    weights = random_int4(32, 64)
    layer = Int4Linear(weights, None)
    monkeypatch.setattr(_quant, "int4_layout", lambda: None)
    x = torch.randn(DENSE_ROWS["int4"] + 8, 64).bfloat16()
    layer.multiply(x)
    assert counted["int4"].calls == 1
    # the weight is still there to read, through the kernel itself (to bfloat16's rounding)
    assert torch.allclose(layer.dequantized(), weights.dequantized(), rtol=1 / 128, atol=1e-6)


def test_a_compiled_function_keeps_the_kernel(counted):
    """Inside ``torch.compile`` the product stays the kernel's (a decoding step's graph must
    not change with the rows, and inductor picks its own kernels), bit for bit."""
    layer = Int4Linear(random_int4(32, 64), None)
    x = torch.randn(DENSE_ROWS["int4"], 64).bfloat16()
    compiled = torch.compile(layer.multiply, backend="eager", fullgraph=True)
    kernel = _quant._INT4_MM.kernel  # type: ignore[attr-defined]
    assert torch.equal(compiled(x), kernel(x, layer.packed, _quant.GROUP, layer.scale_zero))
    assert counted["int4"].calls >= 1  # traced through the kernel, not the dense product


# -- a whole model ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int4", "int8"])
def test_a_long_pass_gives_the_kernels_logits(tmp_path, monkeypatch, dtype):
    if dtype == "int4" and _quant.int4_layout() is None:
        pytest.skip("PyTorch's int4 packing here is not one this release reads")
    folder = make_hf_llama(tmp_path / "llama", "llama")
    reduced = pk.get_backend(f"scratch:{folder}", device="cpu", dtype=dtype)
    model = reduced.model
    ids = torch.randint(0, model.config.vocab_size, (1, 160))
    with torch.inference_mode():
        dense = model.logits(model(ids))
        monkeypatch.setitem(DENSE_ROWS, dtype, 1 << 30)
        kernels = model.logits(model(ids))
    assert not torch.equal(dense, kernels)  # the dense products ran, and round differently
    assert float((dense - kernels).norm() / kernels.norm()) < 0.02
    agree = (dense.argmax(-1) == kernels.argmax(-1)).float().mean()
    assert float(agree) > 0.9


@pytest.mark.parametrize("dtype", ["int4", "int8"])
def test_a_prefix_cache_hit_scores_within_rounding(tmp_path, dtype):
    """A cache hit leaves 10 rows of the context to compute (the kernels) where the whole
    context is 150 (dense products): the scores differ by rounding only."""
    folder = make_hf_llama(tmp_path / "llama", "llama")
    plain = pk.get_backend(f"scratch:{folder}", device="cpu", dtype=dtype, prefix_cache_bytes=0)
    cached = pk.get_backend(f"scratch:{folder}", device="cpu", dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    vocab = plain.model.config.vocab_size
    context = torch.randint(0, vocab, (150,), generator=generator).tolist()
    choices = [torch.randint(0, vocab, (3,), generator=generator).tolist() for _ in range(4)]
    expected = plain.score_choice_ids(context, choices)
    cached.score_choice_ids(context[:140], choices)
    found = cached.score_choice_ids(context, choices)
    assert cached.prefix_cache.stats().tokens_reused == 140
    assert max(abs(a - b) for a, b in zip(found, expected, strict=True)) < 5e-3
