"""Concurrent generation calls on one local model, run together as batches.

A local backend's forward pass reads every weight of the model whatever the number of rows it
computes, so a few short prompts (the items of an evaluation after the prefix cache served their
shared demonstrations) cost nearly as much one by one as together. :class:`Coalescer` lets
threads that call ``generate`` at the same time (``promptkit eval --concurrency N``,
``Prompt.run_batch(..., concurrency=N)``) share passes: the first caller leads, the others wait;
the leader takes every waiting request with the same :class:`GenerationConfig` (at most
``max_rows``) and runs them as one batch, then hands the lead to the next waiting request. A
leader waits up to ``gather_s`` until as many requests wait as the previous batch held (of any
config), so that the callers, each back with its next request a moment after its answer, keep
meeting in batches. A lone caller does not wait, except once after a burst of concurrent calls
(at most ``gather_s``). A caller interrupted while it waits (KeyboardInterrupt) leaves the
queue and passes on the lead it may hold; a ``run_batch`` that calls :meth:`~Coalescer.run`
again runs that call directly.

Each request gets what it would get alone, up to the rounding of products of another number of
rows (the same tokens in float32 in practice; in bfloat16, int8 and int4 a near-tie can go the
other way: see the README on batches). When a batch fails, its requests
run again one by one, so each gets its own answer or its own error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from ._types import GenerationConfig

__all__ = ["Coalescer"]

_LEADING = threading.local()  # .coalescer: the Coalescer whose batch this thread is running

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class _Request(Generic[ItemT, ResultT]):
    def __init__(self, item: ItemT, config: GenerationConfig):
        self.item = item
        self.config = config
        self.lead = False  # handed the lead by the previous batch's leader
        self.done = False
        self.result: ResultT | None = None
        self.error: BaseException | None = None

    def outcome(self) -> ResultT:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Coalescer(Generic[ItemT, ResultT]):
    """Runs ``run_batch(items, config)`` (results in the items' order) for concurrent
    :meth:`run` calls that share a config, at most ``max_rows`` items a batch."""

    def __init__(
        self,
        run_batch: Callable[[list[ItemT], GenerationConfig], Sequence[ResultT]],
        *,
        max_rows: int = 32,
        gather_s: float = 0.02,
    ):
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self._run_batch = run_batch
        self._max_rows = max_rows
        self._gather_s = gather_s
        self._changed = threading.Condition()
        self._pending: list[_Request[ItemT, ResultT]] = []
        self._busy = False  # a leader is gathering or running a batch
        self._last = 1  # requests in the last batch: how many a leader waits for

    def run(self, item: ItemT, config: GenerationConfig) -> ResultT:
        """``run_batch([item], config)[0]``, computed in a batch with the concurrent calls that
        share ``config``; raises what computing it alone would raise."""
        if self._leading_here():  # from inside a batch: nobody else could lead meanwhile
            results = self._run_batch([item], config)
            return results[0]
        me: _Request[ItemT, ResultT] = _Request(item, config)
        leading = False
        with self._changed:
            self._pending.append(me)
            self._changed.notify_all()  # a gathering leader may be waiting for it
            try:
                if self._busy:
                    self._changed.wait_for(lambda: me.done or me.lead)
                    if me.done:
                        return me.outcome()
                self._busy = leading = True
                batch = self._gather(me)
            except BaseException:  # interrupted while waiting or gathering
                self._leave(me, leading or me.lead)
                raise
        self._lead(batch)
        return me.outcome()

    def _leading_here(self) -> bool:
        """Whether this thread is running one of this Coalescer's batches."""
        leading: object = getattr(_LEADING, "coalescer", None)
        return leading is self

    def _leave(self, me: _Request[ItemT, ResultT], held_lead: bool) -> None:
        """Take ``me`` out of the queue, its caller gone, and pass on the lead it held (the lock
        is held)."""
        self._pending = [request for request in self._pending if request is not me]
        if held_lead:
            self._hand_over()
        self._changed.notify_all()

    def _hand_over(self) -> None:
        """Give the lead to the oldest waiting request, or free it (the lock is held)."""
        if self._pending:
            self._pending[0].lead = True
        else:
            self._busy = False

    def _gather(self, me: _Request[ItemT, ResultT]) -> list[_Request[ItemT, ResultT]]:
        """Take ``me`` and the waiting requests that share its config, after waiting up to
        ``gather_s`` until as many requests wait as the last batch held, whatever their
        configs (callers with other configs are back too; the lock is held)."""
        wanted = min(self._last, self._max_rows)
        deadline = time.monotonic() + self._gather_s
        while len(self._pending) < wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.wait(left)
        batch = self._alike(me)[: self._max_rows]  # ``me`` first: the oldest of its config
        taken = {id(request) for request in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        self._last = len(batch)
        return batch

    def _alike(self, me: _Request[ItemT, ResultT]) -> list[_Request[ItemT, ResultT]]:
        return [request for request in self._pending if request.config == me.config]

    def _lead(self, batch: list[_Request[ItemT, ResultT]]) -> None:
        """Run ``batch`` (each request alone when the batch fails), record every outcome and
        hand the lead to the oldest waiting request."""
        _LEADING.coalescer = self
        try:
            try:
                results = self._run_batch([r.item for r in batch], batch[0].config)
                for request, result in zip(batch, results, strict=True):
                    request.result = result
            except Exception as exc:
                if len(batch) == 1:
                    batch[0].error = exc
                else:
                    for request in batch:
                        self._alone(request)
        except BaseException as exc:  # KeyboardInterrupt: every request of the batch raises it
            for request in batch:
                if request.result is None and request.error is None:
                    request.error = exc
            raise
        finally:
            _LEADING.coalescer = None
            with self._changed:
                for request in batch:
                    request.done = True
                self._hand_over()
                self._changed.notify_all()

    def _alone(self, request: _Request[ItemT, ResultT]) -> None:
        try:
            (request.result,) = self._run_batch([request.item], request.config)
        except Exception as exc:
            request.error = exc
