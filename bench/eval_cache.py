"""A cached rerun of an evaluation vs the first run, same 200 items, same model.

    python bench/eval_cache.py [--threads 2] [--items 200]

The bundled ``sentiment`` template (2 shots, constrained to its labels) on 200 generated
reviews, our GPT-2 small with random weights (float32, CPU), GPT-2's tokenizer from
../shared/data. The first run fills a fresh response cache; the rerun answers every request
from it. Prints both times, the ratio (target >= 50x) and the model calls of the rerun (0).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

import promptkit as pk
from promptkit import CachedBackend, ResponseCache
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.backends.scratch.gpt2 import GPT, PRESETS
from promptkit.evaluate import EvalItem, evaluate

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"
WORDS = ["great", "awful", "slow", "warm", "boring", "moving", "cheap", "bright", "cold", "kind"]
NOUNS = ["film", "meal", "service", "book", "hotel", "concert", "game", "class", "show", "car"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--items", type=int, default=200)
    args = parser.parse_args()
    if not (TOKENIZER / "tokenizer.json").is_file():
        sys.exit(f"needs GPT-2's tokenizer in {TOKENIZER}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ScratchBackend(GPT(PRESETS["gpt2"]).eval(), Tokenizer.from_folder(TOKENIZER))
    prompt = pk.load_prompt("sentiment")
    rng = random.Random(0)
    items = [
        EvalItem(
            i + 1,
            {"text": f"Review {i}: {rng.choice(WORDS)} {rng.choice(NOUNS)}, {rng.choice(WORDS)}."},
            rng.choice(["positive", "negative"]),
        )
        for i in range(args.items)
    ]
    with tempfile.TemporaryDirectory() as folder:
        backend = CachedBackend(model, ResponseCache(Path(folder) / "cache.sqlite"))
        timings = []
        for _ in range(2):
            began = time.perf_counter()
            calls = backend.calls
            (report,) = evaluate(prompt, items, backend=backend, shots=[2])
            timings.append((time.perf_counter() - began, backend.calls - calls, report.validity))
    (first, first_calls, valid), (again, again_calls, _) = timings
    print(
        f"{args.threads} threads, GPT-2 small (random weights), {args.items} items, sentiment "
        f"template, 2 shots (validity {valid:.0%})\n"
        f"first run {first:.1f} s ({first_calls} model calls)   cached rerun {again:.3f} s "
        f"({again_calls} model calls)   ratio {first / again:.0f}x (target >= 50x)"
    )


if __name__ == "__main__":
    main()
