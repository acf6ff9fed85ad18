"""The int8 output projection whose inputs are quantized to int8 per row (``_int8_head``): each
row on its own scale (the same logits alone or in any batch, with or without outlier channels;
a NaN row stays in its row), planted outlier channels found and kept out of the int8 product,
repacked when its weights or scales change, put in by ``reduce_precision`` only where FBGEMM's
product is exact at full range (the weight-only head elsewhere, as a subprocess forcing FBGEMM's
saturating AVX2 kernels shows), and named in the backend's cache identity. Tests of the product
itself are skipped where it does not run, with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import promptkit as pk
from promptkit.backends.scratch import _reduce
from promptkit.backends.scratch._int8_head import Int8Head, outlier_channels, row_quantized_products
from promptkit.backends.scratch._quant import Int8Linear

from .test_llama import make_hf_llama

needs_row_products = pytest.mark.skipif(
    not row_quantized_products(), reason="this CPU or PyTorch lacks FBGEMM or AVX512-VNNI"
)
NONE = torch.empty(0, dtype=torch.long)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_llama(tmp_path_factory.mktemp("llama"), "llama")


def weight_only(seed: int = 0) -> Int8Linear:
    weight = torch.randn(512, 64, generator=torch.Generator().manual_seed(seed))
    return Int8Linear(weight, None)


def relative_error(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float((found - expected).norm() / expected.norm())


@needs_row_products
def test_each_row_is_quantized_on_its_own_scale():
    """A row 1000 times larger and one 1000 times smaller share the batch: every row keeps
    its precision (one scale for the batch would round the small row to nothing) and gets
    exactly the logits it gets alone."""
    base = weight_only()
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    x[1] *= 1000
    x[2] *= 1e-3
    head = Int8Head(base, NONE)
    batch = head.multiply(x)
    expected = x @ base.dequantized().t()
    assert batch.dtype == torch.float32 and batch.shape == (3, 512)
    for row in range(3):
        assert relative_error(batch[row], expected[row]) < 0.01  # measured 0.005-0.007
        assert torch.equal(head.multiply(x[row : row + 1])[0], batch[row])


@needs_row_products
@pytest.mark.parametrize("size", [2, 3, 64])
def test_with_outlier_channels_a_row_alone_equals_the_row_in_a_batch(size):
    head = Int8Head(weight_only(), torch.tensor([3, 17, 40]))
    x = torch.randn(size, 64, generator=torch.Generator().manual_seed(size))
    x[:, 3] *= 100
    batch = head.multiply(x)
    for row in range(size):
        assert torch.equal(head.multiply(x[row : row + 1])[0], batch[row])


@needs_row_products
def test_a_row_of_zeros_gives_zeros_and_a_nan_row_stays_in_its_row():
    head = Int8Head(weight_only(), torch.tensor([3]))
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(6))
    alone = [head.multiply(x[row : row + 1])[0] for row in range(4)]
    x[0, 5] = float("nan")  # first: FBGEMM's range starts from the first element
    x[1] = 0.0
    x[2, 9] = float("inf")
    out = head.multiply(x)
    assert bool(out[0].isnan().all()) and bool(out[2].isnan().all())
    assert torch.equal(out[1], torch.zeros(512))
    assert torch.equal(out[3], alone[3])


@needs_row_products
def test_outlier_channels_are_kept_out_of_the_int8_product():
    """Channel 3 at 200 times the others: kept in float32, the rest of each row keeps its
    precision; quantized with them, the other channels lose most of theirs."""
    base = weight_only()
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    x[:, 3] *= 200
    rest = x.clone()
    rest[:, 3] = 0
    expected, scale = x @ base.dequantized().t(), (rest @ base.dequantized().t()).norm()
    apart = Int8Head(base, torch.tensor([3])).multiply(x)
    together = Int8Head(base, NONE).multiply(x)
    assert float((apart - expected).norm() / scale) < 0.02  # measured 0.006
    assert float((together - expected).norm() / scale) > 0.06  # measured 0.12


@needs_row_products
def test_the_head_is_packed_again_when_its_weights_or_scales_change():
    base = weight_only()
    head = Int8Head(base, torch.tensor([5]))
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    before = head.multiply(x)
    with torch.no_grad():
        head.weight.neg_()
    assert torch.allclose(head.multiply(x), -before, rtol=1e-4, atol=1e-3)
    head.scale = head.scale * 2  # a new tensor, as load_state_dict(assign=True) makes
    assert torch.allclose(head.multiply(x), -2 * before, rtol=1e-4, atol=1e-3)


def test_an_output_projection_with_a_bias_is_refused():
    with pytest.raises(ValueError, match="no bias"):
        Int8Head(Int8Linear(torch.randn(32, 64), torch.randn(32)), NONE)


class Fixed(nn.Module):
    """A stand-in model whose final hidden states have the given mean magnitude per channel."""

    def __init__(self, magnitudes: torch.Tensor):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=10, context_length=8)
        self.magnitudes = nn.Parameter(magnitudes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.magnitudes.expand(*ids.shape, -1)


def test_outlier_channels_are_over_four_medians_and_at_most_one_in_sixteen():
    magnitudes = torch.ones(64)
    magnitudes[[3, 5]] = torch.tensor([4.2, 3.9])
    assert outlier_channels(Fixed(magnitudes)).tolist() == [3]
    magnitudes[[10, 20, 30, 40, 50, 60]] = torch.tensor([10.0, 9.0, 8.0, 7.0, 6.0, 5.0])
    assert outlier_channels(Fixed(magnitudes)).tolist() == [10, 20, 30, 40]  # 64 / 16


def test_outlier_channels_finds_a_planted_channel(llama_folder):
    backend = pk.get_backend(f"scratch:{llama_folder}")
    model = backend.model  # type: ignore[attr-defined]
    assert outlier_channels(model).numel() == 0  # a random model has none
    with torch.no_grad():
        model.norm.weight[7] *= 50
    assert outlier_channels(model).tolist() == [7]
    assert torch.equal(outlier_channels(model), outlier_channels(model))  # seeded


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_reduced_models_get_the_row_quantized_head_where_it_runs(llama_folder, dtype):
    backend = pk.get_backend(f"scratch:{llama_folder}@{dtype}")
    head = backend.model.head  # type: ignore[attr-defined]
    assert isinstance(head, Int8Head) == row_quantized_products()
    ids = torch.randint(0, 200, (3, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = backend.model.logits(backend.model(ids))  # type: ignore[attr-defined]
    assert logits.dtype == torch.float32 and bool(logits.isfinite().all())


def test_where_the_product_does_not_run_the_head_is_weight_only(llama_folder, monkeypatch):
    monkeypatch.setattr(_reduce, "row_quantized_products", lambda: False)
    backend = pk.get_backend(f"scratch:{llama_folder}@int4")
    assert type(backend.model.head) is Int8Linear  # type: ignore[attr-defined]
    assert backend.cache_identity()["head"] == "int8"


def test_the_cache_identity_names_the_head(llama_folder):
    expected = "int8 per row" if row_quantized_products() else "int8"
    assert pk.get_backend(f"scratch:{llama_folder}@int4").cache_identity()["head"] == expected
    assert pk.get_backend(f"scratch:{llama_folder}").cache_identity()["head"] is None


@needs_row_products
def test_fbgemms_saturating_avx2_kernels_are_refused():
    """FBGEMM_ENABLE_INSTRUCTIONS=AVX2 makes FBGEMM take its AVX2 kernels, whose 16-bit pair
    sums saturate at full range: the check must see it (62 where 7,874 is exact)."""
    code = (
        "from promptkit.backends.scratch._int8_head import row_quantized_products\n"
        "print(row_quantized_products())"
    )
    env = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
