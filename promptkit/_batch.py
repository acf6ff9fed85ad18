"""One call over many inputs with at most ``concurrency`` in flight, in threads or on the event
loop, results in the inputs' order: the machinery of ``Prompt.run_batch`` and ``arun_batch``,
and of evaluation runs (:func:`run_as_completed`, which reports each result as it comes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from .errors import PromptkitError, UsageError

__all__ = ["arun_each", "run_as_completed", "run_each"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


def run_each(
    call: Callable[[ItemT], ResultT],
    items: Sequence[ItemT],
    *,
    concurrency: int,
    return_exceptions: bool,
) -> list[ResultT | Exception]:
    """``call(item)`` for every item in at most ``concurrency`` threads, in the items' order.

    With ``return_exceptions`` an item's promptkit error takes its place in the list instead of
    being raised. Raises UsageError when ``concurrency`` is not a positive integer.
    """
    from concurrent.futures import ThreadPoolExecutor

    _check_concurrency(concurrency)

    def one(item: ItemT) -> ResultT | Exception:
        try:
            return call(item)
        except PromptkitError as exc:
            if return_exceptions:
                return exc
            raise

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, items))


def run_as_completed(
    call: Callable[[ItemT], ResultT],
    items: Sequence[ItemT],
    *,
    concurrency: int,
    on_done: Callable[[int, ResultT], None],
) -> list[ResultT]:
    """``call(item)`` for every item, at most ``concurrency`` at once; ``on_done(index,
    result)`` runs in the calling thread as each call finishes (in the order they finish), and
    the results come back in the items' order.

    With ``concurrency`` 1 the calls run one after the other in the calling thread. An
    exception from a call or from ``on_done`` (KeyboardInterrupt included) cancels the calls
    not yet started, waits for those in flight (their results are dropped) and is raised.
    Raises UsageError when ``concurrency`` is not a positive integer.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    _check_concurrency(concurrency)
    results: dict[int, ResultT] = {}
    if concurrency == 1:
        for index, item in enumerate(items):
            results[index] = call(item)
            on_done(index, results[index])
        return [results[i] for i in range(len(items))]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        pending = {pool.submit(call, item): index for index, item in enumerate(items)}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    results[index] = future.result()
                    on_done(index, results[index])
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [results[i] for i in range(len(items))]


async def arun_each(
    call: Callable[[ItemT], Awaitable[ResultT]],
    items: Sequence[ItemT],
    *,
    concurrency: int,
    return_exceptions: bool,
) -> list[ResultT | Exception]:
    """The async twin of :func:`run_each`: at most ``concurrency`` calls awaited at once."""
    import asyncio

    _check_concurrency(concurrency)
    gate = asyncio.Semaphore(concurrency)

    async def one(item: ItemT) -> ResultT | Exception:
        async with gate:
            try:
                return await call(item)
            except Exception as exc:
                if return_exceptions and isinstance(exc, PromptkitError):
                    return exc
                raise

    return list(await asyncio.gather(*(one(i) for i in items)))


def _check_concurrency(concurrency: int) -> None:
    if not isinstance(concurrency, int) or concurrency < 1:
        raise UsageError(f"concurrency must be a positive integer, got {concurrency!r}")
