"""Chat messages as backends take them: the :class:`Message` shape (tool calls and results
included), its validation, and the flattening of a conversation into plain messages or one text
prompt for a model without a tools slot, or that only completes text; a call is then written
``<tool_call>{"name": ..., "arguments": ...}</tool_call>``, as a model that emulates tool
calling writes it (:mod:`promptkit.backends._tool_calls`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from typing_extensions import NotRequired

from ..errors import InputValidationError

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "ROLES",
    "Message",
    "ToolCallData",
    "check_messages",
    "emulated_text",
    "messages_to_text",
    "plain_messages",
]

# How a model without native tool calling writes a call (Hermes / Qwen style).
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


class ToolCallData(TypedDict):
    """A call inside an assistant message (``message["tool_calls"]``): ``arguments`` is JSON."""

    id: str
    name: str
    arguments: str


class Message(TypedDict):
    """One chat message: ``{"role": "system" | "user" | "assistant" | "tool", "content": "..."}``.

    An assistant message that called tools has ``tool_calls``; a ``tool`` message (a call's
    result) has the ``tool_call_id`` of the call it answers.
    """

    role: str
    content: str
    tool_calls: NotRequired[list[ToolCallData]]
    tool_call_id: NotRequired[str]


def messages_to_text(messages: Sequence[Message]) -> str:
    """Flatten chat messages into one prompt for a model that only completes text.

    Each message becomes ``"Role: content"``, separated by blank lines, ending with
    ``"Assistant:"`` so that the model writes the next assistant turn. Tool calls and results
    are written as text first (see :func:`plain_messages`).
    """
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in plain_messages(messages)]
    parts.append("Assistant:")
    return "\n\n".join(parts)


def check_messages(messages: Sequence[Any]) -> list[Message]:
    """Validate a list of chat messages; raises InputValidationError naming the bad one."""
    if not isinstance(messages, (list, tuple)):
        raise InputValidationError(
            f"a prompt must be a string or a list of messages, got {type(messages).__name__}"
        )
    if not messages:
        raise InputValidationError("the prompt has no messages; pass at least one user message")
    checked: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not {"role", "content"} <= set(m) <= _MESSAGE_KEYS:
            raise InputValidationError(
                f"message {i} must be a mapping with the keys 'role' and 'content' (and "
                f"'tool_calls' or 'tool_call_id' for tool calls and results), got {m!r}"
            )
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            raise InputValidationError(
                f"message {i} needs a role in {ROLES} and string content, got role "
                f"{m['role']!r} and content of type {type(m['content']).__name__}"
            )
        checked.append(_checked_tool_fields(i, m))
    return checked


_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id"})


def _checked_tool_fields(i: int, m: Mapping[str, Any]) -> Message:
    """Message ``i`` with its tool fields checked: ``tool_calls`` only on an assistant message
    (a list of ``{"id", "name", "arguments"}`` strings), ``tool_call_id`` on every ``tool``
    message and nowhere else. Raises InputValidationError naming the message."""
    message = Message(role=m["role"], content=m["content"])
    if "tool_calls" in m:
        calls = m["tool_calls"]
        keys = {"id", "name", "arguments"}
        if m["role"] != "assistant" or not isinstance(calls, (list, tuple)):
            raise InputValidationError(
                f"message {i}: only an assistant message has tool_calls, as a list"
            )
        for call in calls:
            if not (
                isinstance(call, Mapping)
                and set(call) == keys
                and all(isinstance(call[k], str) for k in keys)
            ):
                raise InputValidationError(
                    f"message {i}: each tool call is {{'id', 'name', 'arguments'}} strings "
                    f"(arguments as JSON), got {call!r}"
                )
        message["tool_calls"] = [
            ToolCallData(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in calls
        ]
    if (m["role"] == "tool") != ("tool_call_id" in m) or not isinstance(
        m.get("tool_call_id", ""), str
    ):
        raise InputValidationError(
            f"message {i}: a tool message (and only a tool message) has a string "
            "tool_call_id, the id of the call whose result it holds"
        )
    if "tool_call_id" in m:
        message["tool_call_id"] = m["tool_call_id"]
    return message


def plain_messages(messages: Sequence[Message]) -> list[Message]:
    """Messages without tool fields, for a model that has no tools slot: an assistant's calls
    become its text (as it writes them), a tool's result a user message naming the call."""
    plain = []
    for m in messages:
        calls = m.get("tool_calls") or []
        if calls:
            content = "\n".join([m["content"], *(emulated_text(c) for c in calls)]).strip()
            plain.append(Message(role="assistant", content=content))
        elif m["role"] == "tool":
            call_id = m.get("tool_call_id", "")
            plain.append(Message(role="user", content=f"Tool result ({call_id}):\n{m['content']}"))
        else:
            plain.append(Message(role=m["role"], content=m["content"]))
    return plain


def emulated_text(call: ToolCallData) -> str:
    """A call as an emulating model writes it (what :func:`parse_emulated` reads)."""
    try:
        arguments = json.loads(call["arguments"])
    except json.JSONDecodeError:
        arguments = call["arguments"]  # the model's text, kept as it was
    payload = json.dumps(
        {"name": call["name"], "arguments": arguments}, ensure_ascii=False, separators=(",", ":")
    )
    return f"{CALL_OPEN}{payload}{CALL_CLOSE}"
