"""A test double: a backend that answers with scripted replies and records every request.

Use it to test an application built on promptkit without a model::

    backend = pk.backends.ScriptedBackend(['{"name": "Ada"}'])
    result = prompt.run({"text": "..."}, backend=backend)
    assert backend.requests[0].prompt == prompt.render({"text": "..."})
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..errors import BackendError, ConfigurationError
from ._base import (
    Backend,
    Capabilities,
    Completion,
    GenerationConfig,
    Message,
    PromptInput,
    Usage,
    cut_at_stop,
)
from ._options import check_known, flag, text, whole
from ._tool_calls import FunctionCall

__all__ = ["Request", "ScriptedBackend"]


@dataclass(frozen=True)
class Request:
    """One request the scripted backend received: the prompt as sent and the config."""

    prompt: PromptInput
    config: GenerationConfig


Reply = Union[str, Completion, FunctionCall, BaseException, Callable[[Request], str]]


def _count_words(prompt: PromptInput) -> int:
    if isinstance(prompt, str):
        return len(prompt.split())
    return sum(len(m["content"].split()) for m in prompt)


class ScriptedBackend(Backend):
    """Replies with the given texts in order and records each request in ``requests``.

    A reply may be a string, an exception instance (raised for that request, to test error
    handling) or a callable that receives the :class:`Request` and returns the text. Replies are
    cut at the request's stop sequences, as a real model's would be. Token usage counts
    whitespace-separated words. When the replies run out, a non-retryable
    :class:`~promptkit.errors.BackendError` says how many requests were served.

    ``chat=False`` makes it a completion-only model (chat messages arrive flattened to text);
    ``json_schema=True`` makes it stand in for an API with structured output: chat requests
    for an object output type then carry the schema as ``request.config.grammar`` (the replies
    are not checked against it: the script decides what the "model" says). ``tools=True``
    makes it an API that calls tools natively: a reply may then be a
    :class:`~promptkit.backends.FunctionCall` (the model calls that tool) or a whole
    :class:`~promptkit.backends.Completion` (text and calls), and the request's tools are in
    ``request.config.tools``.
    """

    def __init__(
        self,
        replies: Iterable[Reply] = (),
        *,
        name: str = "scripted",
        chat: bool = True,
        json_schema: bool = False,
        tools: bool = False,
        context_window: int | None = None,
    ):
        self.name = name
        self.capabilities = Capabilities(
            completion=True, chat=chat, streaming=True, json_schema=json_schema, tools=tools
        )
        self.context_window = context_window
        self.requests: list[Request] = []
        self._replies: deque[Reply] = deque(replies)
        self._lock = threading.Lock()

    def enqueue(self, *replies: Reply) -> None:
        """Add replies to the end of the script."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def remaining(self) -> int:
        """How many scripted replies have not been used yet."""
        return len(self._replies)

    def _answer(self, prompt: PromptInput, config: GenerationConfig) -> Completion:
        request = Request(prompt=prompt, config=config)
        with self._lock:
            self.requests.append(request)
            if not self._replies:
                raise BackendError(
                    f"ran out of scripted replies after {len(self.requests) - 1} request(s); "
                    "give ScriptedBackend one reply per expected request (or use enqueue())",
                    backend=self.name,
                )
            reply = self._replies.popleft()
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, FunctionCall):
            reply = Completion(text="", tool_calls=(reply,))
        if isinstance(reply, Completion):
            if reply.tool_calls and not config.tools:
                raise BackendError(
                    f"scripted reply {len(self.requests)} calls tools, but the request "
                    "offered none; script a text reply for it",
                    backend=self.name,
                )
            return reply
        text = reply(request) if callable(reply) else reply
        text, _ = cut_at_stop(text, config.stop)
        usage = Usage(prompt_tokens=_count_words(prompt), completion_tokens=len(text.split()))
        return Completion(text=text, usage=usage, finish_reason="stop")

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        return self._answer(text, config)

    def _chat(self, messages: list[Message], config: GenerationConfig) -> Completion:
        return self._answer(messages, config)

    def _stream_complete(
        self, text: str, config: GenerationConfig
    ) -> Generator[str, None, Completion]:
        """Yield the reply in word-sized pieces; return the whole Completion (as ``generate``
        gives it: usage and finish reason)."""
        completion = self._answer(text, config)
        yield from _pieces(completion.text)
        return completion

    def _stream_chat(
        self, messages: list[Message], config: GenerationConfig
    ) -> Generator[str, None, Completion]:
        """Stream the reply to ``messages`` (see :meth:`_stream_complete`)."""
        completion = self._answer(messages, config)
        yield from _pieces(completion.text)
        return completion


def _pieces(text: str) -> Iterator[str]:
    """Split text into word-sized pieces that join back to exactly the text."""
    start = 0
    for i in range(1, len(text)):
        if text[i] == " " and text[i - 1] != " ":
            yield text[start:i]
            start = i
    if start < len(text):
        yield text[start:]


_OPTIONS = ("replies", "name", "chat", "json_schema", "tools", "context_window")


def from_spec(arg: str, **options: Any) -> ScriptedBackend:
    """``scripted`` (replies from ``replies=``) or ``scripted:FILE``.

    FILE holds a JSON list of reply strings, or JSON Lines with one string per line.
    """
    check_known("scripted", {k: v for k, v in options.items() if k not in _OPTIONS}, _OPTIONS)
    for name in ("chat", "json_schema", "tools"):
        if name in options:
            flag("scripted", name, options[name])
    if options.get("context_window") is not None:
        whole("scripted", "context_window", options["context_window"], 1)
    text("scripted", "name", options.get("name"))
    replies: list[Reply] = list(options.pop("replies", []))
    if arg:
        path = Path(arg)
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read scripted replies from {arg!r}: {exc.strerror}; "
                "give a JSON file holding a list of reply strings"
            ) from exc
        replies.extend(_parse_replies(raw, arg))
    return ScriptedBackend(replies, **options)


def _parse_replies(raw: str, source: str) -> list[str]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigurationError(
                    f"{source}: line {number}: not JSON; scripted replies are a JSON list of "
                    "strings or JSON Lines with one string per line"
                ) from exc
    if not isinstance(data, list) or not all(isinstance(r, str) for r in data):
        raise ConfigurationError(f"{source}: scripted replies must be a list of strings")
    return data
