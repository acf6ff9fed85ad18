"""``eval --batch-api`` and ``--concurrency`` against a fake OpenAI API on a real loopback
socket (files, batches and chat completions), through the real ``openai`` client."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import promptkit as pk
from promptkit.backends import GenerationConfig
from promptkit.cli import cli
from promptkit.errors import BackendError, UnsupportedCapabilityError, UsageError
from promptkit.evaluate import BATCHES_FILE, Report

pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.timeout(120)

from servers import fake_openai, serve_in_thread  # noqa: E402

import promptkit.backends._openai_batch as openai_batch  # noqa: E402

KEY = "sk-test-abcdefghijklmnopqrstuvwx"
ROWS = [{"text": f"review {i}", "expected": "positive" if i % 3 else "negative"} for i in range(6)]


def answer(body: dict[str, Any]) -> Any:
    """Positive for even review numbers; review 1 first gets a word that is not a label (and
    the right one when re-asked); review 5 is refused by the service."""
    asked = [m["content"] for m in body["messages"] if m["role"] == "user"]
    queries = [(i, re.search(r"Review: review (\d+)", text)) for i, text in enumerate(asked)]
    at, query = [(i, found) for i, found in queries if found][-1]
    number = int(query.group(1))
    if number == 5:
        return 400, {"error": {"message": "this review is refused", "code": None}}
    if number == 1 and at == len(asked) - 1:  # not re-asked yet
        return "maybe"
    return "positive" if number % 2 == 0 else "negative"


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fake API's base URL and state, with the CLI's openai backend pointed at it."""
    monkeypatch.setattr(openai_batch, "FIRST_POLL_S", 0.01)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    app = fake_openai(answer, delay=0.05)
    with serve_in_thread(app) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        yield app.state.fake


def run_eval(tmp_path: Path, out: str, *extra: str) -> Any:
    args = ["eval", "sentiment", "--data", str(tmp_path / "data.jsonl"), "--shots", "0,2"]
    args += ["--backend", "openai:gpt-4o-mini", "--max-attempts", "2", "--no-cache"]
    return CliRunner().invoke(cli, [*args, "--out", str(tmp_path / out), *extra])


def comparable(folder: Path) -> dict[str, Any]:
    """report.json without the timings (its fingerprint too is the same for a direct run and
    a batch run: the Batch API changes no answer)."""
    report = json.loads((folder / "report.json").read_text())
    for reports in report["templates"].values():
        for shot in reports:
            shot.pop("mean_latency_s")
            for item in shot["results"]:
                item.pop("latency_s")
                for attempt in item["attempts"]:
                    attempt.pop("latency_s")
    return report


def test_the_batch_api_builds_the_report_a_direct_run_builds(tmp_path, api):
    direct = run_eval(tmp_path, "direct")
    assert direct.exit_code == 0, direct.output
    sent_directly = sorted(json.dumps(body, sort_keys=True) for body in api["chat"])
    api["chat"].clear()

    batched = run_eval(tmp_path, "batched", "--batch-api")
    assert batched.exit_code == 0, batched.output
    assert not api["chat"]  # nothing went to the chat endpoint itself
    assert comparable(tmp_path / "batched") == comparable(tmp_path / "direct")

    first, follow_up = api["uploads"]
    assert len(first) == len(ROWS) * 2
    assert {line["url"] for line in first} == {"/v1/chat/completions"}
    assert [line["custom_id"] for line in follow_up] == ["0-0-2", "0-2-2"]  # review 1 re-asked
    assert "could not be used" in follow_up[0]["body"]["messages"][-1]["content"]
    # every line's body is exactly what the backend sends directly
    batch_bodies = sorted(json.dumps(line["body"], sort_keys=True) for line in first + follow_up)
    assert batch_bodies == sent_directly

    created = list(api["batches"].values())
    assert [b["completion_window"] for b in created] == ["24h", "24h"]
    recorded = json.loads((tmp_path / "batched" / BATCHES_FILE).read_text())
    assert recorded["rounds"] == [[b["id"]] for b in created]
    header = json.loads((tmp_path / "batched" / "results.jsonl").read_text().splitlines()[0])
    assert recorded["run"] == header["run"]

    report = Report.model_validate_json((tmp_path / "batched" / "report.json").read_text())
    items = {r.line: r for r in report.templates["sentiment"][0].results}
    assert [a.text for a in items[2].attempts] == ["maybe", "negative"]
    assert items[2].valid and items[2].requests == 2
    assert not items[6].valid
    assert items[6].error == (
        "openai:gpt-4o-mini: the request was refused: Error code: 400 - this review is refused"
    )


def test_a_batch_run_stopped_while_waiting_resumes_its_recorded_batch(tmp_path, api, monkeypatch):
    monkeypatch.setattr(openai_batch, "MAX_WAIT_S", 0.0)
    stopped = run_eval(tmp_path, "out", "--batch-api")
    assert stopped.exit_code == 4
    assert "is still in_progress after 0 s; run again with --resume" in stopped.output
    recorded = json.loads((tmp_path / "out" / BATCHES_FILE).read_text())["rounds"]
    assert len(recorded) == 1 and len(api["uploads"]) == 1

    monkeypatch.setattr(openai_batch, "MAX_WAIT_S", 60.0)
    resumed = run_eval(tmp_path, "out", "--batch-api", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert len(api["uploads"]) == 2  # the first batch was waited for, not sent again
    assert json.loads((tmp_path / "out" / BATCHES_FILE).read_text())["rounds"][0] == recorded[0]
    direct = run_eval(tmp_path, "direct")
    assert direct.exit_code == 0, direct.output
    assert comparable(tmp_path / "out") == comparable(tmp_path / "direct")


def test_a_resume_without_the_batch_api_asks_again_only_what_the_service_refused(tmp_path, api):
    batched = run_eval(tmp_path, "out", "--batch-api")
    assert batched.exit_code == 0, batched.output
    assert not api["chat"]
    resumed = run_eval(tmp_path, "out", "--resume")
    assert resumed.exit_code == 0, resumed.output
    asked = [body["messages"][-1]["content"] for body in api["chat"]]
    assert asked == ["Review: review 5\nSentiment:"] * 2  # the refused item, at 0 and 2 shots


def test_concurrency_runs_requests_at_once_within_its_bound(tmp_path, api):
    one = run_eval(tmp_path, "one")
    assert one.exit_code == 0, one.output
    assert api["most_in_flight"] == 1
    api["refuse_next"] = 2  # rate limited at first: the SDK retries those requests
    four = run_eval(tmp_path, "four", "--concurrency", "4")
    assert four.exit_code == 0, four.output
    assert api["refuse_next"] == 0 and 2 <= api["most_in_flight"] <= 4
    assert comparable(tmp_path / "four") == comparable(tmp_path / "one")


def test_batch_api_needs_an_openai_backend_and_no_concurrency(tmp_path, api):
    args = ["eval", "sentiment", "--data", str(tmp_path / "data.jsonl"), "--backend", "scripted"]
    scripted = CliRunner().invoke(cli, [*args, "--batch-api", "--out", str(tmp_path / "s")])
    assert scripted.exit_code == 2
    assert "does not support batch_api; the Batch API is OpenAI's" in scripted.output
    both = run_eval(tmp_path, "out", "--batch-api", "--concurrency", "2")
    assert both.exit_code == 2 and "--concurrency: the Batch API" in both.output


def test_polling_backs_off_and_gives_up_after_its_limit(api):
    backend = pk.get_backend("openai:gpt-4o-mini")
    batch = backend.batch_api()
    line = batch.line("a", [{"role": "user", "content": "Review: review 2"}], GenerationConfig())
    batch_id = batch.submit([line], {"promptkit": "test"})
    batch.poll_s, batch.max_poll_s, batch.max_wait_s = 0.01, 0.02, 0.25
    api["batches"][batch_id]["polls"] = -1000  # it will not finish in time
    with pytest.raises(BackendError) as caught:
        batch.wait(batch_id)
    assert caught.value.kind == "timeout" and caught.value.retryable
    assert f"batch {batch_id} is still in_progress after 0 s" in str(caught.value)
    polls = api["batches"][batch_id]["polls"] + 1000
    assert 5 <= polls <= 25  # waits of 0.01, 0.015, 0.02, 0.02, ... within 0.25 s
    api["batches"][batch_id]["polls"] = 10
    answers = batch.answers(batch.wait(batch_id))
    assert answers["a"].text == "positive" and answers["a"].usage.prompt_tokens == 5


def test_batch_lines_never_carry_the_key(tmp_path, api):
    batched = run_eval(tmp_path, "out", "--batch-api")
    assert batched.exit_code == 0, batched.output
    for name in ("results.jsonl", "report.json", BATCHES_FILE):
        assert KEY not in (tmp_path / "out" / name).read_text()
    assert KEY not in json.dumps(api["uploads"])


def test_a_failed_batch_and_a_malformed_result_line_are_typed_errors(api):
    batch = pk.get_backend("openai:gpt-4o-mini").batch_api()
    line = batch.line("a", [{"role": "user", "content": "Review: review 2"}], GenerationConfig())
    batch_id = batch.submit([line], {"promptkit": "test"})
    state = api["batches"][batch_id]
    state["status"] = "failed"
    state["errors"] = {
        "object": "list",
        "data": [{"code": "invalid_json_line", "message": "This line is not JSON", "line": 3}],
    }
    with pytest.raises(BackendError) as caught:
        batch.wait(batch_id)
    assert f"batch {batch_id} failed: This line is not JSON (line 3)" in str(caught.value)
    state["status"], state["errors"] = "completed", None
    state["output_file_id"] = "file-broken"
    api["files"]["file-broken"] = b'{"custom_id": "a", "response": {"status_code": 200}}\n[1]\n'
    with pytest.raises(BackendError) as caught:
        batch.answers(batch.wait(batch_id))
    assert caught.value.kind == "bad_response"
    assert "line 2 of the batch file file-broken is not a batch result" in str(caught.value)


def test_a_round_larger_than_a_batch_may_be_is_split(tmp_path, api, monkeypatch):
    monkeypatch.setattr(openai_batch.OpenAIBatch, "max_requests", 5)
    batched = run_eval(tmp_path, "batched", "--batch-api")
    assert batched.exit_code == 0, batched.output
    assert [len(lines) for lines in api["uploads"]] == [5, 5, 2, 2]  # 12 lines, then re-asks
    rounds = json.loads((tmp_path / "batched" / BATCHES_FILE).read_text())["rounds"]
    assert [len(ids) for ids in rounds] == [3, 1]
    direct = run_eval(tmp_path, "direct")
    assert direct.exit_code == 0, direct.output
    assert comparable(tmp_path / "batched") == comparable(tmp_path / "direct")
    batch = pk.get_backend("openai:gpt-4o-mini").batch_api()
    line = batch.line("a", [{"role": "user", "content": "hi"}], GenerationConfig())
    with pytest.raises(UsageError, match=r"at most 5 requests in \d+ bytes \(max_requests"):
        batch.submit([line] * 6, {})


def test_azure_deployments_have_no_batch_api():
    from promptkit.backends._openai_spec import azure_from_spec

    backend = azure_from_spec(
        "dep", endpoint="https://x.openai.azure.com", api_key="k" * 20, api_version="2024-06-01"
    )
    with pytest.raises(UnsupportedCapabilityError, match="use an openai:MODEL backend"):
        backend.batch_api()


@pytest.mark.slow
def test_a_process_killed_mid_run_resumes_to_the_same_report(tmp_path, api):
    """kill -9 while items are in flight: the lines written so far are whole, and a resume
    asks only for the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = ["eval", "sentiment", "--data", str(tmp_path / "data.jsonl"), "--shots", "0,2"]
    args += ["--backend", "openai:gpt-4o-mini", "--max-attempts", "2", "--no-cache"]
    api["delay"] = 0.4
    env = {**os.environ, "OPENAI_BASE_URL": os.environ["OPENAI_BASE_URL"], "OPENAI_API_KEY": KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "promptkit", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while not (results.exists() and len(results.read_text().splitlines()) >= 4):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    api["delay"] = 0.0
    lines = [json.loads(line) for line in results.read_text().splitlines()[1:]]  # all whole
    answered = sum(line["result"]["error"] is None for line in lines)
    assert 3 <= len(lines) < len(ROWS) * 2
    before = len(api["chat"])
    resumed = run_eval(tmp_path, "killed", "--resume")
    assert resumed.exit_code == 0, resumed.output
    asked = len(api["chat"]) - before  # the items left (and those refused), 2 re-asks at most
    assert len(ROWS) * 2 - len(lines) <= asked <= len(ROWS) * 2 - answered + 2
    direct = run_eval(tmp_path, "direct")
    assert direct.exit_code == 0, direct.output
    assert comparable(out) == comparable(tmp_path / "direct")


def test_resume_refuses_the_same_model_behind_another_base_url(tmp_path, api, monkeypatch):
    first = run_eval(tmp_path, "out", "--batch-api")
    assert first.exit_code == 0, first.output
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    refused = run_eval(tmp_path, "out", "--resume")
    assert refused.exit_code == 2
    assert (
        "the backend openai:gpt-4o-mini differs from the run's in its settings (model, base URL"
        in refused.output
    )


def test_a_batch_record_of_an_earlier_run_in_the_folder_is_not_used(tmp_path, api, monkeypatch):
    from promptkit.evaluate import ResultsLog

    earlier = run_eval(tmp_path, "out", "--batch-api")
    assert earlier.exit_code == 0, earlier.output
    sent = len(api["uploads"])
    write = ResultsLog.write
    written: list[int] = []

    def write_two_then_stop(self: ResultsLog, *args: Any) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(1)
        write(self, *args)

    monkeypatch.setattr(ResultsLog, "write", write_two_then_stop)
    stopped = run_eval(tmp_path, "out")  # a new run in the same folder, stopped early
    assert stopped.exit_code == 130
    monkeypatch.setattr(ResultsLog, "write", write)
    resumed = run_eval(tmp_path, "out", "--batch-api", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert len(api["uploads"]) == sent + 2  # its own first batch and follow-up, not the old ones
    assert len(api["uploads"][sent]) == len(ROWS) * 2 - 2


def test_a_run_stopped_between_two_batches_sends_only_what_its_record_does_not_answer(
    tmp_path, api, monkeypatch
):
    monkeypatch.setattr(openai_batch.OpenAIBatch, "max_requests", 5)
    submit = openai_batch.OpenAIBatch.submit
    calls: list[int] = []

    def stop_at_the_second(self: Any, *args: Any) -> str:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return submit(self, *args)

    monkeypatch.setattr(openai_batch.OpenAIBatch, "submit", stop_at_the_second)
    stopped = run_eval(tmp_path, "out", "--batch-api")
    assert stopped.exit_code == 130
    rounds = json.loads((tmp_path / "out" / BATCHES_FILE).read_text())["rounds"]
    assert [len(ids) for ids in rounds] == [1]  # the first of three batches was sent
    monkeypatch.setattr(openai_batch.OpenAIBatch, "submit", submit)
    resumed = run_eval(tmp_path, "out", "--batch-api", "--resume")
    assert resumed.exit_code == 0, resumed.output
    first = {line["custom_id"] for line in api["uploads"][0]}
    again = {line["custom_id"] for lines in api["uploads"][1:3] for line in lines}
    assert len(first) == 5 and len(again) == 7 and not first & again
    direct = run_eval(tmp_path, "direct")
    assert direct.exit_code == 0, direct.output
    assert comparable(tmp_path / "out") == comparable(tmp_path / "direct")
