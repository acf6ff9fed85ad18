"""Shared set-up of the model benchmarks: the same random GPT-2 weights in both libraries."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from promptkit.backends.scratch._tokenizer import Tokenizer


def same_weights(n_layer: int = 12, n_embd: int = 768, n_head: int = 12) -> tuple[Any, Any]:
    """A random transformers GPT2LMHeadModel and our GPT holding exactly its weights."""
    import transformers

    from promptkit.backends.scratch._checkpoint import load_hf_gpt2

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        ours = load_hf_gpt2(Path(folder)).eval()
    return hf_model, ours


def call_times(function: Callable[[], object], count: int) -> list[float]:
    """Wall times of ``count`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(count):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return times


def best_time(function: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    return min(call_times(function, repeats))


def memory_bandwidth_gb_s() -> float:
    """Copy bandwidth of this machine, measured now (read + write of a 512 MB buffer)."""
    source = torch.ones(128 * 1024 * 1024)  # 512 MB of float32
    target = torch.empty_like(source)
    seconds = best_time(lambda: target.copy_(source))
    return 2 * source.numel() * 4 / seconds / 1e9


class IdsOnlyTokenizer(Tokenizer):
    """Decoding by ids needs no vocabulary; generate_ids never calls the tokenizer."""

    def __init__(self) -> None:
        self.eot_id = 50256
