"""pass@k: the unbiased estimator, HumanEval's formats, sampling and scoring, the eval command."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import promptkit as pk
from promptkit.backends import GenerationConfig, ScriptedBackend
from promptkit.backends._scripted import Request
from promptkit.cli import cli
from promptkit.errors import ConfigurationError, InputValidationError, UsageError
from promptkit.evaluate import (
    CODEX_STOPS,
    Candidate,
    PassAtKOptions,
    Report,
    Sandbox,
    SandboxLimits,
    completion_from_answer,
    completion_stops,
    generate_candidates,
    load_problems,
    load_samples,
    mean_pass_at_k,
    parse_ks,
    pass_at_k,
    pass_at_k_markdown,
    program_for,
    run_pass_at_k,
    sampling_config,
    score_candidates,
)

PROBLEMS = [
    {
        "task_id": "Mini/0",
        "prompt": "def add(a: int, b: int) -> int:\n"
        '    """Return a + b.\n    >>> add(2, 3)\n    5\n    """\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n"
        "    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
        "entry_point": "add",
    },
    {
        "task_id": "Mini/1",
        "prompt": "from typing import List\n\n\ndef biggest(xs: List[int]) -> int:\n"
        '    """The largest of xs (not empty)."""\n',
        "canonical_solution": "    return max(xs)\n",
        "test": "def check(candidate):\n"
        "    assert candidate([3, 9, 2]) == 9\n    assert candidate([-5]) == -5\n",
        "entry_point": "biggest",
    },
]
RIGHT = {"Mini/0": "    return a + b\n", "Mini/1": "    return max(xs)\n"}
WRONG = {"Mini/0": "    return a - b\n", "Mini/1": "    return xs[0]\n"}


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture
def problems_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    box = Sandbox()
    try:
        box.check()
    except ConfigurationError as exc:
        pytest.skip(f"no isolation on this machine: {exc}")
    return box


# --- the estimator -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_pass_at_k_equals_the_combinatorial_definition(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_is_stable_for_many_samples():
    # C(1000, 500) overflows a float; the product form does not
    value = pass_at_k(1000, 3, 500)
    assert value == pytest.approx(1 - math.comb(997, 500) / math.comb(1000, 500), rel=1e-9)
    assert pass_at_k(200, 0, 100) == 0.0 and pass_at_k(200, 200, 1) == 1.0
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(UsageError, match=r"pass@10 needs 1 <= k <= samples \(n=5\)"):
        pass_at_k(5, 1, 10)
    with pytest.raises(UsageError, match="0 <= correct <= samples"):
        pass_at_k(5, 6, 1)
    with pytest.raises(UsageError, match="at least one problem"):
        mean_pass_at_k([], 1)
    assert mean_pass_at_k([(2, 1), (2, 2)], 1) == pytest.approx(0.75)


def test_parse_ks():
    assert parse_ks("10, 1,1") == [1, 10]
    for bad in ("", "0", "a", "1,-2"):
        with pytest.raises(UsageError, match="--k takes comma-separated whole numbers"):
            parse_ks(bad)


# --- HumanEval's formats -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["problems.jsonl", "problems.jsonl.gz"])
def test_problems_are_read_from_jsonl_and_gzip(tmp_path, name):
    problems = load_problems(write_jsonl(tmp_path / name, PROBLEMS))
    assert [p.task_id for p in problems] == ["Mini/0", "Mini/1"]
    assert problems[1].line == 2 and problems[1].entry_point == "biggest"


def test_bad_problem_files_name_the_line_and_the_field(tmp_path):
    broken = dict(PROBLEMS[0], entry_point=None)
    with pytest.raises(InputValidationError, match=r"problems.jsonl:2: .*entry_point missing"):
        load_problems(write_jsonl(tmp_path / "problems.jsonl", [PROBLEMS[0], broken]))
    with pytest.raises(InputValidationError, match=r":2: task_id 'Mini/0' repeats line 1"):
        load_problems(write_jsonl(tmp_path / "twice.jsonl", [PROBLEMS[0], PROBLEMS[0]]))
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(gzip.compress(b'{"task_id": "x"}\n' * 50)[:40])
    with pytest.raises(InputValidationError, match="cannot read"):
        load_problems(damaged)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputValidationError, match="holds no problem"):
        load_problems(tmp_path / "empty.jsonl")


def test_samples_must_name_known_tasks(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "Mini/0", "completion": "x"}])
    assert load_samples(path, {"Mini/0"}) == {"Mini/0": ["x"]}
    path = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "Other/3", "completion": "x"}])
    with pytest.raises(InputValidationError, match=r"s.jsonl:1: task_id 'Other/3' is not in"):
        load_samples(path, {"Mini/0"})
    path = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "Mini/0"}])
    with pytest.raises(InputValidationError, match="needs task_id and completion"):
        load_samples(path, {"Mini/0"})


def test_chat_answers_become_completions():
    problem = load_problems_from(PROBLEMS)[0]
    whole = "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert completion_from_answer(problem, whole) == "\ndef add(a, b):\n    return a + b\n"
    assert completion_from_answer(problem, "```\n    return a + b\n```") == "    return a + b\n"
    assert completion_from_answer(problem, "    return a + b") == "    return a + b\n"
    assert completion_from_answer(problem, "```python\ndef add_all(a):\n    pass\n```") == (
        "def add_all(a):\n    pass\n"
    )  # another function is not the entry point


def load_problems_from(records: list[dict[str, str]]):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return load_problems(write_jsonl(Path(folder) / "p.jsonl", records))


def test_the_program_is_prompt_completion_tests_and_check():
    problem = load_problems_from(PROBLEMS)[0]
    program = program_for(problem, RIGHT["Mini/0"])
    assert program.startswith(PROBLEMS[0]["prompt"] + RIGHT["Mini/0"])
    assert program.rstrip().endswith("check(add)")
    namespace: dict[str, object] = {}
    exec(compile(program, "program", "exec"), namespace)  # our own trusted code


# --- sampling ------------------------------------------------------------------------------


def test_sampling_uses_codex_stops_seeds_and_the_chat_answer_rules():
    prompt = pk.load_prompt("code_completion")
    config = sampling_config(prompt, samples=3, temperature=0.8, top_p=0.95)
    assert config.stop == CODEX_STOPS[:4] and config.temperature == 0.8 and config.top_p == 0.95
    assert completion_stops(prompt, config) == CODEX_STOPS
    seen: list[Request] = []

    def reply(request: Request) -> str:
        seen.append(request)
        if request.config.seed == 2:
            return "\n    return a + b\nprint(add(1, 2))"  # cut here, not by the request
        return "\n    return a + b\n\ndef extra():\n    pass" if request.config.seed == 1 else "bad"

    backend = ScriptedBackend([reply] * 6)
    problems = load_problems_from(PROBLEMS)
    drawn = generate_candidates(prompt, problems, backend=backend, samples=3, config=config)
    assert [r.config.seed for r in seen] == [0, 1, 2, 0, 1, 2]
    assert seen[0].prompt == PROBLEMS[0]["prompt"].strip()
    assert drawn["Mini/0"][1].completion == "\n    return a + b\n"  # cut at "\ndef"
    assert drawn["Mini/0"][0].text == "bad"
    assert drawn["Mini/0"][2].completion == "\n    return a + b"
    assert drawn["Mini/0"][2].text == "\n    return a + b\nprint(add(1, 2))"  # kept whole

    chat = pk.load_prompt("code_completion_chat")
    answer = "```python\ndef add(a, b):\n    return a + b\n```"
    drawn = generate_candidates(
        chat, problems[:1], backend=ScriptedBackend([answer]), samples=1, config=chat.config
    )
    assert drawn["Mini/0"][0].completion == "\ndef add(a, b):\n    return a + b\n"
    assert drawn["Mini/0"][0].text == answer  # the raw answer is kept


def test_several_greedy_samples_are_refused():
    with pytest.raises(UsageError, match="--samples 5 at temperature 0"):
        sampling_config(pk.load_prompt("code_completion"), samples=5, temperature=0, top_p=None)


def test_a_backend_failure_is_a_failed_sample_not_a_crash(sandbox):
    problems = load_problems_from(PROBLEMS)[:1]
    backend = ScriptedBackend([pk.errors.BackendError("overloaded", retryable=True), "x"])
    prompt = pk.load_prompt("code_completion")
    config = sampling_config(prompt, samples=2, temperature=0.5, top_p=None)
    drawn = generate_candidates(prompt, problems, backend=backend, samples=2, config=config)
    run = score_candidates(problems, drawn, sandbox=sandbox, ks=[1], template="t")
    results = run.problems[0].results  # the problem's samples were drawn together
    assert len(results) == 2
    assert all(r.status == "error" and "overloaded" in r.detail and not r.passed for r in results)


def test_an_error_of_use_is_raised_not_counted_as_a_failed_sample():
    problems = load_problems_from(PROBLEMS)[:1]
    backend = ScriptedBackend([ConfigurationError("no such model file")])
    prompt = pk.load_prompt("code_completion")
    config = GenerationConfig()
    with pytest.raises(ConfigurationError, match="no such model file"):
        generate_candidates(prompt, problems, backend=backend, samples=1, config=config)
    sentiment = pk.load_prompt("sentiment")
    with pytest.raises(InputValidationError, match="text"):
        generate_candidates(sentiment, problems, backend=backend, samples=1, config=config)


# --- scoring -------------------------------------------------------------------------------


def test_scoring_counts_passing_samples_per_problem(sandbox):
    sandbox = Sandbox(SandboxLimits(timeout_s=2.5))
    problems = load_problems_from(PROBLEMS)
    candidates = {
        "Mini/0": [Candidate(RIGHT["Mini/0"]), Candidate(WRONG["Mini/0"])],
        "Mini/1": [Candidate(WRONG["Mini/1"]), Candidate("    while True:\n        pass\n")],
    }
    run = score_candidates(problems, candidates, sandbox=sandbox, ks=[1, 2], template="t")
    assert [(p.samples, p.correct) for p in run.problems] == [(2, 1), (2, 0)]
    assert run.pass_at_k == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}
    failures = [r for p in run.problems for r in p.results if not r.passed]
    assert failures[0].detail == "AssertionError" and failures[-1].status == "timeout"
    assert run.isolation == "bubblewrap" and run.limits["timeout_s"] == 2.5


def test_too_few_samples_for_k_is_refused_before_running(sandbox):
    problems = load_problems_from(PROBLEMS)
    candidates = {"Mini/0": [Candidate(RIGHT["Mini/0"])] * 3}
    for ks in ([], [0, 1]):
        with pytest.raises(UsageError, match="pass@k needs one or more k >= 1"):
            score_candidates(problems, candidates, sandbox=sandbox, ks=ks, template="t")
    with pytest.raises(UsageError, match="no problem has a sample to check"):
        score_candidates(problems, {}, sandbox=sandbox, ks=[1], template="t")
    with pytest.raises(UsageError, match="pass@5 needs at least 5 samples per problem, but Mini/0"):
        score_candidates(problems, candidates, sandbox=sandbox, ks=[1, 5], template="t")


# --- the command ---------------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_eval_pass_at_k_generates_runs_and_reports(tmp_path, problems_file, sandbox):
    replies = [RIGHT["Mini/0"], WRONG["Mini/0"], RIGHT["Mini/0"], WRONG["Mini/0"]]
    replies += [WRONG["Mini/1"]] * 3 + ["\n    return max(xs)\n#"]
    replies_file = tmp_path / "replies.json"
    replies_file.write_text(json.dumps(replies))
    out = tmp_path / "out"
    result = invoke(
        "eval",
        "code_completion",
        "--data",
        str(problems_file),
        "--backend",
        f"scripted:{replies_file}",
        "--metric",
        "pass@k",
        "--k",
        "1,2",
        "--samples",
        "4",
        "--temperature",
        "0.8",
        "--top-p",
        "0.95",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = Report.model_validate_json((out / "report.json").read_text())
    run = report.pass_at_k
    assert report.metric == "pass@k" and report.method == "generate" and run is not None
    assert [(p.task_id, p.samples, p.correct) for p in run.problems] == [
        ("Mini/0", 4, 2),
        ("Mini/1", 4, 1),
    ]
    expected = (pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 2
    assert run.pass_at_k["pass@2"] == pytest.approx(expected)
    assert run.pass_at_k["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert run.stop == list(CODEX_STOPS) and run.temperature == 0.8 and run.top_p == 0.95
    last = run.problems[1].results[3]
    assert last.passed and last.text == "\n    return max(xs)"  # cut at "\n#"
    assert "pass@1" in result.output and "| Mini/1 | 1/4 |" in (out / "report.md").read_text()
    pytest.importorskip("matplotlib")
    assert (out / "pass_at_k.png").read_bytes().startswith(b"\x89PNG")


def test_eval_scores_a_samples_file_without_a_backend(tmp_path, problems_file, sandbox):
    samples = [{"task_id": "Mini/0", "completion": RIGHT["Mini/0"]}] * 2
    samples_file = write_jsonl(tmp_path / "samples.jsonl", samples)
    out = tmp_path / "out"
    result = invoke(
        "eval",
        "code_completion",
        "--data",
        str(problems_file),
        "--samples-file",
        str(samples_file),
        "--k",
        "1,2",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = Report.model_validate_json((out / "report.json").read_text())
    assert report.method == "samples" and report.pass_at_k is not None
    assert report.pass_at_k.pass_at_k == {"pass@1": 1.0, "pass@2": 1.0}
    assert report.pass_at_k.unsampled == ["Mini/1"]
    assert report.pass_at_k.problems[0].results[0].text is None
    assert "No samples for 1 problem(s): Mini/1" in result.output


def test_eval_refuses_to_run_code_without_isolation(tmp_path, problems_file, monkeypatch):
    samples_file = write_jsonl(
        tmp_path / "samples.jsonl", [{"task_id": "Mini/0", "completion": RIGHT["Mini/0"]}]
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    args = ["eval", "code_completion", "--data", str(problems_file)]
    args += ["--samples-file", str(samples_file), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "bubblewrap" in result.output and "--unsafe-exec" in result.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(cli, [*args, "--unsafe-exec"])
    assert result.exit_code == 0, result.output
    report = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert report.pass_at_k is not None and report.pass_at_k.isolation == "none (--unsafe-exec)"


def test_options_that_cannot_work_are_refused_before_generating(tmp_path, problems_file):
    backend = ScriptedBackend([])
    prompt = pk.load_prompt("code_completion")
    options = PassAtKOptions(ks=(1, 10), samples=5, temperature=0.8)
    with pytest.raises(UsageError, match="pass@10 needs --samples >= 10, got --samples 5"):
        run_pass_at_k(prompt, str(problems_file), backend=backend, options=options, out=tmp_path)
    assert backend.requests == []


def test_options_that_would_be_ignored_are_refused(tmp_path, problems_file):
    samples_file = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "Mini/0", "completion": "x"}])
    prompt = pk.load_prompt("code_completion")
    options = PassAtKOptions(samples_file=str(samples_file), temperature=0.8, samples=4)
    with pytest.raises(UsageError, match="--samples, --temperature apply only when generating"):
        run_pass_at_k(prompt, str(problems_file), backend=None, options=options, out=tmp_path)
    args = ["eval", "code_completion", "--data", str(problems_file), "--metric", "pass@k"]
    result = CliRunner().invoke(cli, [*args, "--shots", "0,1", "--vs", "sentiment"])
    assert result.exit_code == 2 and "pass@k does not use --vs, --shots" in result.output
    result = CliRunner().invoke(
        cli, [*args, "--samples-file", str(samples_file), "--backend", "scripted"]
    )
    assert result.exit_code == 2 and "--backend (with --samples-file)" in result.output


def test_an_accuracy_report_still_reads_without_the_pass_at_k_fields():
    report = Report.model_validate(
        {"backend": "scripted", "data": "d.jsonl", "method": "generate", "templates": {}}
    )
    assert report.schema_version == "1" and report.metric == "accuracy"
    assert report.pass_at_k is None


def test_accuracy_runs_take_the_sampling_options_and_refuse_pass_at_k_ones(tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "Great cast", "expected": "positive"}) + "\n")
    backend = ScriptedBackend([" positive"])
    monkeypatch.setattr(
        "promptkit._cli_eval.backend_for", lambda spec, prompt=None, options=(): backend
    )
    args = ["eval", "sentiment", "--data", str(data), "--out", str(tmp_path / "out"), "--no-cache"]
    result = CliRunner().invoke(cli, [*args, "--samples", "3", "--k", "1,2"])
    assert result.exit_code == 2 and "--k, --samples: only with --metric pass@k" in result.output
    result = CliRunner().invoke(cli, [*args, "--temperature", "0.7", "--top-p", "0.9"])
    assert result.exit_code == 0, result.output
    assert '"accuracy": 1.0' in (tmp_path / "out" / "report.json").read_text()
    assert backend.requests[0].config.temperature == 0.7
    assert backend.requests[0].config.top_p == 0.9


def test_the_markdown_lists_a_few_unsampled_problems_and_the_json_all(sandbox):
    many = [dict(PROBLEMS[0], task_id=f"Mini/{i}") for i in range(12)]
    problems = load_problems_from(many)
    candidates = {"Mini/0": [Candidate(RIGHT["Mini/0"])]}
    run = score_candidates(problems, candidates, sandbox=sandbox, ks=[1], template="t")
    assert run.unsampled == [f"Mini/{i}" for i in range(1, 12)]
    text = pass_at_k_markdown(run)
    assert "No samples for 11 problem(s): Mini/1, " in text
    assert "Mini/10 and 1 more (report.json lists them)" in text and "Mini/11" not in text
