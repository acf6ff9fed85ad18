"""The one thread that uses the model: batched generations, streams and scoring calls."""

from __future__ import annotations

import asyncio
import queue as queue_module
import threading
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import Future
from typing import Any, TypeVar

from ..backends._base import Backend, Completion, GenerationConfig, messages_to_text
from ._errors import api_error

R = TypeVar("R")


class Stream:
    """One streamed generation: the worker puts pieces, the response iterates them. Closing it
    (the client disconnected, or the response ended) stops the generation at its next piece."""

    def __init__(self, prompt: Any, config: GenerationConfig):
        self.prompt = prompt
        self.config = config
        self.text = ""  # what has been handed over so far
        self.completion: Completion | None = None  # what the backend's stream returned, if any
        self._closed = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop the generation at its next piece (the reader has gone)."""
        self._closed.set()

    def put(self, kind: str, value: Any) -> bool:
        """From the worker: hand over ``("piece", text)``, ``("end", None)`` or ``("error",
        exception)``; False when nobody reads any more."""
        if self.closed:
            return False
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone: the server is shutting down
            self.close()
            return False
        return True

    async def pieces(self) -> AsyncIterator[str]:
        """The text as it is generated; raises the generation's error as an ApiError."""
        while True:
            kind, value = await self._items.get()
            if kind == "end":
                return
            if kind == "error":
                raise api_error(value) from value
            self.text += value
            yield value


class Worker:
    """The one thread that uses the model. It takes the waiting jobs and runs generations with
    the same settings as one batch (``generate_batch``) when the backend has it, so each request
    gets what it would get alone; streams and scoring calls run in turn between batches."""

    def __init__(self, backend: Backend, max_batch: int = 32):
        self.backend = backend
        self.max_batch = max_batch
        self._batching = backend.capabilities.batching  # runs text prompts together
        self._queue: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="promptkit-worker", daemon=True)
        self._thread.start()

    async def generate(self, prompt: Any, config: GenerationConfig) -> Completion:
        """One generation (batched with others that share ``config``): its Completion.
        Raises the backend's error as an ApiError."""
        future: Future[Completion] = Future()
        self._queue.put(("generate", (prompt, config), future))
        try:
            return await asyncio.wrap_future(future)
        except Exception as exc:
            raise api_error(exc) from exc

    async def call(self, function: Callable[..., R], *args: Any) -> R:
        """Run ``function(*args)`` on the worker (it uses the model) and return its result.
        Raises its error as an ApiError."""
        future: Future[R] = Future()
        self._queue.put(("call", (function, args), future))
        try:
            return await asyncio.wrap_future(future)
        except Exception as exc:
            raise api_error(exc) from exc

    def open_stream(self, prompt: Any, config: GenerationConfig) -> Stream:
        """Queue one streamed generation; closing the stream stops it."""
        job = Stream(prompt, config)
        self._queue.put(("stream", job, None))
        return job

    def close(self) -> None:
        """Stop the thread once the jobs queued before this call are done."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            waiting = [first]
            while len(waiting) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue_module.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this round
                    break
                waiting.append(job)
            try:
                self._round(waiting)
            except Exception as exc:  # a fault outside the backend's calls: fail what is left
                _fail(waiting, exc)  # of this round and go on serving

    def _round(self, waiting: list[tuple[str, Any, Any]]) -> None:
        """Run the jobs taken together: generations grouped by config, then streams and
        calls in turn."""
        groups: dict[GenerationConfig, list[tuple[Any, Future[Any]]]] = {}
        for kind, payload, future in waiting:
            if kind == "generate" and future.set_running_or_notify_cancel():
                prompt, config = payload
                groups.setdefault(config, []).append((prompt, future))
        for config, group in groups.items():
            self._generate(config, group)
        for kind, payload, future in waiting:
            if kind == "stream":
                self._stream(payload)
            elif kind == "call" and future.set_running_or_notify_cancel():
                function, args = payload
                try:
                    future.set_result(function(*args))
                except Exception as exc:
                    future.set_exception(exc)

    def _generate(self, config: GenerationConfig, group: list[tuple[Any, Future[Any]]]) -> None:
        texts = [self._as_text(prompt) for prompt, _ in group]
        batchable = [t for t in texts if t is not None]
        if self._batching and len(group) > 1 and len(batchable) == len(group):
            try:
                results = self.backend.generate_batch(batchable, config)
            except Exception as exc:  # each request then fails with the same error
                for _, future in group:
                    future.set_exception(exc)
                return
            for (_, future), result in zip(group, results, strict=True):
                future.set_result(result)
            return
        for prompt, future in group:
            try:
                future.set_result(self.backend.generate(prompt, config))
            except Exception as exc:
                future.set_exception(exc)

    def _stream(self, job: Stream) -> None:
        """Generate ``job``'s pieces until the end, an error, or the reader going away."""
        if job.closed:
            return
        try:
            pieces = self.backend.stream(job.prompt, job.config)
            try:
                while True:
                    try:
                        piece = next(pieces)
                    except StopIteration as end:  # a stream may return its whole Completion
                        if isinstance(end.value, Completion):
                            job.completion = end.value
                        break
                    if not job.put("piece", piece):
                        return
            finally:
                if isinstance(pieces, Generator):
                    pieces.close()
        except Exception as exc:
            job.put("error", exc)
            return
        job.put("end", None)

    def _as_text(self, prompt: Any) -> str | None:
        """The prompt as the text a completion-only backend sees (None: send it as is)."""
        if isinstance(prompt, str):
            return prompt
        if self.backend.capabilities.chat:
            return None
        return messages_to_text(prompt)


def _fail(waiting: list[tuple[str, Any, Any]], error: Exception) -> None:
    """End every job of a round that has no answer yet with ``error``."""
    for kind, payload, future in waiting:
        if kind == "stream":
            payload.put("error", error)
        elif not future.done():
            future.set_exception(error)
