"""Evaluation runs written item by item, resumed after a kill, and run with --concurrency."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import promptkit.cli
from promptkit._batch import run_as_completed
from promptkit.backends import ScriptedBackend
from promptkit.backends._scripted import Request
from promptkit.cli import cli
from promptkit.errors import BackendError, UsageError
from promptkit.evaluate import RESULTS_FILE, Report

ROWS = [{"text": f"review {i}", "expected": "positive" if i % 3 else "negative"} for i in range(8)]
TOTAL = len(ROWS) * 2  # two shot counts


def judge(request: Request) -> str:
    """A deterministic model: positive for even review numbers."""
    prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[-1]["content"]
    number = int(prompt.rsplit("review ", 1)[1].split()[0])
    return "positive" if number % 2 == 0 else "negative"


def scripted(replies: list[Any]) -> ScriptedBackend:
    return ScriptedBackend(replies, name="scripted:judge")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A dataset, a template file, and the backend the CLI builds (set ``backend`` in it)."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    template = tmp_path / "sentiment.prompty"
    template.write_text(Path(promptkit.load_prompt("sentiment").source).read_text())
    state: dict[str, Any] = {"data": data, "template": template, "tmp": tmp_path}
    monkeypatch.setattr(
        promptkit._cli_eval, "backend_for", lambda spec, prompt, options=(): state["backend"]
    )
    return state


def eval_args(project: dict[str, Any], out: str, *extra: str) -> list[str]:
    return [
        "eval",
        str(project["template"]),
        "--data",
        str(project["data"]),
        "--shots",
        "0,2",
        "--no-cache",
        "--out",
        str(project["tmp"] / out),
        *extra,
    ]


def comparable(folder: Path) -> dict[str, Any]:
    """report.json without the timings, which differ from run to run."""
    report = json.loads((folder / "report.json").read_text())
    for reports in report["templates"].values():
        for shot in reports:
            shot.pop("mean_latency_s")
            for item in shot["results"]:
                item.pop("latency_s")
                for attempt in item["attempts"]:
                    attempt.pop("latency_s")
    return report


def test_a_run_killed_at_item_5_resumes_to_the_report_of_an_uninterrupted_run(project):
    project["backend"] = scripted([judge] * TOTAL)
    whole = CliRunner().invoke(cli, eval_args(project, "whole"))
    assert whole.exit_code == 0, whole.output

    project["backend"] = scripted([judge] * 4 + [KeyboardInterrupt()])
    killed = CliRunner().invoke(cli, eval_args(project, "killed"))
    assert killed.exit_code == 130 and "interrupted" in killed.output
    lines = (project["tmp"] / "killed" / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 1 + 4  # the header and the four finished items, written at once
    assert not (project["tmp"] / "killed" / "report.json").exists()

    project["backend"] = rest = scripted([judge] * TOTAL)
    resumed = CliRunner().invoke(cli, eval_args(project, "killed", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert len(rest.requests) == TOTAL - 4  # the finished items were not asked again
    assert comparable(project["tmp"] / "killed") == comparable(project["tmp"] / "whole")
    report = Report.model_validate_json((project["tmp"] / "killed" / "report.json").read_text())
    assert report.fingerprint is not None
    assert report.fingerprint["settings"]["shots"] == [0, 2]


def test_a_line_cut_short_by_a_kill_is_dropped_and_its_item_run_again(project):
    project["backend"] = scripted([judge] * 3 + [KeyboardInterrupt()])
    CliRunner().invoke(cli, eval_args(project, "out"))
    results = project["tmp"] / "out" / RESULTS_FILE
    with results.open("a") as stream:
        stream.write('{"template": "sentiment", "shots": 0, "res')  # the kill hit mid-write
    project["backend"] = rest = scripted([judge] * TOTAL)
    resumed = CliRunner().invoke(cli, eval_args(project, "out", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert len(rest.requests) == TOTAL - 3
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == 1 + TOTAL and all("result" in line for line in lines[1:])


@pytest.mark.parametrize(
    "change, message",
    [
        ("template", "the template"),
        ("data", "the dataset"),
        ("backend", "the backend is scripted:other, the run used scripted:judge"),
        ("settings", "setting max_attempts is 2, the run used 1"),
        ("shots", "setting shots is [0], the run used [0, 2]"),
    ],
)
def test_resume_refuses_a_run_that_differs_and_names_what_changed(project, change, message):
    project["backend"] = scripted([judge] * 2 + [KeyboardInterrupt()])
    CliRunner().invoke(cli, eval_args(project, "out"))
    extra = ["--resume"]
    if change == "template":
        text = project["template"].read_text()
        project["template"].write_text(text.replace("Decide whether", "Say whether"))
    elif change == "data":
        with project["data"].open("a") as stream:
            stream.write(json.dumps({"text": "review 99", "expected": "positive"}) + "\n")
    elif change == "settings":
        extra += ["--max-attempts", "2"]
    project["backend"] = ScriptedBackend(
        [judge] * TOTAL, name="scripted:other" if change == "backend" else "scripted:judge"
    )
    args = eval_args(project, "out", *extra)
    if change == "shots":
        args[args.index("0,2")] = "0"
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2
    assert "cannot resume the run in" in refused.output and message in refused.output
    assert not project["backend"].requests


def test_resume_needs_a_run_and_a_fresh_run_will_not_overwrite_an_unfinished_one(project):
    project["backend"] = scripted([judge] * TOTAL)
    nothing = CliRunner().invoke(cli, eval_args(project, "out", "--resume"))
    assert nothing.exit_code == 2 and "nothing to resume" in nothing.output
    project["backend"] = scripted([judge] * 2 + [KeyboardInterrupt()])
    CliRunner().invoke(cli, eval_args(project, "out"))
    project["backend"] = scripted([judge] * TOTAL)
    again = CliRunner().invoke(cli, eval_args(project, "out"))
    assert again.exit_code == 2
    assert "holds an unfinished run (2 of 16 item runs" in again.output
    assert "--resume" in again.output


def test_a_results_line_that_is_not_a_result_is_refused_with_its_line(project):
    project["backend"] = scripted([judge] * 2 + [KeyboardInterrupt()])
    CliRunner().invoke(cli, eval_args(project, "out"))
    results = project["tmp"] / "out" / RESULTS_FILE
    results.write_text(results.read_text() + '{"template": "sentiment"}\n')
    refused = CliRunner().invoke(cli, eval_args(project, "out", "--resume"))
    assert refused.exit_code == 2
    assert f"{RESULTS_FILE}:4: not a line of an evaluation run's results" in refused.output


def test_concurrency_is_for_api_backends(project):
    project["backend"] = scripted([judge] * TOTAL)
    refused = CliRunner().invoke(cli, eval_args(project, "out", "--concurrency", "4"))
    assert refused.exit_code == 2
    assert "--concurrency 4: scripted:judge runs one request at a time" in refused.output
    assert not project["backend"].requests


def test_run_as_completed_stops_at_an_interrupt_and_runs_nothing_more():
    started: list[int] = []
    lock = threading.Lock()

    def call(item: int) -> int:
        with lock:
            started.append(item)
        time.sleep(0.01)
        return item

    def on_done(index: int, result: int) -> None:
        if index == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_as_completed(call, list(range(200)), concurrency=4, on_done=on_done)
    assert len(started) < 40  # the queued calls were cancelled, not run
    seen: list[int] = []
    ordered = run_as_completed(
        call, list(range(20)), concurrency=4, on_done=lambda i, r: seen.append(i)
    )
    assert ordered == list(range(20)) and sorted(seen) == list(range(20))
    with pytest.raises(UsageError, match="concurrency must be a positive integer"):
        run_as_completed(call, [1], concurrency=0, on_done=on_done)


def test_resume_runs_again_the_items_that_failed_with_a_backend_error(project):
    failing = BackendError("rate limited", backend="scripted:judge", retryable=True)
    project["backend"] = scripted([judge, failing] + [judge] * (TOTAL - 2))
    first = CliRunner().invoke(cli, eval_args(project, "out"))
    assert first.exit_code == 0, first.output
    report = Report.model_validate_json((project["tmp"] / "out" / "report.json").read_text())
    assert report.templates["sentiment"][0].errors == ["line 2: scripted:judge: rate limited"]
    project["backend"] = again = scripted([judge] * TOTAL)
    resumed = CliRunner().invoke(cli, eval_args(project, "out", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert len(again.requests) == 1
    report = Report.model_validate_json((project["tmp"] / "out" / "report.json").read_text())
    assert report.templates["sentiment"][0].errors == []
    assert report.templates["sentiment"][0].results[1].prediction == "negative"


def test_pass_at_k_takes_none_of_the_long_run_options(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("")
    for option in (["--resume"], ["--concurrency", "2"], ["--batch-api"]):
        refused = CliRunner().invoke(
            cli, ["eval", "code_completion", "--data", str(problems), "--metric", "pass@k", *option]
        )
        assert refused.exit_code == 2
        assert f"pass@k does not use {option[0]}" in refused.output


def test_two_templates_compared_resume_to_the_comparison_of_an_uninterrupted_run(project):
    other = project["tmp"] / "other.prompty"
    text = project["template"].read_text()
    other.write_text(text.replace("name: sentiment", "name: sentiment_b"))
    vs = ["--vs", str(other)]
    project["backend"] = scripted([judge] * TOTAL * 2)
    whole = CliRunner().invoke(cli, eval_args(project, "whole", *vs))
    assert whole.exit_code == 0, whole.output
    project["backend"] = scripted([judge] * (TOTAL + 3) + [KeyboardInterrupt()])
    killed = CliRunner().invoke(cli, eval_args(project, "killed", *vs))
    assert killed.exit_code == 130
    project["backend"] = rest = scripted([judge] * TOTAL * 2)
    resumed = CliRunner().invoke(cli, eval_args(project, "killed", "--resume", *vs))
    assert resumed.exit_code == 0, resumed.output
    assert len(rest.requests) == TOTAL - 3
    report = comparable(project["tmp"] / "killed")
    assert report == comparable(project["tmp"] / "whole") and len(report["comparisons"]) == 2
