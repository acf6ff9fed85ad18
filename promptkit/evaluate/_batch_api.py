"""An evaluation through a provider's Batch API (``promptkit eval --batch-api``).

Every item run (each template, shot count and item the results log does not hold yet) starts
its run loop; the first request of each becomes one line of a batch, the batch is submitted and
waited for, and each answer goes back to its loop. A loop that accepts writes its item's result;
one whose answer failed validation asks again (the re-ask :meth:`Prompt.run` would send), and
those requests make a follow-up batch, until every item has its answer or has used
``max_attempts``. An item whose request failed (an error line, an expired batch) keeps the
error in its result, as in a direct run.

Batch ids are kept in ``DIR/batches.json`` as each batch is created, so a run stopped while it
waits continues with ``--resume``: the loops are started again (their requests are the same)
and the recorded batches are waited for and read instead of being sent again.
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
from ..backends._base import Backend, BatchAPI
from ..errors import BackendError, ConfigurationError, PromptkitError
from ._metrics import compare_runs
from ._plan import EvalOutcome, EvalPlan, plan_config
from ._resume import ResultsLog
from ._runs import EvalItem, ItemRun, PoolPrompts, summarize

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
) -> EvalOutcome:
    """:func:`run_evaluation` with ``backend``'s requests sent as batches through ``api``
    (``backend.batch_api()``; see the module docstring); the results go to ``log`` and the
    batch ids next to it.

    Raises what starting a run raises for a bad item before any batch is sent, and
    BackendError when a batch cannot be sent, fails or is not done in time (a resume waits
    for it again).
    """
    record = _BatchRecord(log.path.parent / BATCHES_FILE, fresh=not log.resumed)
    pending: dict[str, _Pending] = {}
    for index, (name, prompt) in enumerate(plan.prompts.items()):
        config = plan_config(prompt, max_tokens, temperature, top_p)
        run = ItemRun(prompt, backend, select, config, max_attempts, "generate")
        demonstrations = PoolPrompts(prompt, plan.pools[name])
        done = log.done.get(name, {})
        for count in plan.shots:
            for item in plan.items[name]:
                if (count, item.line) in done:
                    continue
                runner = demonstrations.for_item(item) if count else demonstrations.whole
                loop = runner.start(
                    item.inputs,
                    backend=backend,
                    shots=min(count, len(runner.examples)),
                    max_attempts=max_attempts,
                    config=config,
                    select=select,
                )
                began = time.perf_counter()
                pending[f"{index}-{count}-{item.line}"] = _Pending(
                    name, count, item, loop, run, began
                )
    rounds = 0
    while pending:
        requests = {key: p.loop.next_request() for key, p in pending.items()}
        batch_id = record.batch(rounds)
        if batch_id is None:
            lines = [api.line(key, r.prompt, r.config) for key, r in requests.items()]
            batch_id = api.submit(lines, {"promptkit": f"eval round {rounds + 1}"})
            record.add(batch_id)
        answers = api.answers(api.wait(batch_id))
        for key in list(pending):
            waiting = pending[key]
            answer = answers.get(key) or BackendError(
                f"batch {batch_id} holds no answer for this item",
                backend=backend.name,
                kind="bad_response",
            )
            result = None
            try:
                if isinstance(answer, PromptkitError):
                    raise answer
                accepted = waiting.loop.accept(answer)
                if accepted is None:
                    continue  # re-asked in the next batch
                result = waiting.run.succeeded(waiting.item, waiting.began, accepted)
            except PromptkitError as exc:  # OutputValidationError keeps every attempt
                result = waiting.run.failed(waiting.item, waiting.began, exc)
            log.write(waiting.template, waiting.shots, result)
            del pending[key]
            if on_item is not None:
                on_item()
        rounds += 1
    runs = {
        name: [
            summarize(
                count,
                [log.done[name][(count, item.line)] for item in plan.items[name]],
                records=prompt.output.is_object,
            )
            for count in plan.shots
        ]
        for name, prompt in plan.prompts.items()
    }
    return EvalOutcome(runs, compare_runs(*runs.values()) if len(runs) == 2 else [])


class _BatchRecord:
    """``batches.json``: the id of each batch of the run, in the order they were sent, written
    as soon as a batch exists."""

    def __init__(self, path: Path, *, fresh: bool):
        self._path = path
        self._ids: list[str] = []
        if fresh:
            path.unlink(missing_ok=True)
        elif path.is_file():
            try:
                ids = json.loads(path.read_text(encoding="utf-8"))["batches"]
                self._ids = [str(i) for i in ids]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigurationError(
                    f"{path}: not a record of batch ids ({exc}); remove it to send the "
                    "pending items again"
                ) from None

    def batch(self, round_: int) -> str | None:
        """The id of the batch sent in round ``round_`` (0: the first), if one was."""
        return self._ids[round_] if round_ < len(self._ids) else None

    def add(self, batch_id: str) -> None:
        """Record the next round's batch."""
        self._ids.append(batch_id)
        partial = self._path.with_suffix(".partial")
        partial.write_text(json.dumps({"batches": self._ids}) + "\n", encoding="utf-8")
        partial.replace(self._path)
