"""Decoding speed of two git revisions of promptkit, alternated, on a noisy machine.

    promptkit pull smollm2
    python bench/revisions.py BEFORE [AFTER] [--dtype int4] [--batch 1] [--rounds 5]

Checks BEFORE (and AFTER; default: the working tree) out into temporary git worktrees and
runs the same measurement in a fresh process for each, alternating BEFORE, AFTER, BEFORE, ...
for ``--rounds`` rounds: SmolLM2-135M-Instruct on ``scratch:`` at ``--dtype``, a random prompt
of 64 tokens (the same every run) at ``--batch`` rows, greedy, the best of ``--repeats`` runs of
``--new`` tokens less one token's time. On a machine whose speed drifts by tens of percent
between runs, only the pairs of a round compare: the last line is the median of the paired
ratios. Each run also prints a checksum of the tokens it made, which must be the same on both
sides when the change is not meant to alter outputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import sys, time, torch
torch.set_num_threads({threads})
import promptkit as pk
from promptkit.backends import GenerationConfig
backend = pk.get_backend("scratch:smollm2-135m-instruct@{dtype}")
torch.manual_seed(0)
prompt = torch.randint(100, 40000, ({batch}, 64)).tolist()
def run(count):
    config = GenerationConfig(max_tokens=count)
    return backend.generate_ids(prompt, config, stop_at_end_of_text=False)[0]
run(4)
best = float("inf")
for _ in range({repeats}):
    began = time.perf_counter(); made = run({new}); whole = time.perf_counter() - began
    began = time.perf_counter(); run(1); first = time.perf_counter() - began
    best = min(best, (whole - first) / ({new} - 1))
print({batch} / best, sum(sum(row) for row in made))
"""


def measure(tree: Path, args: argparse.Namespace) -> tuple[float, int]:
    """Tokens per second and the tokens' checksum of one fresh process on ``tree``'s code."""
    code = MEASURE.format(
        threads=args.threads, dtype=args.dtype, batch=args.batch, repeats=args.repeats, new=args.new
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},  # that tree's promptkit, not the installed
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"the measurement failed on {tree}:\n{done.stderr[-2000:]}")
    rate, checksum = done.stdout.split()[-2:]
    return float(rate), int(checksum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before", help="a git revision (commit, branch, tag)")
    parser.add_argument("after", nargs="?", help="another revision (default: the working tree)")
    parser.add_argument("--dtype", default="int4")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--new", type=int, default=33)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        trees = []
        for name, revision in (("before", args.before), ("after", args.after)):
            if revision is None:
                trees.append((name, REPO))
                continue
            tree = Path(scratch) / name
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), revision],
                check=True,
            )
            trees.append((name, tree))
        try:
            ratios = []
            for round_ in range(1, args.rounds + 1):
                rates = {}
                for name, tree in trees:
                    rates[name], checksum = measure(tree, args)
                    print(f"round {round_} {name:6s} {rates[name]:6.1f} tok/s  tokens {checksum}")
                ratios.append(rates["after"] / rates["before"])
                print(f"round {round_} after / before: ratio {ratios[-1]:.2f}x")
            print(
                f"{args.dtype} batch {args.batch}, {len(ratios)} alternated rounds, median of the "
                f"paired ratios: ratio {statistics.median(ratios):.2f}x"
            )
        finally:
            for _, tree in trees:
                if tree != REPO:
                    subprocess.run(
                        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                        check=False,
                    )


if __name__ == "__main__":
    main()
