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
from promptkit.backends._base import Backend, Capabilities
from promptkit.cli import cli
from promptkit.errors import InputValidationError, UsageError
from promptkit.evaluate import (
    EvalItem,
    Report,
    ShotReport,
    evaluate,
    load_dataset,
    mcnemar,
    pool_from,
    write_report,
)

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


def test_a_gzipped_dataset_reads_like_a_plain_one(tmp_path):
    import gzip

    packed = tmp_path / "d.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"text": "fine", "expected": "positive"}\n'))
    assert load_dataset(packed, LABELS) == [EvalItem(1, {"text": "fine"}, "positive")]
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(InputValidationError, match="cannot read the dataset"):
        load_dataset(tmp_path / "broken.jsonl.gz", LABELS)


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
    assert [p.name for p in written] == ["report.json", "report.md", "accuracy.png", "report.html"]
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
    assert "24 model call(s) for 24 request(s) (0 from the cache)" in first.output
    assert "McNemar p =" in first.output
    replies.write_text("[]")  # any model call now would fail: no replies left
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "0 model call(s) for 24 request(s) (24 from the cache)" in again.output
    report = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert report.schema_version == "1" and report.method == "generate"
    assert set(report.templates) == {"sentiment", "sentiment_b"}
    assert len(report.comparisons) == 2
    first_item = report.templates["sentiment"][0].results[0]
    assert first_item.inputs == {"text": "review 0"} and first_item.expected == "negative"
    assert first_item.text == "positive" and first_item.prediction == "positive"
    assert not first_item.correct and first_item.attempts[0].text == "positive"
    bad = CliRunner().invoke(cli, [*args[:6], "--shots", "0,9"])
    assert bad.exit_code == 2 and "shots=9 but the pool has 4" in bad.output


def test_report_keeps_every_item_and_validates_against_the_schema(tmp_path):
    items = [
        EvalItem(1, {"s": "Ana is 3"}, Person(name="Ana", age=3)),
        EvalItem(2, {"s": "Bo is 5"}, Person(name="Bo", age=5)),
    ]
    backend = ScriptedBackend(
        ['{"name": "Ana", "age": 3}', "no idea", '{"name": "Bo", "age": "five"}'],
    )
    (report,) = evaluate(RECORDS, items, backend=backend, shots=[0], max_attempts=2)
    written = write_report(tmp_path, {"records": [report]}, backend="scripted", data="d.jsonl")
    text = written[0].read_text(encoding="utf-8")
    loaded = Report.model_validate_json(text)
    assert loaded.model_dump() == json.loads(text) == loaded.model_dump(mode="json")
    right, wrong = loaded.templates["records"][0].results
    assert (right.line, right.inputs, right.valid, right.correct) == (1, {"s": "Ana is 3"}, 1, 1)
    assert right.prediction == right.expected == {"name": "Ana", "age": 3}
    assert right.text == '{"name": "Ana", "age": 3}' and right.requests == 1
    assert right.prompt_tokens == right.attempts[0].prompt_tokens > 0
    # never validated: no prediction, but every raw answer and why it was refused is kept
    assert (wrong.valid, wrong.correct, wrong.prediction) == (False, False, None)
    assert [a.text for a in wrong.attempts] == ["no idea", '{"name": "Bo", "age": "five"}']
    assert wrong.text == '{"name": "Bo", "age": "five"}' and wrong.requests == 2
    assert all(a.error for a in wrong.attempts) and wrong.expected == {"name": "Bo", "age": 5}
    assert loaded.templates["records"][0].mean_attempts == 1.5


def test_a_report_that_breaks_the_schema_is_refused():
    from pydantic import ValidationError

    good = {
        "backend": "b",
        "data": "d",
        "method": "generate",
        "templates": {},
    }
    assert Report.model_validate(good).schema_version == "1"
    with pytest.raises(ValidationError, match="schema_version"):
        Report.model_validate({**good, "schema_version": "2"})
    with pytest.raises(ValidationError, match="extra"):
        Report.model_validate({**good, "surprise": 1})
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("`report.json` is defined once", 1)[1].split("```json\n", 1)[1]
    shots = json.loads(example.split("```", 1)[0])["templates"]["sentiment"][0]
    with pytest.raises(ValidationError, match="items is 2 but results holds 1"):
        ShotReport.model_validate({**shots, "items": 2})


class Scorer(Backend):
    """Scores a continuation higher the more often its word appears in the context."""

    def __init__(self, name: str = "scorer"):
        self.name = name
        self.capabilities = Capabilities(completion=True, loglikelihood=True)
        self.scored: list[tuple[str, str]] = []

    def _loglikelihood(self, context: str, continuation: str) -> float:
        self.scored.append((context, continuation))
        return -10.0 + context.count(continuation.strip())


def test_score_method_counts_requests_and_prompt_tokens():
    items = [
        EvalItem(1, {"text": "negative vibes"}, "negative"),
        EvalItem(2, {"text": "so positive"}, "positive"),
    ]
    backend = Scorer()
    (report,) = evaluate(LABELS, items, backend=backend, shots=[0], method="score")
    assert report.accuracy == 1.0 and report.requests == 2 and report.mean_attempts == 1.0
    first = report.results[0]
    rendered = LABELS.render({"text": "negative vibes"}, shots=0, style="completion")
    assert first.prompt_tokens == backend.count_tokens(rendered) > 0
    assert report.prompt_tokens == sum(r.prompt_tokens for r in report.results)
    assert first.text is None and first.attempts == [] and first.prediction == "negative"
    assert first.scores == {"positive": -9.0, "negative": -8.0}  # the labels are listed once


class ImpossibleScorer(Scorer):
    """Gives "positive" a log-probability of -inf (a label the model cannot produce)."""

    def _loglikelihood(self, context: str, continuation: str) -> float:
        return float("-inf") if "positive" in continuation else -3.0


def test_a_label_score_of_minus_infinity_survives_report_json(tmp_path):
    """JSON has no -inf: it is written as the string "-Infinity" (not null, which report.json's
    own schema refused when read back) and read back as -inf."""
    items = [EvalItem(1, {"text": "meh"}, "negative")]
    (report,) = evaluate(LABELS, items, backend=ImpossibleScorer(), shots=[0], method="score")
    written = write_report(tmp_path, {"labels": [report]}, backend="scorer", data="d.jsonl")
    text = written[0].read_text(encoding="utf-8")
    assert '"positive": "-Infinity"' in text
    loaded = Report.model_validate_json(text)
    assert loaded.templates["labels"][0].results[0].scores == {
        "positive": float("-inf"),
        "negative": -3.0,
    }


def test_cli_eval_score_counts_model_calls_on_an_empty_cache(tmp_path, monkeypatch):
    import promptkit.backends

    monkeypatch.setattr(promptkit.backends, "get_backend", lambda spec=None, **_: Scorer(spec))
    rows = [{"text": f"a {label} review", "expected": label} for label in ("positive", "negative")]
    data = write_jsonl(tmp_path / "data.jsonl", rows * 2)
    args = ["eval", "sentiment", "--data", str(data), "--method", "score", "--backend", "s"]
    args += ["--out", str(tmp_path / "out")]
    for _ in range(2):  # scoring is never answered from the cache
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "4 model call(s) for 4 request(s) (0 from the cache)" in result.output
    uncached = CliRunner().invoke(cli, [*args, "--no-cache"])
    assert uncached.exit_code == 0 and "4 model call(s) (no cache)" in uncached.output
    report = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    (shots,) = report.templates["sentiment"]
    assert report.method == "score" and shots.accuracy == 1.0
    assert shots.prompt_tokens > 0 and f"| {shots.prompt_tokens} |" in result.output


def test_the_readme_example_of_report_json_validates():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("`report.json` is defined once", 1)[1]
    example = section.split("```json\n", 1)[1].split("```", 1)[0]
    report = Report.model_validate_json(example)
    assert report.templates["sentiment"][0].results[0].attempts[0].text == " Positive"


def test_score_on_a_backend_that_cannot_score_fails_before_any_item():
    from promptkit.errors import UnsupportedCapabilityError

    backend = ScriptedBackend(["positive"])
    items = [EvalItem(1, {"text": "a"}, "positive")]
    with pytest.raises(UnsupportedCapabilityError, match="loglikelihood"):
        evaluate(LABELS, items, backend=backend, method="score")
    assert backend.requests == []


def test_plan_checks_templates_data_and_shots_before_any_backend(tmp_path):
    from promptkit.evaluate import plan_evaluation

    data = write_jsonl(tmp_path / "data.jsonl", [{"text": "fine", "expected": "positive"}] * 3)
    plan = plan_evaluation(["sentiment"], data, shots=[0, 2])
    assert plan.first[0] == "sentiment" and plan.shots == (0, 2) and plan.total == 6
    assert len(plan.pools["sentiment"]) == len(pk.load_prompt("sentiment").examples)
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"text": "ok", "expected": "positive"}])
    with pytest.raises(UsageError, match="shots=2 but the pool has 1"):
        plan_evaluation(["sentiment"], data, shots=[2], pool=pool)
    with pytest.raises(UsageError, match="the two templates have the same name"):
        plan_evaluation(["sentiment", "sentiment"], data, shots=[0])
    with pytest.raises(UsageError, match="evaluate one template, or two to compare; got 3"):
        plan_evaluation(["sentiment"] * 3, data, shots=[0])
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(InputValidationError, match=r"bad\.jsonl:1: no 'expected' field"):
        plan_evaluation(["sentiment"], tmp_path / "bad.jsonl", shots=[0])


def test_run_evaluation_pairs_two_templates_item_by_item(tmp_path):
    from promptkit.evaluate import plan_evaluation, run_evaluation

    rows = [{"text": f"review {i}", "expected": "positive"} for i in range(3)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    other = tmp_path / "other.prompty"
    source = Path(pk.load_prompt("sentiment").source).read_text()
    other.write_text(source.replace("name: sentiment", "name: sentiment_b"))
    plan = plan_evaluation(["sentiment", other], data, shots=[0])
    # the first template is right on every item, the second on none
    backend = ScriptedBackend(["positive"] * 3 + ["negative"] * 3)
    outcome = run_evaluation(plan, backend=backend, max_tokens=7)
    assert list(outcome.runs) == ["sentiment", "sentiment_b"]
    assert [r.accuracy for (r,) in outcome.runs.values()] == [1.0, 0.0]
    (comparison,) = outcome.comparisons
    assert (comparison.only_first, comparison.only_second) == (3, 0)
    assert {request.config.max_tokens for request in backend.requests} == {7}
    alone = plan_evaluation(["sentiment"], data, shots=[0])
    outcome = run_evaluation(alone, backend=ScriptedBackend(["positive"] * 3))
    assert outcome.runs["sentiment"][0].accuracy == 1.0
    assert outcome.comparisons == []


def test_compare_runs_needs_the_same_shot_counts():
    from promptkit.evaluate import compare_runs

    items = [EvalItem(1, {"text": "a"}, "positive")]
    one = evaluate(LABELS, items, backend=ScriptedBackend(["positive"] * 2), shots=[0, 1])
    other = evaluate(LABELS, items, backend=ScriptedBackend(["negative"]), shots=[1])
    with pytest.raises(UsageError, match="the same shot counts"):
        compare_runs(one, other)
    (comparison,) = compare_runs(one[1:], other)
    assert (comparison.shots, comparison.only_first, comparison.only_second) == (1, 1, 0)


def test_model_calls_note_counts_what_reached_the_model():
    from promptkit.evaluate import model_calls

    items = [EvalItem(1, {"text": "a"}, "positive")]
    runs = {
        "labels": evaluate(LABELS, items, backend=ScriptedBackend(["positive"] * 2), shots=[0, 1])
    }
    assert model_calls(runs, None, scoring=False) == "2 model call(s) (no cache)"
    assert (
        model_calls(runs, 1, scoring=False) == "1 model call(s) for 2 request(s) (1 from the cache)"
    )
    assert (
        model_calls(runs, 0, scoring=True) == "2 model call(s) for 2 request(s) (0 from the cache)"
    )
