"""Assertions per eval item (promptfoo's vocabulary): specs checked when the data loads, each
type's verdict, ``not-``, weights and thresholds, ``field`` on record outputs, python code in
the sandbox, llm-rubric graded through the run loop, pass rates in the reports and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

import promptkit as pk
from promptkit.cli import cli
from promptkit.errors import ConfigurationError, InputValidationError, UsageError
from promptkit.evaluate import (
    Report,
    Sandbox,
    SandboxLimits,
    evaluate,
    load_dataset,
    markdown,
    plan_evaluation,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
Label = Literal["positive", "negative"]


class Review(BaseModel):
    summary: str
    issues: list[str]
    meta: dict[str, Any] = {}


def text_prompt() -> pk.Prompt[str]:
    return pk.Prompt(query="{{ text }}")


def record_prompt() -> pk.Prompt[Review]:
    return pk.Prompt(query="{{ text }}", output_type=Review)


def write_lines(path: Path, *lines: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def run_one(
    tmp_path: Path,
    assertions: list[dict[str, Any]],
    reply: str,
    prompt: pk.Prompt[Any] | None = None,
    **line: Any,
) -> Any:
    """Evaluate one item with ``assertions`` on the scripted ``reply``; its ItemResult."""
    prompt = prompt or text_prompt()
    data = write_lines(tmp_path / "data.jsonl", {"text": "t", "assert": assertions, **line})
    items = load_dataset(data, prompt)
    reports = evaluate(prompt, items, backend=pk.backends.ScriptedBackend([reply]))
    return reports[0].results[0]


# -- loading ------------------------------------------------------------------------------


def test_a_line_may_give_assertions_instead_of_the_expected_output(tmp_path):
    data = write_lines(
        tmp_path / "d.jsonl",
        {"text": "a", "assert": [{"type": "contains", "value": "x"}]},
        {"text": "b", "expected": "y"},
    )
    first, second = load_dataset(data, text_prompt())
    assert (first.has_expected, first.expected, first.inputs) == (False, None, {"text": "a"})
    assert first.assertions[0].type == "contains" and first.assertions[0].value == "x"
    assert (second.has_expected, second.expected, second.assertions) == (True, "y", ())


def test_a_line_with_neither_expected_nor_assertions_is_refused(tmp_path):
    data = write_lines(tmp_path / "d.jsonl", {"text": "a"})
    with pytest.raises(InputValidationError, match=r"d\.jsonl:1: no 'expected' field .*no assert"):
        load_dataset(data, text_prompt())


def test_demonstration_pools_still_need_the_expected_output(tmp_path):
    pool = write_lines(tmp_path / "pool.jsonl", {"text": "a", "assert": [{"type": "is-json"}]})
    data = write_lines(tmp_path / "d.jsonl", {"text": "b", "expected": "y"})
    with pytest.raises(InputValidationError, match=r"pool\.jsonl:1: no 'expected' field"):
        plan_evaluation([ROOT / "templates" / "summarize.prompty"], data, shots=[0], pool=pool)


BAD_SPECS = [
    ({"type": "contains-some", "value": "x"}, "unknown assertion type; use one of equals"),
    ({"type": "contains", "value": "x", "transform": "output.upper()"}, "transform: Extra inputs"),
    ({"value": "x"}, "type: Field required"),
    ({"type": "contains", "value": ["x"]}, "'value' must be a non-empty string"),
    ({"type": "icontains-any", "value": []}, "'value' must be a non-empty list"),
    ({"type": "icontains-any", "value": ["a", 3]}, "'value' must be a non-empty list"),
    ({"type": "equals"}, "'value' is required"),
    ({"type": "regex", "value": "(unclosed"}, "not a valid regular expression"),
    ({"type": "is-json", "value": "object"}, "must be a JSON schema"),
    ({"type": "is-json", "value": {"type": "string", "format2": 1}}, "not a usable JSON schema"),
    ({"type": "python", "value": "output ==="}, "is not valid Python"),
    ({"type": "llm-rubric", "value": ""}, "'value' must be a non-empty string"),
    ({"type": "contains", "value": "x", "weight": -1}, "weight: Input should be greater"),
    ({"type": "contains", "value": "x", "field": "summary"}, "'field' needs a record output"),
    ("contains", "expected an object with a 'type'"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS)
def test_a_bad_assertion_is_refused_naming_file_line_and_assertion(tmp_path, spec, message):
    good = {"type": "contains", "value": "ok"}
    data = write_lines(
        tmp_path / "d.jsonl",
        {"text": "a", "expected": "b"},
        {"text": "a", "assert": [good, spec]},
    )
    with pytest.raises(InputValidationError) as caught:
        load_dataset(data, text_prompt())
    text = str(caught.value)
    assert "d.jsonl:2: assertion 2" in text and message in text
    if isinstance(spec, dict) and "type" in spec:
        assert repr(spec["type"]) in text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"assert": "contains x"}, "'assert' must be a non-empty list"),
        ({"assert": []}, "'assert' must be a non-empty list"),
        ({"assert": [{"type": "is-json"}], "threshold": "high"}, "'threshold' .* finite number"),
        ({"assert": [{"type": "is-json"}], "threshold": float("nan")}, "'threshold' .* got nan"),
        ({"threshold": 0.5, "expected": "b"}, "'threshold' .* needs an 'assert' list"),
        ({"assert": [{"type": "is-json"}], "metadata": [1]}, "'metadata' .* must be an object"),
    ],
)
def test_bad_assertion_lists_thresholds_and_metadata_are_refused(tmp_path, line, message):
    data = write_lines(tmp_path / "d.jsonl", {"text": "a", **line})
    with pytest.raises(InputValidationError, match=r"d\.jsonl:1: " + message):
        load_dataset(data, text_prompt())


def test_field_must_name_a_field_of_the_record_output(tmp_path):
    data = write_lines(
        tmp_path / "d.jsonl",
        {"text": "a", "assert": [{"type": "contains", "value": "x", "field": "issuez"}]},
    )
    with pytest.raises(
        InputValidationError, match="no field 'issuez'; its fields: summary, issues"
    ):
        load_dataset(data, record_prompt())


# -- verdicts -----------------------------------------------------------------------------

CHECKS = [
    ({"type": "equals", "value": "Paris"}, "Paris", True),
    ({"type": "equals", "value": "Paris"}, "Paris.", False),
    ({"type": "equals", "value": {"a": [1, 2]}}, '{"a": [1, 2]}', True),
    ({"type": "equals", "value": {"a": [1, 2]}}, '{"a": [2, 1]}', False),
    ({"type": "contains", "value": "Par"}, "It is Paris", True),
    ({"type": "contains", "value": "par"}, "It is Paris", False),
    ({"type": "icontains", "value": "PARIS"}, "It is Paris", True),
    ({"type": "contains-all", "value": ["It", "Paris"]}, "It is Paris", True),
    ({"type": "contains-all", "value": ["It", "Lyon"]}, "It is Paris", False),
    ({"type": "contains-any", "value": ["Lyon", "Paris"]}, "It is Paris", True),
    ({"type": "contains-any", "value": ["Lyon", "paris"]}, "It is Paris", False),
    ({"type": "icontains-all", "value": ["it", "PARIS"]}, "It is Paris", True),
    ({"type": "icontains-any", "value": ["lyon", "PARIS"]}, "It is Paris", True),
    ({"type": "icontains-any", "value": ["lyon", "nice"]}, "It is Paris", False),
    ({"type": "regex", "value": r"\d{4}-\d\d"}, "on 2024-05", True),
    ({"type": "regex", "value": r"^\d"}, "on 2024-05", False),
    ({"type": "is-json"}, '{"a": 1}', True),
    ({"type": "is-json"}, "```json\n{}\n```", False),
    ({"type": "not-contains", "value": "Lyon"}, "It is Paris", True),
    ({"type": "not-contains", "value": "Paris"}, "It is Paris", False),
    ({"type": "not-equals", "value": "Paris"}, "Lyon", True),
    ({"type": "not-icontains-any", "value": ["PARIS"]}, "It is Paris", False),
]


@pytest.mark.parametrize(("spec", "reply", "passed"), CHECKS)
def test_each_assertion_type_reads_the_raw_answer(tmp_path, spec, reply, passed):
    result = run_one(tmp_path, [spec], reply)
    (checked,) = result.assertions
    assert (checked.type, checked.passed, checked.score) == (spec["type"], passed, float(passed))
    assert checked.value == spec.get("value") and checked.weight == 1.0 and checked.reason
    assert result.correct is passed and result.expected is None


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name"],
}


@pytest.mark.parametrize(
    ("reply", "passed", "reason"),
    [
        ('{"name": "Ada", "age": 36}', True, "matching the schema"),
        ('{"age": 36}', False, "name: Field required"),
        ('{"name": "Ada", "age": "36"}', False, "age: Input should be a valid integer"),
        ('{"name": "Ada", "age": -1}', False, "age: Input should be greater than or equal"),
        ("Ada, 36", False, "not JSON"),
    ],
)
def test_is_json_with_a_schema_checks_the_json_against_it(tmp_path, reply, passed, reason):
    (checked,) = run_one(tmp_path, [{"type": "is-json", "value": SCHEMA}], reply).assertions
    assert checked.passed is passed and reason in checked.reason


def test_the_reasons_say_what_was_found_or_missing(tmp_path):
    spec = {"type": "icontains-all", "value": ["paris", "lyon", "nice"]}
    (checked,) = run_one(tmp_path, [spec], "Paris or Nice").assertions
    assert checked.reason == "missing ['lyon']"
    spec = {"type": "not-contains", "value": "Paris"}
    (checked,) = run_one(tmp_path, [spec], "Paris").assertions
    assert (checked.passed, checked.score) == (False, 0.0)
    assert checked.reason == "inverted (not-contains): found ['Paris']"


def test_correct_needs_the_expected_output_and_the_assertions(tmp_path):
    prompt = pk.Prompt(query="{{ text }}", output_type=Label)
    contains_pos = [{"type": "contains", "value": "pos"}]
    data = write_lines(
        tmp_path / "d.jsonl",
        {"text": "1", "expected": "positive", "assert": contains_pos},
        {"text": "2", "expected": "negative", "assert": contains_pos},
        {"text": "3", "expected": "positive", "assert": [{"type": "contains", "value": "neg"}]},
        {"text": "4", "expected": "positive"},
    )
    replies = ["positive", "positive", "positive", "positive"]
    (report,) = evaluate(
        prompt, load_dataset(data, prompt), backend=pk.backends.ScriptedBackend(replies)
    )
    assert report.correct == [True, False, False, True]
    assert [len(r.assertions) for r in report.results] == [1, 1, 1, 0]
    assert report.accuracy == 0.5
    assert report.assertion_pass_rates == {"contains": 2 / 3}


def test_weight_zero_is_reported_only_and_threshold_takes_the_weighted_score(tmp_path):
    failing_free = [
        {"type": "contains", "value": "a"},
        {"type": "contains", "value": "zzz", "weight": 0},
    ]
    result = run_one(tmp_path, failing_free, "abc")
    assert [a.passed for a in result.assertions] == [True, False] and result.correct
    weighted = [
        {"type": "contains", "value": "a", "weight": 3},
        {"type": "contains", "value": "zzz", "weight": 1},
    ]
    assert not run_one(tmp_path, weighted, "abc").correct  # no threshold: all must pass
    assert run_one(tmp_path, weighted, "abc", threshold=0.75).correct  # 3/4 reaches 0.75
    assert not run_one(tmp_path, weighted, "abc", threshold=0.8).correct


def test_pass_rates_are_keyed_by_metric_else_type(tmp_path):
    prompt = text_prompt()
    data = write_lines(
        tmp_path / "d.jsonl",
        *(
            {
                "text": str(n),
                "assert": [
                    {"type": "icontains", "value": "yes", "metric": "said yes"},
                    {"type": "not-contains", "value": "!"},
                ],
            }
            for n in range(4)
        ),
    )
    replies = ["yes", "Yes!", "no", "YES"]
    (report,) = evaluate(
        prompt, load_dataset(data, prompt), backend=pk.backends.ScriptedBackend(replies)
    )
    assert report.assertion_pass_rates == {"not-contains": 0.75, "said yes": 0.75}
    assert report.correct == [True, False, False, True]


# -- field: one field of a record output ---------------------------------------------------

REVIEW = json.dumps(
    {
        "summary": "Sums ratings.",
        "issues": ["Raises ZeroDivisionError on an empty list", "slow"],
        "meta": {"tags": ["math"]},
    }
)


@pytest.mark.parametrize(
    ("spec", "passed"),
    [
        ({"type": "icontains-any", "value": ["division", "empty"], "field": "issues"}, True),
        ({"type": "icontains-any", "value": ["sums"], "field": "issues"}, False),
        ({"type": "icontains", "value": "sums", "field": "summary"}, True),
        ({"type": "equals", "value": "slow", "field": "issues.1"}, True),
        ({"type": "equals", "value": ["math"], "field": "meta.tags"}, True),
        ({"type": "contains", "value": "\\n", "field": "issues"}, False),  # lines, not JSON
    ],
)
def test_field_reads_one_field_of_the_validated_record(tmp_path, spec, passed):
    (checked,) = run_one(tmp_path, [spec], REVIEW, record_prompt()).assertions
    assert checked.passed is passed, checked.reason


def test_field_of_an_answer_that_never_validated_fails_saying_why(tmp_path):
    specs = [
        {"type": "contains", "value": "x", "field": "issues"},
        {"type": "not-contains", "value": "x", "field": "issues"},
        {"type": "contains", "value": "not json"},
    ]
    result = run_one(tmp_path, specs, "not json at all", record_prompt())
    assert not result.valid and result.text == "not json at all"
    first, negated, raw = result.assertions
    assert not first.passed and "no answer validated, so it has no field 'issues'" in first.reason
    assert not negated.passed  # could not be checked: fails whatever the not- prefix
    assert raw.passed  # the raw text is still there to read


def test_a_missing_nested_field_fails_saying_where(tmp_path):
    spec = {"type": "contains", "value": "x", "field": "meta.owner"}
    (checked,) = run_one(tmp_path, [spec], REVIEW, record_prompt()).assertions
    assert not checked.passed and "the output has no 'meta.owner'" in checked.reason


# -- python -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    box = Sandbox(SandboxLimits(timeout_s=3.0, cpu_s=2))
    try:
        box.check()
    except ConfigurationError as exc:
        pytest.skip(f"no isolation on this machine: {exc}")
    return box


def test_python_assertions_run_in_the_sandbox(tmp_path, sandbox):
    prompt = text_prompt()
    specs = [
        {"type": "python", "value": "output.startswith('Par') and context['vars']['text'] == 'T'"},
        {
            "type": "python",
            "value": "n = len(output)\n"
            "return {'pass': n < 3, 'score': 0.25, 'reason': f'{n} chars'}",
        },
        {"type": "python", "value": "len(output) / 10", "threshold": 0.5, "metric": "long"},
        {"type": "python", "value": "0"},
        {"type": "python", "value": "float('nan')"},
        {"type": "not-python", "value": "'Lyon' in output"},
        {"type": "python", "value": f"import os\nreturn os.path.exists({str(tmp_path)!r})"},
    ]
    data = write_lines(tmp_path / "d.jsonl", {"text": "T", "assert": specs})
    (report,) = evaluate(
        prompt,
        load_dataset(data, prompt),
        backend=pk.backends.ScriptedBackend(["Paris"]),
        sandbox=sandbox,
    )
    results = report.results[0].assertions
    assert [(r.passed, r.score) for r in results] == [
        (True, 1.0),
        (False, 0.25),
        (True, 0.5),
        (False, 0.0),
        (False, 0.0),  # not a finite score
        (True, 1.0),
        (False, 0.0),  # the sandbox sees nothing of this machine's files
    ]
    assert results[1].reason == "5 chars"
    assert report.assertion_pass_rates["long"] == 1.0


def test_a_python_assertion_that_raises_or_returns_nothing_fails_saying_why(tmp_path, sandbox):
    specs = [
        {"type": "python", "value": "output.missing"},
        {"type": "not-python", "value": "1 / 0"},
        {"type": "python", "value": "x = 1"},
        {"type": "python", "value": "print('junk')\nreturn object()"},
    ]
    prompt = text_prompt()
    data = write_lines(tmp_path / "d.jsonl", {"text": "t", "assert": specs})
    (report,) = evaluate(
        prompt,
        load_dataset(data, prompt),
        backend=pk.backends.ScriptedBackend(["Paris"]),
        sandbox=sandbox,
    )
    raised, negated, nothing, unserialisable = report.results[0].assertions
    assert not raised.passed and "AttributeError" in raised.reason
    assert not negated.passed and "ZeroDivisionError" in negated.reason  # errors never invert
    assert not nothing.passed and "returned null; return a bool" in nothing.reason
    assert not unserialisable.passed and "TypeError" in unserialisable.reason


@pytest.mark.timeout(30)
def test_a_python_assertion_that_loops_forever_times_out_and_fails(tmp_path):
    box = Sandbox(SandboxLimits(timeout_s=1.0, cpu_s=5))
    try:
        box.check()
    except ConfigurationError as exc:
        pytest.skip(f"no isolation on this machine: {exc}")
    prompt = text_prompt()
    specs = [
        {"type": "python", "value": "while True:\n    pass"},
        {"type": "contains", "value": "P"},
    ]
    data = write_lines(
        tmp_path / "d.jsonl", {"text": "t", "assert": specs}, {"text": "u", "expected": "x"}
    )
    (report,) = evaluate(
        prompt,
        load_dataset(data, prompt),
        backend=pk.backends.ScriptedBackend(["Paris", "x"]),
        sandbox=box,
    )
    looped, contained = report.results[0].assertions
    assert not looped.passed and "timed out after 1.0 s (timeout_s)" in looped.reason
    assert contained.passed and report.correct == [False, True]  # the evaluation went on


def test_python_assertions_need_isolation_before_any_item_runs(tmp_path):
    prompt = text_prompt()
    data = write_lines(
        tmp_path / "d.jsonl", {"text": "t", "assert": [{"type": "python", "value": "True"}]}
    )
    backend = pk.backends.ScriptedBackend(["Paris"])
    with pytest.raises(ConfigurationError, match="bubblewrap .* is not installed"):
        evaluate(
            prompt,
            load_dataset(data, prompt),
            backend=backend,
            sandbox=Sandbox(bwrap="no-such-bwrap"),
        )
    assert backend.requests == []


# -- llm-rubric ----------------------------------------------------------------------------


def verdict(passed: bool, score: float, reason: str) -> str:
    return json.dumps({"reason": reason, "pass": passed, "score": score})


def test_llm_rubric_asks_the_grader_through_the_run_loop(tmp_path):
    prompt = text_prompt()
    specs = [
        {"type": "llm-rubric", "value": "Names a French city"},
        {"type": "llm-rubric", "value": "Is polite", "threshold": 0.8},
        {"type": "not-llm-rubric", "value": "Mentions Lyon"},
    ]
    data = write_lines(tmp_path / "d.jsonl", {"text": "t", "assert": specs})
    grader = pk.backends.ScriptedBackend(
        [
            "not json",  # refused, re-asked with the error
            verdict(True, 1.0, "Paris is French"),
            verdict(True, 0.6, "curt"),
            verdict(False, 0.0, "no Lyon"),
        ]
    )
    backend = pk.backends.ScriptedBackend(["Paris"])
    (report,) = evaluate(prompt, load_dataset(data, prompt), backend=backend, grader=grader)
    french, polite, lyon = report.results[0].assertions
    assert (french.passed, french.score, french.reason) == (True, 1.0, "Paris is French")
    assert (polite.passed, polite.score) == (False, 0.6)
    assert polite.reason == "score 0.6 is below the threshold 0.8: curt"
    assert (lyon.passed, lyon.score) == (True, 1.0)
    assert len(grader.requests) == 4 and len(backend.requests) == 1
    asked = json.dumps(grader.requests[0].prompt)
    assert "Names a French city" in asked and "Paris" in asked and '\\"pass\\"' in asked
    assert report.results[0].requests == 1  # the grader's requests are not the model's


def test_a_grader_that_never_answers_validly_fails_the_assertion_keeping_its_text(tmp_path):
    spec = [{"type": "not-llm-rubric", "value": "Is short"}]
    prompt = text_prompt()
    data = write_lines(tmp_path / "d.jsonl", {"text": "t", "assert": spec})
    grader = pk.backends.ScriptedBackend(["I think yes", '{"pass": "maybe"}'])
    (report,) = evaluate(
        prompt,
        load_dataset(data, prompt),
        backend=pk.backends.ScriptedBackend(["Paris"]),
        grader=grader,
    )
    (checked,) = report.results[0].assertions
    assert not checked.passed and "never validated" in checked.reason
    assert checked.reason.endswith('its last text: {"pass": "maybe"}')


def test_llm_rubric_without_a_grader_is_refused_before_any_item_runs(tmp_path):
    prompt = text_prompt()
    data = write_lines(
        tmp_path / "d.jsonl", {"text": "t", "assert": [{"type": "llm-rubric", "value": "ok"}]}
    )
    backend = pk.backends.ScriptedBackend(["Paris"])
    with pytest.raises(UsageError, match="llm-rubric assertions but no grader: pass --grader SPEC"):
        evaluate(prompt, load_dataset(data, prompt), backend=backend)
    assert backend.requests == []


# -- reports ------------------------------------------------------------------------------


def test_report_json_and_md_hold_the_assertions_and_pass_rates(tmp_path):
    prompt = text_prompt()
    data = write_lines(
        tmp_path / "d.jsonl",
        {
            "text": "t",
            "assert": [{"type": "icontains", "value": "paris", "metric": "a|b"}],
            "metadata": {"bug": "none"},
        },
    )
    runs = {
        "x": evaluate(
            prompt, load_dataset(data, prompt), backend=pk.backends.ScriptedBackend(["Paris"])
        )
    }
    write_report(tmp_path / "out", runs, backend="scripted", data=str(data))
    report = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    (shot,) = report.templates["x"]
    assert shot.assertion_pass_rates == {"a|b": 1.0}
    item = shot.results[0]
    assert item.metadata == {"bug": "none"} and item.inputs == {"text": "t"}
    assert item.assertions[0].model_dump() == {
        "type": "icontains",
        "value": "paris",
        "passed": True,
        "score": 1.0,
        "reason": "found ['paris']",
        "weight": 1.0,
    }
    table = (tmp_path / "out" / "report.md").read_text()
    assert "| shots | a\\|b |\n| ---: | ---: |\n| 0 | 100.0% |" in table
    assert "a\\|b" not in markdown("x", [shot.model_copy(update={"assertion_pass_rates": {}})])


# -- the eval command -----------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def sentiment_data(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "d.jsonl",
        {"text": "great", "expected": "positive"},
        {"text": "awful", "assert": [{"type": "llm-rubric", "value": "Says negative"}]},
    )


def test_eval_grades_llm_rubric_with_the_grader_backend(tmp_path, sentiment_data):
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps(["positive", "negative"]))
    grades = tmp_path / "grades.json"
    grades.write_text(json.dumps([verdict(True, 0.9, "it says negative")]))
    out = tmp_path / "out"
    result = invoke(
        "eval",
        "sentiment",
        "--data",
        str(sentiment_data),
        "--backend",
        f"scripted:{replies}",
        "--grader",
        f"scripted:{grades}",
        "--out",
        str(out),
        "--no-cache",
    )
    assert result.exit_code == 0, result.output
    assert "| shots | llm-rubric |" in result.output and "| 0 | 100.0% |" in result.output
    report = Report.model_validate_json((out / "report.json").read_text())
    item = report.templates["sentiment"][0].results[1]
    assert item.correct and item.assertions[0].reason == "it says negative"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "the data has llm-rubric assertions: pass --grader SPEC"),
        (
            ["--grader", "scripted", "--unsafe-exec"],
            "--unsafe-exec: only with --metric pass@k or python",
        ),
        (["--grader", "scripted", "--exec-timeout", "9"], "--exec-timeout: only with"),
    ],
)
def test_eval_refuses_assertion_options_that_do_not_fit_the_data(sentiment_data, options, message):
    result = invoke(
        "eval", "sentiment", "--data", str(sentiment_data), "--backend", "scripted", *options
    )
    assert result.exit_code != 0 and message in result.output


def test_eval_refuses_a_grader_with_nothing_to_grade(tmp_path):
    data = write_lines(tmp_path / "d.jsonl", {"text": "great", "expected": "positive"})
    result = invoke(
        "eval", "sentiment", "--data", str(data), "--backend", "scripted", "--grader", "scripted"
    )
    assert result.exit_code != 0
    assert "--grader: the data has no llm-rubric assertion to grade" in result.output


# -- the held-out code explanations set -------------------------------------------------------


def test_code_bugs_set_is_eval_data_for_the_code_explanation_template(tmp_path):
    prompt = pk.load_prompt(ROOT / "templates" / "code_explanation.prompty")
    items = load_dataset(ROOT / "bench" / "acceptance" / "code_bugs.jsonl", prompt)
    assert len(items) >= 20
    for item in items:
        (found,) = item.assertions
        assert (found.type, found.field, found.key) == (
            "icontains-any",
            "potential_issues",
            "bug found",
        )
        assert found.value and item.metadata["bug"] and item.inputs["code_language"]
    first, second = items[:2]

    def answer(item: Any, issue: str) -> str:
        method = {"name": item.metadata["functions"][0], "walkthrough": "w"}
        record = {"summary": "s", "methods": [method], "optimizations": ["o"]}
        return json.dumps({**record, "potential_issues": [issue]})

    replies = [
        answer(first, f"Watch out: {first.assertions[0].value[0].upper()}"),
        answer(second, "Nothing wrong here."),
    ]
    (report,) = evaluate(prompt, items[:2], backend=pk.backends.ScriptedBackend(replies))
    assert report.correct == [True, False]
    assert report.assertion_pass_rates == {"bug found": 0.5}
    assert report.results[1].metadata["bug"] == second.metadata["bug"]
