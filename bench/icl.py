"""In-context learning of promptkit-mini: accuracy against shots on held-out tasks.

    python bench/icl.py [--backend scratch] [--out docs]

Held-out evaluation sets from ``promptkit.training.write_eval_tasks`` (made-up label words,
phrasings, names and cities that the training corpus never contains):

- demonstration-defined classification, 32 tasks and their mirrors (the two label words
  exchanged): the label words mean something only through the demonstrations, so 0 shots is
  chance (50%) on average over a task and its mirror; shots 0, 1, 2, 4, 8 (label-balanced), each
  answered two ways: generated under constrained decoding (what ``prompt.run`` does) and
  chosen by likelihood (``prompt.classify``, ``promptkit eval --method score``);
- the bundled ``extract`` template on 50 sentences about held-out people, constrained decoding:
  validity and the share of fields right, shots 0, 1, 2; as bundled (``name`` and ``city`` are
  spans of the text, ``x-span-of``) and, to show what the spans add, with that keyword taken
  out (the record's JSON schema only).

The same as running ``promptkit eval`` on each file (this script averages the classification
tasks and draws one plot). Writes ``icl.png`` and ``icl.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from pathlib import Path
from typing import Literal

import promptkit as pk
from promptkit import Selection
from promptkit.evaluate import ShotReport, evaluate, load_dataset
from promptkit.training._evalsets import write_eval_tasks

SHOTS = [0, 1, 2, 4, 8]
# 32 tasks and their mirrors: with no demonstrations each task lands far from 50% one way or
# the other (the model sorts the words into their groups but can only guess which made-up word
# names which group), so the mean over 8 tasks is too noisy to show where chance is
TASKS = 32
Method = Literal["generate", "score"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="scratch")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    backend = pk.get_backend(args.backend)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        write_eval_tasks(folder, tasks=TASKS)
        classify: dict[Method, list[list[ShotReport]]] = {"generate": [], "score": []}
        for template in sorted(Path(folder).glob("classify-*.prompty")):
            prompt = pk.load_prompt(template)
            items = load_dataset(template.with_suffix(".jsonl"), prompt)
            for method, reports in classify.items():
                reports.append(
                    evaluate(
                        prompt,
                        items,
                        backend=backend,
                        shots=SHOTS,
                        select=Selection(balanced=True),
                        method=method,
                    )
                )
        extract = pk.load_prompt("extract")
        people = load_dataset(Path(folder) / "extract.jsonl", extract)
        records = evaluate(extract, people, backend=backend, shots=[0, 1, 2])
        source = pk.bundled_templates()["extract"].read_text(encoding="utf-8")
        plain_file = Path(folder) / "extract-no-spans.prompty"
        plain_file.write_text(
            re.sub(r"\n *x-span-of: text(?=\n)", "", source.replace(", x-span-of: text", "")),
            encoding="utf-8",
        )
        plain = pk.load_prompt(plain_file)
        assert "x-span-of" not in json.dumps(plain.output.schema), "spans were not removed"
        plain_people = load_dataset(Path(folder) / "extract.jsonl", plain)  # its own type
        plain_records = evaluate(plain, plain_people, backend=backend, shots=[0, 1, 2])
    accuracy = {
        method: [statistics.mean(task[i].accuracy for task in tasks) for i in range(len(SHOTS))]
        for method, tasks in classify.items()
    }
    print(f"backend {backend.name}")
    for method, tasks in classify.items():
        print(
            f"held-out demonstration-defined classification, {method} ({len(tasks)} tasks: "
            f"{TASKS} and their mirrors, 2 labels, chance 50%):"
        )
        for index, shots in enumerate(SHOTS):
            per_task = sorted(task[index].accuracy for task in tasks)
            print(
                f"  {shots} shots: {accuracy[method][index]:.1%}  (per task: lowest "
                f"{per_task[0]:.0%}, median {statistics.median(per_task):.0%}, highest "
                f"{per_task[-1]:.0%}; {sum(a >= 0.8 for a in per_task)} of {len(tasks)} >= 80%)"
            )
    for title, reports in (("as bundled", records), ("without spans", plain_records)):
        print(f"extract on held-out sentences (constrained decoding), {title}:")
        for report in reports:
            print(
                f"  {report.shots} shots: valid {report.validity:.0%}, fields right "
                f"{report.field_accuracy or 0:.1%}, records exactly right {report.accuracy:.1%}"
            )
    summary: dict[str, object] = {
        "backend": backend.name,
        "classify": {"shots": SHOTS, "accuracy": accuracy},
        "extract": [r.row() for r in records],
        "extract_without_spans": [r.row() for r in plain_records],
    }
    (out / "icl.json").write_text(json.dumps(summary, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    axes.plot(
        SHOTS, accuracy["generate"], marker="o", label="made-up labels: generated (constrained)"
    )
    axes.plot(SHOTS, accuracy["score"], marker="^", label="made-up labels: by likelihood")
    axes.plot(
        [r.shots for r in records],
        [r.field_accuracy or 0 for r in records],
        marker="s",
        label="extract: fields right (constrained, spans)",
    )
    axes.plot(
        [r.shots for r in plain_records],
        [r.field_accuracy or 0 for r in plain_records],
        marker="x",
        linestyle="--",
        label="extract: fields right (JSON schema only)",
    )
    axes.axhline(0.5, color="grey", linestyle=":", label="chance (2 labels)")
    axes.set_xlabel("demonstrations in the prompt (shots)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.02)
    axes.set_xticks(SHOTS)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title(f"In-context learning: {backend.name}", fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "icl.png")
    print(f"wrote {out / 'icl.png'} and {out / 'icl.json'}")


if __name__ == "__main__":
    main()
