"""How often the code explainer finds a known bug (bench/acceptance/code_bugs.jsonl).

    python bench/code_bugs.py [--backend SPEC ...] [--threads 2]

24 small functions written by hand, each with one known bug (off-by-one, division by zero on
an empty input, a mutable default, a file never closed, ...); an item counts as found when the
answer's ``potential_issues`` mention one of its words (an ``icontains-any`` assertion, as
``promptkit eval`` checks it). The backends: SmolLM2-135M-Instruct (``scratch:``, pulled with
``promptkit pull smollm2``) and, when ``OPENAI_API_KEY`` is set, ``openai:gpt-4o-mini`` (else
that line says it was skipped). Prints one line per backend: the rate, valid answers and time.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import promptkit as pk
from promptkit.evaluate import evaluate, load_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "acceptance" / "code_bugs.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", action="append", help="a backend spec (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = args.backend or ["scratch:smollm2-135m-instruct", "openai:gpt-4o-mini"]
    prompt = pk.load_prompt(ROOT / "templates" / "code_explanation.prompty")
    items = load_dataset(DATA, prompt)
    for spec in specs:
        if spec.startswith(("openai:", "azure:")) and not os.environ.get("OPENAI_API_KEY"):
            print(f"{spec}: skipped (no OPENAI_API_KEY)")
            continue
        began = time.perf_counter()
        (report,) = evaluate(prompt, items, backend=pk.get_backend(spec))
        print(
            f"{spec}: bug found {report.assertion_pass_rates.get('bug found', 0):.1%} of "
            f"{report.items}, valid {report.validity:.0%}, {time.perf_counter() - began:.0f} s"
        )


if __name__ == "__main__":
    main()
