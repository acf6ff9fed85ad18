"""Streaming a run: :class:`StreamEvent` s with each new piece of text and the output so far.

``Prompt.stream`` and ``Prompt.astream`` drive the same :class:`~promptkit._runloop.RunLoop`
as ``run``: each attempt's text is streamed from the backend, every piece becomes an event
carrying its partial output (:mod:`promptkit._partial`), and when the attempt ends the loop
judges the whole text. A refused attempt ends with an event carrying its ``error``, then the
re-ask streams as the next attempt, its partial starting again; an accepted one ends with the
event whose ``result`` is what ``run`` returns (``partial`` is then ``result.output``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._partial import PartialOutput
from ._runloop import Request, Result, RunLoop
from .backends._base import Completion, Usage, messages_to_text

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = ["StreamEvent", "astream_run", "stream_run"]

OutputT = TypeVar("OutputT")


@dataclass(frozen=True)
class StreamEvent(Generic[OutputT]):
    """One step of a streamed run.

    Every piece of text the model writes is one event (``delta`` the piece, ``partial`` the
    output so far: see :mod:`promptkit._partial`). An attempt ends with an event whose
    ``delta`` is empty: with ``error`` set when the answer is refused (a re-ask follows, as
    attempt ``attempt + 1``), or with ``result`` set when it is accepted (the last event).
    """

    delta: str  # the text this event adds ("" on an attempt's closing event)
    partial: Any  # the output so far; on the last event, the validated output (result.output)
    attempt: int  # which attempt the text belongs to, from 1
    text: str  # the attempt's raw text so far
    error: str | None = None  # why the attempt was refused (its closing event only)
    result: Result[OutputT] | None = None  # what run returns (the last event only)

    @property
    def done(self) -> bool:
        """Whether this is the last event (the run's result)."""
        return self.result is not None


class _Attempts(Generic[OutputT]):
    """The state of a streamed run between the backend's pieces, shared by sync and async."""

    def __init__(self, loop: RunLoop[OutputT], backend: Backend):
        self._loop = loop
        self._backend = backend
        self._attempt = 0
        self._text = ""
        self._partial = PartialOutput(loop.spec, loop.inputs)
        self._request: Request | None = None

    def start(self) -> Request:
        """The next attempt's request; its partial starts again."""
        self._request = self._loop.next_request()
        self._attempt += 1
        self._text = ""
        self._partial = PartialOutput(self._loop.spec, self._loop.inputs)
        return self._request

    def piece(self, piece: str) -> StreamEvent[OutputT]:
        self._text += piece
        return StreamEvent(piece, self._partial.update(self._text), self._attempt, self._text)

    def end(self, returned: object) -> StreamEvent[OutputT]:
        """The closing event of the attempt; ``returned`` is what the backend's stream
        returned (its Completion, with usage and finish reason, when it gives one).

        Raises OutputValidationError (with every attempt) when the last attempt is refused.
        """
        completion = returned if isinstance(returned, Completion) else self._counted()
        result = self._loop.accept(completion)
        if result is None:
            error = self._loop.attempts[-1].error
            return StreamEvent("", self._partial.value, self._attempt, completion.text, error)
        return StreamEvent("", result.output, self._attempt, completion.text, result=result)

    def _counted(self) -> Completion:
        """The attempt as a Completion when the stream gave only text: tokens counted with the
        backend's :meth:`~promptkit.backends.Backend.count_tokens` (exact on local backends,
        an estimate on APIs), ``"length"`` when it produced ``max_tokens``."""
        assert self._request is not None
        prompt = self._request.prompt
        sent = prompt if isinstance(prompt, str) else messages_to_text(prompt)
        produced = self._backend.count_tokens(self._text) if self._text else 0
        usage = Usage(self._backend.count_tokens(sent), produced)
        if produced >= self._request.config.max_tokens:
            return Completion(self._text, usage, "length")
        return Completion(self._text, usage, "stop")


def stream_run(loop: RunLoop[OutputT], backend: Backend) -> Iterator[StreamEvent[OutputT]]:
    """Stream ``loop``'s attempts from ``backend`` (see the module docstring). Leaving the
    iteration early closes the backend's stream, which stops generating."""
    attempts = _Attempts(loop, backend)
    while True:
        request = attempts.start()
        pieces = backend.stream(request.prompt, request.config)
        returned: object = None
        try:
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as end:  # a stream may return its whole Completion
                    returned = end.value
                    break
                if piece:
                    yield attempts.piece(piece)
        finally:
            if isinstance(pieces, Generator):
                pieces.close()
        event = attempts.end(returned)
        yield event
        if event.done:
            return


async def astream_run(
    loop: RunLoop[OutputT], backend: Backend
) -> AsyncIterator[StreamEvent[OutputT]]:
    """The async twin of :func:`stream_run`, over the backend's ``astream``."""
    attempts = _Attempts(loop, backend)
    while True:
        request = attempts.start()
        pieces = backend.astream(request.prompt, request.config)
        try:
            async for piece in pieces:
                if piece:
                    yield attempts.piece(piece)
        finally:
            if isinstance(pieces, AsyncGenerator):
                await pieces.aclose()
        event = attempts.end(None)
        yield event
        if event.done:
            return
