"""Multiple choice by likelihood: the shared context run once vs each full sequence scored alone.

    python bench/multiple_choice.py [--threads 2] [--context 400] [--choices 4]

Our GPT-2 small (random weights, float32). A 400-token context and 4 answers of 6-14 tokens.
Baseline: score each (context + answer) sequence in its own call, as a scorer without
prefix reuse does. Ours: ``score_choice_ids`` runs the context once, repeats its key/value cache
for every answer and runs only the answers' tokens. Prints both times, the ratio (target
>= 2x) and the largest difference between the two sets of scores (target <= 1e-5).
"""

from __future__ import annotations

import argparse

import torch
from common import IdsOnlyTokenizer, best_time

from promptkit.backends._local import LocalScoring
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch.gpt2 import GPT, PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=400)
    parser.add_argument("--choices", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backend = ScratchBackend(GPT(PRESETS["gpt2"]).eval(), IdsOnlyTokenizer())
    context = torch.randint(0, 50000, (args.context,)).tolist()
    answers = [
        torch.randint(0, 50000, (6 + 8 * i // max(args.choices - 1, 1),)).tolist()
        for i in range(args.choices)
    ]

    def separately() -> list[float]:
        return [backend.score_ids([(context, answer)])[0][0] for answer in answers]

    def shared() -> list[float]:
        return backend.score_choice_ids(context, answers)

    def batched_full() -> list[float]:
        return LocalScoring.score_choice_ids(backend, context, answers)

    difference = max(abs(a - b) for a, b in zip(separately(), shared(), strict=True))
    t_separate, t_shared, t_batched = (
        best_time(separately),
        best_time(shared),
        best_time(batched_full),
    )
    print(
        f"{args.threads} threads, GPT-2 small, context {args.context} tokens, {args.choices} "
        f"answers of {', '.join(str(len(a)) for a in answers)} tokens"
    )
    print(
        f"each sequence alone {t_separate * 1e3:7.1f} ms   all sequences in one batch "
        f"{t_batched * 1e3:7.1f} ms   shared context {t_shared * 1e3:7.1f} ms\n"
        f"ratio {t_separate / t_shared:.2f}x vs alone (target >= 2x), "
        f"{t_batched / t_shared:.2f}x vs one batch; largest score difference {difference:.2e} "
        "(target <= 1e-5)"
    )


if __name__ == "__main__":
    main()
