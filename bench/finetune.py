"""Fine-tuned against few-shot on one held-out house task (issue 22, item 5).

    python bench/finetune.py [--backend SPEC] [--out DIR] [--epochs N] [--lora-epochs N]
                              [--lora-lr LR]

The task: bench/finetune/routing.prompty routes a customer message of a made-up outdoor-gear
shop to one of eight arbitrary house queue codes (KESTREL, MARLOW, ...). The data in
bench/finetune/data was written by hand by a helper that never saw promptkit's code: 200
training, 48 dev and 128 held-out test messages, disjoint (its README says more).

What it runs, as a user would (the CLI, in subprocesses):

1. ``promptkit finetune`` of the whole model (``--lora-rank 0``) and of a LoRA adapter
   (rank 8), each on the 200 training messages with the dev set for early stopping, bf16
   autocast; the wall time of each is measured around the command.
2. ``promptkit eval`` on the test set: the base model at 0, 1, 4 and 8 demonstrations drawn
   from the training messages (``--balanced``) beside both fine-tuned folders
   (``--vs-backend``), one report with McNemar's test against the best few-shot count.

Prints one line per figure, ending in ``ratio N.NNx``: each fine-tuned model's test accuracy
over the best few-shot accuracy (the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "finetune" / "routing.prompty"
DATA = HERE / "finetune" / "data"


def _run(command: list[str]) -> float:
    """Run a promptkit command, stopping the bench when it fails; its wall time in seconds."""
    print("$", " ".join(command), flush=True)
    began = time.perf_counter()
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}")
    return time.perf_counter() - began


def _finetune(backend: str, out: Path, rank: int, epochs: int, lr: float | None) -> float:
    rate = [] if lr is None else ["--lr", str(lr)]
    return _run(
        [
            "promptkit", "finetune", str(TEMPLATE),
            "--data", str(DATA / "train.jsonl"), "--dev", str(DATA / "dev.jsonl"),
            "--backend", backend, "--out", str(out), "--epochs", str(epochs),
            "--batch-size", "4", "--lora-rank", str(rank), "--precision", "bfloat16",
            "--seed", "0", *rate,
        ]
    )  # fmt: skip


def _trained(folder: Path) -> str:
    """The parameters trained, as the fine-tuned folder's record gives them."""
    for name, key in (("config.json", "finetune"), ("finetune.json", None)):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            record = data.get(key) if key else data
            if isinstance(record, dict) and "trainable_parameters" in record:
                share = record["trainable_parameters"] / record["parameters"]
                return f"{record['trainable_parameters']:,} parameters trained ({share:.2%})"
    return "parameters trained: see the folder's README"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="scratch:smollm2-135m-instruct")
    parser.add_argument("--out", default="bench-finetune-out")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lora-epochs", type=int, default=2)
    parser.add_argument("--lora-lr", type=float, default=3e-3, help="LoRA's peak learning rate")
    args = parser.parse_args()
    out = Path(args.out)
    full, lora = out / "full", out / "lora"
    seconds = {
        "full": _finetune(args.backend, full, 0, args.epochs, None),
        "lora": _finetune(args.backend, lora, 8, args.lora_epochs, args.lora_lr),
    }
    _run(
        [
            "promptkit", "eval", str(TEMPLATE), "--data", str(DATA / "test.jsonl"),
            "--pool", str(DATA / "train.jsonl"), "--balanced", "--shots", "0,1,4,8",
            "--backend", args.backend, "--vs-backend", f"scratch:{full}",
            "--vs-backend", f"scratch:{lora}", "--out", str(out / "compare"),
        ]
    )  # fmt: skip
    report = json.loads((out / "compare" / "report.json").read_text(encoding="utf-8"))
    (curve,) = report["templates"].values()
    best = max(curve, key=lambda r: (r["accuracy"], -r["shots"]))
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}; base {args.backend}; test items: {len(best['results'])}")
    for shot in curve:
        print(f"few-shot {shot['shots']} shots: {shot['accuracy']:.1%}")
    print(f"best few-shot ({best['shots']} shots): {best['accuracy']:.1%} (the baseline)")
    tuned_folders = (("full", full), ("lora", lora))
    for (kind, folder), run in zip(tuned_folders, report["vs_backends"], strict=True):
        tuned = next(r for r in run["reports"] if r["shots"] == run["finetuned_shots"])
        gain = (tuned["accuracy"] - best["accuracy"]) * 100
        ratio = tuned["accuracy"] / best["accuracy"] if best["accuracy"] else float("inf")
        print(
            f"{kind} fine-tune: {tuned['accuracy']:.1%} ({gain:+.1f} pts), trained in "
            f"{seconds[kind] / 60:.1f} min, {_trained(folder)} ratio {ratio:.2f}x"
        )
    for test in report["backend_comparisons"]:
        print(
            f"McNemar {test['backend']} vs {test['baseline']} at {test['baseline_shots']} shots: "
            f"only fine-tuned right {test['only_backend']}, only baseline right "
            f"{test['only_baseline']}, p = {test['p_value']:.3g}"
        )


if __name__ == "__main__":
    main()
