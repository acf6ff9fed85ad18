"""The int8 output projection whose inputs are quantized to int8 per row (``_int8_head``): each
row on its own scale (the same logits alone or in any batch), planted outlier channels found
and kept out of the int8 product, repacked when its weights change, and put in by
``reduce_precision`` only where FBGEMM and AVX512-VNNI run it (the weight-only head elsewhere).
Tests of the product itself are skipped on a CPU without them, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
        assert relative_error(batch[row], expected[row]) < 0.02  # measured 0.005-0.007
        assert torch.equal(head.multiply(x[row : row + 1])[0], batch[row])


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
def test_the_head_is_packed_again_when_its_weights_change():
    base = weight_only()
    head = Int8Head(base, torch.tensor([5]))
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    before = head.multiply(x)
    with torch.no_grad():
        head.weight.neg_()
    assert torch.allclose(head.multiply(x), -before, rtol=1e-4, atol=1e-3)


def test_an_output_projection_with_a_bias_is_refused():
    with pytest.raises(ValueError, match="no bias"):
        Int8Head(Int8Linear(torch.randn(32, 64), torch.randn(32)), NONE)


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


def test_without_vnni_the_head_is_the_weight_only_kernel(llama_folder, monkeypatch):
    monkeypatch.setattr(_reduce, "row_quantized_products", lambda: False)
    backend = pk.get_backend(f"scratch:{llama_folder}@int4")
    assert type(backend.model.head) is Int8Linear  # type: ignore[attr-defined]
