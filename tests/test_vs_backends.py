"""Backends side by side (``promptkit eval --vs-backend SPEC``): a fine-tuned folder's recorded
shot count, the best few-shot baseline against each other backend (McNemar), and the report's
JSON, Markdown and one chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner

import promptkit as pk
from promptkit.backends import ScriptedBackend
from promptkit.cli import cli
from promptkit.errors import UsageError
from promptkit.evaluate import EvalItem, Report, evaluate, plan_evaluation, write_report
from promptkit.evaluate._schema import BackendRun
from promptkit.evaluate._vs_backends import (
    backend_lines,
    compare_backends,
    finetune_record,
    plan_vs_backends,
    vs_shots,
)

LABELS = pk.Prompt(
    query="Review: {{ text }}\nSentiment:",
    output_type=Literal["positive", "negative"],
    examples=[pk.Example({"text": "good"}, "positive"), pk.Example({"text": "bad"}, "negative")],
    style="completion",
)


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ITEMS = [EvalItem(i + 1, {"text": f"r{i}"}, "positive" if i % 2 else "negative") for i in range(6)]


def fine_tuned_folder(root: Path, shots: int, *, hf: bool = False) -> Path:
    """A folder as `promptkit finetune` leaves it, as far as the shot count goes."""
    root.mkdir(parents=True)
    if hf:
        (root / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        (root / "finetune.json").write_text(json.dumps({"shots": shots}))
    else:
        (root / "config.json").write_text(json.dumps({"format": "x", "finetune": {"shots": shots}}))
    return root


def test_a_fine_tuned_folder_runs_at_its_recorded_shots_unless_shots_are_given(tmp_path):
    scratch = fine_tuned_folder(tmp_path / "s", 2)
    hf = fine_tuned_folder(tmp_path / "h", 1, hf=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert finetune_record(f"scratch:{scratch}") == {"shots": 2}
    assert finetune_record(f"hf:{hf}") == {"shots": 1}
    assert finetune_record(f"scratch:{plain}") is None
    assert finetune_record(f"openai:{scratch}") is None  # only local kinds write such folders
    assert finetune_record("scripted") is None
    assert vs_shots(f"scratch:{scratch}", [0, 1, 4], shots_given=False) == ((2,), 2)
    assert vs_shots(f"scratch:{scratch}", [0, 1, 4], shots_given=True) == ((0, 1, 4), 2)
    assert vs_shots(f"scratch:{plain}", [0, 1], shots_given=False) == ((0, 1), None)


def test_a_recorded_shot_count_beyond_the_pool_is_refused_before_anything_runs(tmp_path):
    template = tmp_path / "t.prompty"
    template.write_text(
        "---\nname: t\nmodel:\n  api: completion\ninputs:\n  text:\n    type: string\n"
        "output:\n  labels: [positive, negative]\nexamples:\n"
        "  - input: {text: good}\n    output: positive\n---\nReview: {{ text }}\n"
    )
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "expected": "positive"}])
    plan = plan_evaluation([template], data, shots=[0])
    tuned = fine_tuned_folder(tmp_path / "tuned", 3)
    with pytest.raises(UsageError, match="shots=3 but the pool has 1"):
        plan_vs_backends(plan, [f"scratch:{tuned}"], shots_given=False)


def test_the_best_few_shot_baseline_is_compared_with_each_backend():
    base = ScriptedBackend(["negative", "negative"] * 3 + ["negative", "positive"] * 3)
    baseline = evaluate(LABELS, ITEMS, backend=base, shots=(0, 1))
    assert [r.accuracy for r in baseline] == [0.5, 1.0]
    tuned = ScriptedBackend(["positive"] * 6, name="scratch:tuned")
    (report,) = evaluate(LABELS, ITEMS, backend=tuned, shots=(0,))
    run = BackendRun(backend="scratch:tuned", finetuned_shots=0, reports=[report])
    (comparison,) = compare_backends("base", baseline, [run])
    assert (comparison.baseline_shots, comparison.shots) == (1, 0)  # the best: 1 shot
    assert (comparison.only_baseline, comparison.only_backend) == (3, 0)
    assert comparison.p_value == pytest.approx(0.25)
    lines, levels = backend_lines([run])
    assert lines == {} and levels == {"scratch:tuned (fine-tuned, 0 shots)": 0.5}


def test_the_report_puts_other_backends_beside_the_base_curve(tmp_path):
    base = ScriptedBackend(["negative"] * 12)
    baseline = evaluate(LABELS, ITEMS, backend=base, shots=(0, 1))
    (report,) = evaluate(LABELS, ITEMS, backend=ScriptedBackend(["positive"] * 6), shots=(0,))
    run = BackendRun(backend="scratch:tuned", finetuned_shots=0, reports=[report])
    comparisons = compare_backends("scripted", baseline, [run])
    written = write_report(
        tmp_path,
        {"labels": baseline},
        backend="scripted",
        data="d.jsonl",
        vs_backends=[run],
        backend_comparisons=comparisons,
    )
    saved = Report.model_validate_json((tmp_path / "report.json").read_text())
    assert saved.vs_backends == [run] and saved.backend_comparisons == comparisons
    text = (tmp_path / "report.md").read_text()
    assert "### scratch:tuned (fine-tuned with 0 shots)" in text
    assert "| scripted | 0 | scratch:tuned | 0 | 3 | 3 | 1 |" in text
    assert written[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text()  # the other backend is a column of the page
    assert "<th>scratch:tuned · labels · 0 shots</th>" in page
    assert "<td>scratch:tuned</td>" in page and 'id="backend-comparisons"' in page
    assert "<td>scripted · 0 shots</td><td>scratch:tuned · 0 shots</td>" in page
    # an older report (no such fields) still reads
    data = json.loads((tmp_path / "report.json").read_text())
    del data["vs_backends"], data["backend_comparisons"]
    assert Report.model_validate(data).vs_backends == []


def test_cli_eval_vs_backend_runs_each_backend_and_compares(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    rows = [
        {"text": f"review {i}", "expected": "positive" if i % 2 else "negative"} for i in range(6)
    ]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    base = tmp_path / "base.jsonl"
    base.write_text(json.dumps(["negative"] * 6 + ["negative", "positive"] * 3))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(["positive"] * 12))
    # no cache: every scripted backend has the same cache identity (its name), whatever its file
    args = ["eval", "sentiment", "--data", str(data), "--backend", f"scripted:{base}", "--no-cache"]
    args += ["--shots", "0,2", "--out", str(tmp_path / "out"), "--vs-backend", f"scripted:{other}"]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    report = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    (run,) = report.vs_backends
    assert [r.shots for r in run.reports] == [0, 2] and run.finetuned_shots is None
    (comparison,) = report.backend_comparisons
    assert comparison.baseline_shots == 2 and comparison.shots == 0  # each one's best
    assert "Best few-shot vs the other backends" in done.output
    both = CliRunner().invoke(cli, [*args, "--vs", "sentiment"])
    assert both.exit_code == 2 and "give one of them" in both.output
