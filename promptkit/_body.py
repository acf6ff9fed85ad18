"""A template file's body, cut at its role lines and conversation slots (from the source,
before anything renders) into the instruction, the fixed turns and conversation slots, and the
query, with the file line where each starts."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ._conversation import SourcePiece, ThreadSlot, split_threads
from ._templating import split_roles
from .errors import TemplateError

__all__ = ["body_parts"]


def body_parts(body: str, first_line: int, source: str, threads: Collection[str]) -> dict[str, Any]:
    """The parts of ``body`` (``threads``: the message-list inputs a line may name):
    ``instruction``, ``turns``, ``query`` (None without one), ``plain`` (no role lines) and
    ``lines``. Raises TemplateError for an empty body, a tool role or a body that ends with
    an assistant block."""
    try:
        segments = split_roles(body, first_line)
    except TemplateError as exc:
        raise TemplateError(exc.reason, source=source, line=exc.line) from None
    pieces = [p for seg in segments for p in split_threads(seg.role, seg.source, seg.line, threads)]
    return _parts(pieces, source)


def _parts(pieces: list[SourcePiece], source: str) -> dict[str, Any]:
    """The instruction (the leading system text), the turns (fixed messages and conversation
    slots) and the query (a final user block; None when the body ends with a conversation or
    has only system text)."""
    if not pieces:
        raise TemplateError(
            "the template body is empty; write the query after the front matter", source=source
        )
    if len(pieces) == 1 and pieces[0].role is None and pieces[0].thread is None:
        only = pieces[0]
        return {
            "plain": True,
            "query": only.source.strip("\n"),
            "instruction": "",
            "turns": [],
            "lines": {"query": only.line + _leading_newlines(only.source)},
        }
    last = pieces[-1]
    lines: dict[str, int] = {}
    query = None
    if last.thread is None and last.role == "user":
        lines["query"] = last.line + _leading_newlines(last.source)
        query = last.source.strip("\n")
        pieces = pieces[:-1]
    elif last.thread is None and any(p.role not in (None, "system") for p in pieces):
        raise TemplateError(
            "the body must end with a 'user:' block holding the query (or a conversation, "
            "or have only a system block)",
            source=source,
            line=last.line - 1,
        )
    instruction: list[str] = []
    turns: list[tuple[str, str] | ThreadSlot] = []
    for piece in pieces:
        if piece.thread is not None:
            turns.append(ThreadSlot(piece.thread))
        elif piece.role in (None, "system") and not turns:
            instruction.append(piece.source.strip("\n"))
            lines.setdefault("instruction", piece.line + _leading_newlines(piece.source))
        else:
            lines[f"turn{len(turns)}"] = piece.line + _leading_newlines(piece.source)
            turns.append((piece.role or "system", piece.source.strip("\n")))
    return {
        "plain": False,
        "query": query,
        "instruction": "\n\n".join(instruction),
        "turns": turns,
        "lines": lines,
    }


def _leading_newlines(text: str) -> int:
    return len(text) - len(text.lstrip("\n"))
