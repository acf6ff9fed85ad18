"""Evaluation: datasets, demonstration pools, metrics, the paired test, reports and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

import promptkit as pk
from promptkit.backends import ScriptedBackend
from promptkit.cli import cli
from promptkit.errors import InputValidationError, UsageError
from promptkit.evaluate import EvalItem, evaluate, load_dataset, mcnemar, pool_from, write_report

LABELS = pk.Prompt(
    query="Review: {{ text }}\nSentiment:",
    output_type=Literal["positive", "negative"],
    examples=[pk.Example({"text": "good"}, "positive"), pk.Example({"text": "bad"}, "negative")],
    style="completion",
)


class Person(BaseModel):
    name: str
    age: int


RECORDS = pk.Prompt(query="Sentence: {{ s }}\nJSON:", output_type=Person, style="completion")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_lines_are_validated_with_their_line_number(tmp_path):
    good = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "expected": "positive"}])
    assert load_dataset(good, LABELS) == [EvalItem(1, {"text": "fine"}, "positive")]
    cases = [
        ('{"text": "a", "expected": "positive"}\n{oops\n', r"d\.jsonl:2: not valid JSON"),
        ('{"text": "a"}\n', r":1: no 'expected' field .* --expected-key"),
        ('{"txt": "a", "expected": "positive"}\n', r":1: invalid inputs: .*'text'"),
        ('{"text": "a", "expected": "meh"}\n', r":1: field 'expected' is not a valid output"),
        ("[1, 2]\n", r":1: expected a JSON object"),
        ("\n", r"has no items"),
    ]
    for text, message in cases:
        path = tmp_path / "d.jsonl"
        path.write_text(text)
        with pytest.raises(InputValidationError, match=message):
            load_dataset(path, LABELS)
    with pytest.raises(InputValidationError, match="cannot read the dataset"):
        load_dataset(tmp_path / "missing.jsonl", LABELS)


def test_metrics_per_shot_count():
    items = [
        EvalItem(1, {"text": "a"}, "positive"),
        EvalItem(2, {"text": "b"}, "negative"),
        EvalItem(3, {"text": "c"}, "negative"),
        EvalItem(4, {"text": "d"}, "positive"),
    ]
    # shots 0: right, wrong, invalid, right; shots 1: all right
    replies = ["positive", "positive", "???", "positive"]  # shots 0
    replies += ["positive", "negative", "negative", "positive"]  # shots 1
    backend = ScriptedBackend(replies)
    zero, one = evaluate(LABELS, items, backend=backend, shots=[0, 1])
    assert (zero.accuracy, zero.validity, zero.correct) == (0.5, 0.75, [True, False, False, True])
    assert zero.mean_attempts == 1.0 and zero.field_accuracy is None and zero.errors == []
    assert (one.shots, one.accuracy, one.validity) == (1, 1.0, 1.0)
    assert one.prompt_tokens > zero.prompt_tokens > 0  # one demonstration more per prompt


def test_records_get_field_accuracy():
    items = [EvalItem(1, {"s": "x"}, Person(name="Ana", age=3))]
    backend = ScriptedBackend(['{"name": "Ana", "age": 4}'])
    (report,) = evaluate(RECORDS, items, backend=backend, shots=[0])
    assert report.accuracy == 0.0 and report.field_accuracy == 0.5


def test_an_item_is_never_its_own_demonstration():
    items = [EvalItem(1, {"text": "alpha"}, "positive"), EvalItem(2, {"text": "beta"}, "negative")]
    backend = ScriptedBackend(["positive", "negative"])
    evaluate(LABELS, items, backend=backend, shots=[1], pool=pool_from(items))
    first, second = (request.prompt for request in backend.requests)
    assert first.count("alpha") == 1 and "beta" in first  # beta shown, alpha only as the query
    assert second.count("beta") == 1 and "alpha" in second


def test_shots_beyond_the_pool_are_refused():
    items = [EvalItem(1, {"text": "a"}, "positive")]
    with pytest.raises(UsageError, match="shots=3 but the pool has 2"):
        evaluate(LABELS, items, backend=ScriptedBackend([]), shots=[3])
    with pytest.raises(UsageError, match="pool is empty"):
        evaluate(LABELS, items, backend=ScriptedBackend([]), shots=[1], pool=[])


def test_mcnemar_exact_p_values():
    assert mcnemar([True] * 5 + [False], [False] * 5 + [False]).p_value == pytest.approx(0.0625)
    same = mcnemar([True, False, True], [True, False, True])
    assert (same.only_first, same.only_second, same.p_value) == (0, 0, 1.0)
    balanced = mcnemar([True, False], [False, True])
    assert balanced.p_value == 1.0
    with pytest.raises(UsageError):
        mcnemar([True], [True, False])


def test_report_files(tmp_path):
    items = [EvalItem(1, {"text": "a"}, "positive")]
    reports = evaluate(LABELS, items, backend=ScriptedBackend(["positive"] * 2), shots=[0, 2])
    written = write_report(tmp_path / "out", {"labels": reports}, backend="scripted", data="d")
    assert [p.name for p in written] == ["report.json", "report.md", "accuracy.png"]
    data = json.loads(written[0].read_text())
    assert data["templates"]["labels"][1]["accuracy"] == 1.0
    assert "| 2 | 100.0% |" in written[1].read_text()
    assert written[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_compares_templates_and_reruns_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    rows = [
        {"text": f"review {i}", "expected": "positive" if i % 2 else "negative"} for i in range(6)
    ]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    other = tmp_path / "other.prompty"
    other.write_text(
        Path(pk.load_prompt("sentiment").source)
        .read_text()
        .replace("name: sentiment", "name: sentiment_b")
        .replace("Decide whether", "Say whether")
    )
    replies = tmp_path / "replies.jsonl"
    replies.write_text("\n".join(json.dumps(r) for r in ["positive", "negative"] * 12))
    args = [
        "eval",
        "sentiment",
        "--data",
        str(data),
        "--backend",
        f"scripted:{replies}",
        "--shots",
        "0,2",
        "--out",
        str(tmp_path / "out"),
        "--vs",
        str(other),
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "24 model call(s)" in first.output and "McNemar p =" in first.output
    replies.write_text("[]")  # any model call now would fail: no replies left
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "0 model call(s)" in again.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["templates"]) == {"sentiment", "sentiment_b"}
    assert len(report["comparisons"]) == 2
    bad = CliRunner().invoke(cli, [*args[:6], "--shots", "0,9"])
    assert bad.exit_code == 2 and "shots=9 but the pool has 4" in bad.output
