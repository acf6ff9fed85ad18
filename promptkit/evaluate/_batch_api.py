"""An evaluation through a provider's Batch API (``promptkit eval --batch-api``).

Every item run (each template, shot count and item the results log does not hold yet) starts
its run loop; the first request of each becomes one line of a batch, the batch is submitted and
waited for, and each answer goes back to its loop. A loop that accepts writes its item's result;
one whose answer failed validation asks again (the re-ask :meth:`Prompt.run` would send), and
those requests make a follow-up batch, until every item has its answer or has used
``max_attempts``. An item whose request failed (an error line, an expired batch) keeps the
error in its result, as in a direct run.

A round's requests go in one batch per endpoint, or several when they exceed the API's limits
(OpenAI: 50,000 requests, 200 MB). Batch ids are kept in ``DIR/batches.json`` as each batch is
created, so a run stopped while it waits continues with ``--resume``: the loops are started
again (their requests are the same), the recorded batches are waited for and read, and only
the requests they do not answer are sent. The answers do not go through the response cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._demos import Selection, Strategy
from .._runloop import RunLoop
from ..backends._base import Backend, BatchAPI, Completion, encode_line
from ..errors import (
    BackendError,
    ConfigurationError,
    OutputValidationError,
    PromptkitError,
    UsageError,
)
from ._grading import Grading
from ._metrics import compare_runs
from ._plan import EvalOutcome, EvalPlan, plan_config
from ._resume import ResultsLog
from ._runs import EvalItem, ItemRun, PoolPrompts, summarize
from ._sandbox import Sandbox
from ._schema import ItemResult

__all__ = ["BATCHES_FILE", "run_batch_evaluation"]

BATCHES_FILE = "batches.json"


@dataclass
class _Pending:
    """One item run waiting for its answer."""

    template: str
    shots: int
    item: EvalItem
    loop: RunLoop[Any]
    run: ItemRun
    began: float

    def failed(self, exc: PromptkitError) -> ItemResult:
        """The item's record after ``exc``."""
        return self.run.failed(self.item, self.began, exc)


def run_batch_evaluation(
    plan: EvalPlan,
    *,
    backend: Backend,
    api: BatchAPI,
    log: ResultsLog,
    select: Selection | Strategy | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_attempts: int = 1,
    on_item: Callable[[], None] | None = None,
    grader: Backend | None = None,
    sandbox: Sandbox | None = None,
) -> EvalOutcome:
    """:func:`run_evaluation` with ``backend``'s requests sent as batches through ``api``
    (``backend.batch_api()``; see the module docstring); the results go to ``log`` and the
    batch ids next to it. Assertions are checked as :func:`evaluate` checks them (``grader``
    and ``sandbox`` likewise).

    Raises what starting a run raises for a bad item before any batch is sent, and
    BackendError when a batch cannot be sent, fails or is not done in time (a resume waits
    for it again).
    """
    record = _BatchRecord(log.path.parent / BATCHES_FILE, log.run_id)
    pending: dict[str, _Pending] = {}

    def finish(template: str, shots: int, result: ItemResult) -> None:
        log.write(template, shots, result)
        if on_item is not None:
            on_item()

    grading = Grading(sandbox or Sandbox(), grader)
    grading.prepare(item.assertions for items in plan.items.values() for item in items)
    for index, (name, prompt) in enumerate(plan.prompts.items()):
        config = plan_config(prompt, max_tokens, temperature, top_p)
        run = ItemRun(prompt, backend, select, config, max_attempts, "generate", grading)
        demonstrations = PoolPrompts(prompt, plan.pools[name])
        done = log.done.get(name, {})
        for count in plan.shots:
            for item in plan.items[name]:
                if (count, item.line) in done:
                    continue
                key = f"{index}-{count}-{item.line}"
                began = time.perf_counter()
                runner = demonstrations.for_item(item) if count else demonstrations.whole
                try:
                    loop = runner.start(
                        item.inputs,
                        backend=backend,
                        shots=min(count, len(runner.examples)),
                        max_attempts=max_attempts,
                        config=config,
                        select=select,
                    )
                except PromptkitError as exc:  # e.g. a prompt too long for the model
                    finish(name, count, run.failed(item, began, exc))
                    continue
                pending[key] = _Pending(name, count, item, loop, run, began)
    rounds = 0
    while pending:
        answers: dict[str, Completion | PromptkitError] = {}
        for batch_id in record.batches(rounds):  # sent before this run was stopped
            answers |= api.answers(api.wait(batch_id))
        groups = _Groups(api.max_requests, api.max_bytes)
        for key, waiting in list(pending.items()):
            request = waiting.loop.next_request()
            if key in answers:
                continue
            try:
                groups.add(api.line(key, request.prompt, request.config))
            except PromptkitError as exc:  # a request the backend would refuse to send
                finish(waiting.template, waiting.shots, waiting.failed(exc))
                del pending[key]
        sent = []
        for lines in groups.parts:
            sent.append(api.submit(lines, {"promptkit": f"eval round {rounds + 1}"}))
            record.add(rounds, sent[-1])
        for batch_id in sent:
            answers |= api.answers(api.wait(batch_id))
        for key, waiting in list(pending.items()):
            answer = answers.get(key)
            if answer is None:
                answer = BackendError(
                    f"round {rounds + 1}'s batches hold no answer for this item (see "
                    f"{BATCHES_FILE})",
                    backend=backend.name,
                    kind="bad_response",
                )
            try:
                if isinstance(answer, PromptkitError):
                    result = waiting.failed(answer)
                else:
                    accepted = waiting.loop.accept(answer)
                    if accepted is None:
                        continue  # re-asked in the next round's batch
                    result = waiting.run.succeeded(waiting.item, waiting.began, accepted)
            except OutputValidationError as exc:  # no attempts left; it keeps every one
                result = waiting.failed(exc)
            finish(waiting.template, waiting.shots, result)
            del pending[key]
        rounds += 1
    runs = {
        name: [
            summarize(
                count,
                plan.items[name],
                [log.done[name][(count, item.line)] for item in plan.items[name]],
                records=prompt.output.is_object,
            )
            for count in plan.shots
        ]
        for name, prompt in plan.prompts.items()
    }
    return EvalOutcome(runs, compare_runs(*runs.values()) if len(runs) == 2 else [])


class _Groups:
    """A round's lines split into batches: one endpoint each, within the API's limits."""

    def __init__(self, max_requests: int, max_bytes: int):
        self.parts: list[list[dict[str, Any]]] = []
        self._limits = (max_requests, max_bytes)
        self._open: dict[str, tuple[int, int]] = {}  # per endpoint: its open part, its bytes

    def add(self, line: dict[str, Any]) -> None:
        """Put ``line`` in its endpoint's open batch, or start the next one when it is full.
        Raises UsageError for a line larger than a whole batch may be."""
        endpoint, size = str(line["url"]), len(encode_line(line))
        most_requests, most_bytes = self._limits
        if size > most_bytes:
            raise UsageError(f"the request is {size} bytes; a batch holds at most {most_bytes}")
        part, used = self._open.get(endpoint, (-1, 0))
        if part < 0 or len(self.parts[part]) >= most_requests or used + size > most_bytes:
            self.parts.append([])
            part, used = len(self.parts) - 1, 0
        self.parts[part].append(line)
        self._open[endpoint] = (part, used + size)


class _BatchRecord:
    """``batches.json``: per round (the first batch, then each follow-up), the ids of the
    batches sent, written as soon as each exists; it belongs to the run ``run_id`` (a record of
    another run, which the folder held before, is replaced)."""

    def __init__(self, path: Path, run_id: str):
        self._path = path
        self._run_id = run_id
        self._rounds: list[list[str]] = []
        if not path.is_file():
            return
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record["run"] == run_id:
                self._rounds = [[str(i) for i in ids] for ids in record["rounds"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"{path}: not a record of batch ids ({exc}); remove it to send the pending "
                "items again"
            ) from None

    def batches(self, round_: int) -> list[str]:
        """The ids of the batches sent in round ``round_`` (0: the first)."""
        return list(self._rounds[round_]) if round_ < len(self._rounds) else []

    def add(self, round_: int, batch_id: str) -> None:
        """Record a batch the moment it exists."""
        while len(self._rounds) <= round_:
            self._rounds.append([])
        self._rounds[round_].append(batch_id)
        partial = self._path.with_suffix(".partial")
        record = {"run": self._run_id, "rounds": self._rounds}
        partial.write_text(json.dumps(record) + "\n", encoding="utf-8")
        partial.replace(self._path)
