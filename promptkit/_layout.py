"""A prompt's parts and their layout: the compiled templates of the instruction, the query and
the fixed turns, and how a rendering lays out its parts (header, turns, demonstrations, query)
as one completion string or as chat messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .backends.base import Message, PromptInput
from .errors import TemplateError
from .templating import CompiledTemplate

__all__ = ["STYLES", "Style", "Turn", "compile_parts", "lay_out"]

Style = Literal["chat", "completion"]
STYLES: tuple[Style, ...] = ("chat", "completion")


@dataclass(frozen=True)
class Turn:
    """A fixed message between the instruction and the demonstrations."""

    role: str
    template: CompiledTemplate


def compile_parts(
    instruction: str,
    query: str,
    turns: Sequence[tuple[str, str]],
    *,
    source: str,
    first_lines: Mapping[str, int],
) -> tuple[CompiledTemplate, CompiledTemplate, tuple[Turn, ...]]:
    """The compiled instruction, query and turns; ``first_lines`` gives the file line where
    each part starts (``"instruction"``, ``"query"``, ``"turn0"``...) for error messages.

    Raises TemplateError for bad template syntax or a turn role other than user, assistant or
    system.
    """

    def compile_part(part: str, text: str) -> CompiledTemplate:
        return CompiledTemplate(text, name=source, first_line=first_lines.get(part, 1))

    compiled = (
        compile_part("instruction", instruction),
        compile_part("query", query),
        tuple(Turn(role, compile_part(f"turn{i}", text)) for i, (role, text) in enumerate(turns)),
    )
    for role, _ in turns:
        if role not in ("user", "assistant", "system"):
            raise TemplateError(f"turn role must be user, assistant or system, not {role!r}")
    return compiled


def lay_out(
    header: str,
    turns: Sequence[tuple[str, str]],
    demos: Sequence[tuple[str, str]],
    query: str,
    style: Style,
) -> PromptInput:
    """A rendering's parts laid out: in completion style one string, the header, the turns'
    texts, each demonstration as ``query answer`` and the query, separated by blank lines; in
    chat style the header as the system message, the turns, each demonstration as a user and
    an assistant message, and the query as the last user message."""
    if style == "completion":
        parts = [header] if header else []
        parts.extend(text for _, text in turns)
        parts.extend(f"{q} {a}" for q, a in demos)
        parts.append(query)
        return "\n\n".join(parts)
    messages: list[Message] = []
    if header:
        messages.append(Message(role="system", content=header))
    messages.extend(Message(role=role, content=text) for role, text in turns)
    for q, a in demos:
        messages.append(Message(role="user", content=q))
        messages.append(Message(role="assistant", content=a))
    messages.append(Message(role="user", content=query))
    return messages
