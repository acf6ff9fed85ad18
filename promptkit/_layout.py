"""A prompt's parts and their layout: the compiled templates of the instruction, the query and
the fixed turns (with the places of its conversations), and how a rendering lays out its parts
(header, turns, demonstrations, conversation, query) as one completion string or as chat
messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._conversation import Message as ChatMessage
from ._conversation import ThreadSlot, thread_messages, turn_text
from ._templating import CompiledTemplate
from .backends._base import Message, PromptInput
from .errors import TemplateError, UsageError

__all__ = [
    "STYLES",
    "Style",
    "TemplateFormat",
    "Turn",
    "compile_parts",
    "continue_conversation",
    "lay_out",
    "render_turns",
]

Style = Literal["chat", "completion"]
TemplateFormat = Literal["jinja2", "mustache"]
STYLES: tuple[Style, ...] = ("chat", "completion")


@dataclass(frozen=True)
class Turn:
    """A fixed message between the instruction and the demonstrations."""

    role: str
    template: CompiledTemplate


def compile_parts(
    instruction: str,
    query: str,
    turns: Sequence[tuple[str, str] | ThreadSlot],
    *,
    source: str,
    first_lines: Mapping[str, int],
    folder: Path | None = None,
    template_format: TemplateFormat = "jinja2",
) -> tuple[CompiledTemplate, CompiledTemplate, tuple[Turn | ThreadSlot, ...]]:
    """The compiled instruction, query and turns (thread slots kept as they are);
    ``first_lines`` gives the file line where each part starts (``"instruction"``,
    ``"query"``, ``"turn0"``...) for error messages, ``folder`` the folder templates load
    others from, ``template_format`` the engine (``"mustache"``: chevron's).

    Raises UsageError for another template format, TemplateError for bad template syntax or a
    turn role other than user, assistant or system.
    """
    if template_format not in ("jinja2", "mustache"):
        raise UsageError(f"template_format must be 'jinja2' or 'mustache', got {template_format!r}")
    engine: type[CompiledTemplate] = CompiledTemplate
    if template_format == "mustache":
        from ._mustache import MustacheTemplate

        engine = MustacheTemplate

    def compile_part(part: str, text: str) -> CompiledTemplate:
        return engine(text, name=source, first_line=first_lines.get(part, 1), folder=folder)

    compiled = (
        compile_part("instruction", instruction),
        compile_part("query", query),
        tuple(
            turn
            if isinstance(turn, ThreadSlot)
            else Turn(turn[0], compile_part(f"turn{i}", turn[1]))
            for i, turn in enumerate(turns)
        ),
    )
    for turn in compiled[2]:
        if isinstance(turn, Turn) and turn.role not in ("user", "assistant", "system"):
            raise TemplateError(f"turn role must be user, assistant or system, not {turn.role!r}")
    return compiled


def render_turns(
    turns: Sequence[Turn | ThreadSlot], context: Mapping[str, Any]
) -> tuple[list[Message], int]:
    """The turns' messages (a thread slot's input messages in its place) and how many of them
    come before the first conversation (those go before the demonstrations)."""
    messages: list[Message] = []
    before_demos = 0
    in_conversation = False
    for turn in turns:
        if isinstance(turn, ThreadSlot):
            in_conversation = True
            messages.extend(thread_messages(context[turn.name]))
        else:
            messages.append(Message(role=turn.role, content=turn.template.render(context).strip()))
            before_demos += not in_conversation
    return messages, before_demos


def continue_conversation(
    history: Sequence[ChatMessage], asked: Sequence[Message], style: Style
) -> PromptInput:
    """A ``history`` that is the whole conversation so far (it starts with a system message)
    followed by the ``asked`` query alone: in completion style each message as ``Role: text``
    and the query, separated by blank lines; in chat style the messages."""
    if style == "completion":
        return "\n\n".join(
            [*(turn_text(m.as_chat()) for m in history), *(m["content"] for m in asked)]
        )
    return [*(m.as_chat() for m in history), *asked]


def lay_out(
    header: str,
    fixed: Sequence[Message],
    demos: Sequence[tuple[str, str]],
    rest: Sequence[Message],
    asked: Sequence[Message],
    style: Style,
) -> PromptInput:
    """A rendering's parts laid out: in completion style one string, the header, the ``fixed``
    turns' texts, each demonstration as ``query answer``, the ``rest`` of the messages (the
    conversation) as ``Role: text`` and the ``asked`` query (none for a prompt without one),
    separated by blank lines; in chat style the header as the system message, the fixed turns,
    each demonstration as a user and an assistant message, the rest and the query."""
    if style == "completion":
        parts = [header] if header else []
        parts.extend(m["content"] for m in fixed)
        parts.extend(f"{q} {a}" for q, a in demos)
        parts.extend(turn_text(m) for m in rest)
        parts.extend(m["content"] for m in asked)
        return "\n\n".join(parts)
    messages: list[Message] = []
    if header:
        messages.append(Message(role="system", content=header))
    messages.extend(fixed)
    for q, a in demos:
        messages.append(Message(role="user", content=q))
        messages.append(Message(role="assistant", content=a))
    messages.extend(rest)
    messages.extend(asked)
    return messages
