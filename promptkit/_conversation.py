"""Conversations as data: :class:`Message`, message-list inputs and where they go in a template.

A ``list[pk.Message]`` input (Prompty's ``kind: thread``) becomes chat messages of its own at
its place in the template, a :class:`ThreadSlot`; it is never rendered into text and parsed back,
so a line ``system:`` inside a message's content stays content.

In template source a slot is written three ways, all recognised before anything renders:
Prompty 1's ``![thread]`` line (the input named ``thread``; text after it in its block is a
user message, as Prompty sends it), a message-list input alone on a line (``{{ history }}``,
Prompty 2), and Prompty's history loop ``{% for item in history %}{{ item.role }}:
{{ item.content }}{% endfor %}``, which would otherwise make roles out of rendered data.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

from .backends import _base
from .backends._messages import ToolCallData
from .errors import InputValidationError, TemplateError, UsageError

__all__ = [
    "Message",
    "MessageToolCall",
    "SourcePiece",
    "ThreadSlot",
    "history_loop_names",
    "is_thread_type",
    "split_threads",
    "thread_messages",
    "turn_text",
    "unplaced_threads",
    "with_history",
]


class MessageToolCall(BaseModel):
    """A tool call inside an assistant :class:`Message`: ``arguments`` is the JSON text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    arguments: str


class Message(BaseModel):
    """One chat message as typed data: ``pk.Message(role="user", content="Hi")``.

    Use ``list[pk.Message]`` as an input's type to pass a conversation to a prompt. An
    assistant message that called tools has ``tool_calls``; a ``tool`` message (a call's
    result) has the ``tool_call_id`` of the call it answers.
    Raises pydantic's ValidationError (InputValidationError through a prompt) for another role,
    non-text content, or tool fields on the wrong role.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[MessageToolCall, ...] = ()
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message (and only a tool message) has a tool_call_id")
        return self

    def as_chat(self) -> _base.Message:
        """The message in the backends' ``{"role", "content"}`` form (with its tool fields)."""
        message = _base.Message(role=self.role, content=self.content)
        if self.tool_calls:
            message["tool_calls"] = [
                ToolCallData(id=c.id, name=c.name, arguments=c.arguments) for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass(frozen=True)
class ThreadSlot:
    """The place of a message-list input (``name``) among a prompt's turns."""

    name: str


def is_thread_type(annotation: Any) -> bool:
    """Whether an input's type is a message list (``list[Message]``, optional or not)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return any(is_thread_type(a) for a in typing.get_args(annotation) if a is not type(None))
    args = typing.get_args(annotation)
    return origin in (list, Sequence) and len(args) == 1 and args[0] is Message


def thread_messages(value: Iterable[Message] | None) -> list[_base.Message]:
    """A validated message-list input as chat messages (None: no messages)."""
    return [m.as_chat() for m in value or ()]


def turn_text(message: _base.Message) -> str:
    """A conversation's message in a completion prompt, with its role (as
    :func:`~promptkit.backends._base.messages_to_text` writes it)."""
    return f"{message['role'].capitalize()}: {message['content']}"


def unplaced_threads(
    fields: Mapping[str, FieldInfo],
    used: frozenset[str],
    slots: Sequence[str],
    source: str,
    printed: frozenset[str] = frozenset(),
) -> list[ThreadSlot]:
    """Slots for the message-list inputs (among an input type's ``fields``) that no turn
    places and no template uses: they go after the fixed turns, before the query. Raises
    TemplateError for a slot whose input is not a message list, or a message list that a
    template prints into text as it is (``{{ history }}`` inside a line)."""
    for name in sorted(printed):
        if name in fields and is_thread_type(fields[name].annotation):
            raise TemplateError(
                f"input {name!r} is a conversation, which is messages of its own, not text: "
                f"write {{{{ {name} }}}} alone on a line of a template file's body, leave it "
                "out of the templates (it then goes before the query), or loop over its "
                "messages",
                source=source,
            )
    for name in slots:
        if name not in fields or not is_thread_type(fields[name].annotation):
            raise TemplateError(
                f"{name!r} is placed as a conversation (a thread of messages) but is not a "
                "list[pk.Message] input; declare it with that type (kind: thread in a file)",
                source=source,
            )
    return [
        ThreadSlot(name)
        for name, field in fields.items()
        if is_thread_type(field.annotation) and name not in used and name not in slots
    ]


def with_history(
    inputs: Mapping[str, Any] | BaseModel,
    history: Sequence[Message | Mapping[str, Any]] | None,
    threads: Sequence[str],
) -> tuple[Mapping[str, Any] | BaseModel, list[Message]]:
    """A run's inputs and the conversation it continues: a prompt with one message-list input
    (``threads``) takes ``history`` there. Raises UsageError when that input is given too or
    there are several, InputValidationError for a message that does not validate."""
    if history is None:
        return inputs, []
    try:
        messages = TypeAdapter(list[Message]).validate_python(list(history))
    except (ValidationError, TypeError) as exc:
        raise InputValidationError(f"history: {exc}") from None
    if not threads:
        return inputs, messages
    given = inputs.model_fields_set if isinstance(inputs, BaseModel) else set(inputs)
    if len(threads) > 1 or threads[0] in given:
        names = ", ".join(repr(t) for t in threads)
        raise UsageError(
            f"history= and the conversation input {names} both give the conversation; "
            f"pass the messages once, as history= or as {names}"
        )
    return {**dict(inputs), threads[0]: messages}, []


@dataclass(frozen=True)
class SourcePiece:
    """A piece of a template body: a role's text (``role``, ``source``, file ``line``) or,
    when ``thread`` is set, the slot of that message-list input."""

    role: str | None
    source: str
    line: int
    thread: str | None = None


# Prompty 1's placeholder for the input named "thread".
_THREAD_LINE = re.compile(r"^[ \t]*!\[thread\][ \t]*\n?", re.MULTILINE)
# Prompty's history loop, in any spacing and with or without whitespace control.
_HISTORY_LOOP = re.compile(
    r"^[ \t]*\{%-?\s*for\s+(?P<item>\w+)\s+in\s+(?P<name>\w+)\s*-?%\}\s*"
    r"\{\{-?\s*(?P=item)\.role\s*-?\}\}[ \t]*:[ \t]*\n\s*"
    r"\{\{-?\s*(?P=item)\.content\s*-?\}\}\s*"
    r"\{%-?\s*endfor\s*-?%\}[ \t]*\n?",
    re.MULTILINE,
)


def _input_line(name: str) -> re.Pattern[str]:
    return re.compile(r"^[ \t]*\{\{-?\s*" + re.escape(name) + r"\s*-?\}\}[ \t]*\n?", re.MULTILINE)


def history_loop_names(body: str) -> list[str]:
    """The inputs that Prompty's history loop walks in ``body``, in order."""
    return [m.group("name") for m in _HISTORY_LOOP.finditer(body)]


def split_threads(
    role: str | None, source: str, line: int, threads: Iterable[str]
) -> list[SourcePiece]:
    """One block of template source (its ``role`` and first file ``line``) cut at its thread
    slots: ``![thread]``, the history loop, and ``threads`` (message-list inputs) alone on a
    line. Text after ``![thread]`` is a user message; after the others it keeps its role."""
    cuts: list[tuple[int, int, str, str | None]] = []  # start, end, input, role after
    for match in _THREAD_LINE.finditer(source):
        cuts.append((match.start(), match.end(), "thread", "user"))
    for match in _HISTORY_LOOP.finditer(source):
        cuts.append((match.start(), match.end(), match.group("name"), role))
    for name in threads:
        for match in _input_line(name).finditer(source):
            cuts.append((match.start(), match.end(), name, role))
    pieces: list[SourcePiece] = []
    position, current = 0, role
    for start, end, name, after in sorted(cuts, key=lambda cut: cut[0]):
        if start < position:
            continue  # inside a cut already made (a slot line within a loop)
        first = line + source.count("\n", 0, position)
        pieces.append(SourcePiece(current, source[position:start], first))
        pieces.append(SourcePiece(None, "", line + source.count("\n", 0, start), thread=name))
        position, current = end, after
    pieces.append(SourcePiece(current, source[position:], line + source.count("\n", 0, position)))
    return [p for p in pieces if p.thread is not None or p.source.strip()]
