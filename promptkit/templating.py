"""Safe Jinja2 templates: sandboxed, strict about undefined names, with line numbers in errors.

Input values are data. Values are only ever substituted into a compiled template, never
compiled themselves, so ``{{ 7*7 }}`` inside a value stays text; chat roles are split from the
template *source* before rendering, so a value holding a line ``system:`` cannot start a message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import MissingVariableError, TemplateError

__all__ = ["CompiledTemplate", "Segment", "compile_template", "guess_language", "split_roles"]

# A role line as Prompty writes it: "system:", "user:", "assistant:" alone on a line, optionally
# preceded by "#" and followed by attributes in brackets (which are accepted and ignored).
_ROLE_LINE = re.compile(
    r"^[ \t]*#?[ \t]*(system|user|assistant|function|tool)[ \t]*(\[[^\]\n]*\])?[ \t]*:[ \t]*$",
    re.MULTILINE | re.IGNORECASE,
)

_LANGUAGE_HINTS: tuple[tuple[str, str], ...] = (
    (r"^\s*#include\s*<", "c++"),
    (r"^\s*package\s+main\b|^\s*func\s+\w+\(", "go"),
    (r"\bfn\s+\w+\s*\(|\blet\s+mut\b|\bimpl\b\s+\w+", "rust"),
    (r"\bpublic\s+(static\s+)?(class|void)\b|\bSystem\.out\.println\b", "java"),
    (r"^\s*(def|class)\s+\w+.*:\s*$|^\s*(from\s+\w+\s+)?import\s+\w+", "python"),
    (r"\b(const|let|var)\s+\w+\s*=|=>|\bfunction\s+\w+\s*\(|console\.log", "javascript"),
    (r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE\s+TABLE)\b", "sql"),
    (r"^#!/bin/(ba)?sh|^\s*echo\s", "bash"),
)


def guess_language(code: str, default: str = "python") -> str:
    """Guess a code snippet's programming language from telltale syntax (``default`` if none)."""
    for pattern, language in _LANGUAGE_HINTS:
        flags = re.MULTILINE | (re.IGNORECASE if language == "sql" else 0)
        if re.search(pattern, code, flags):
            return language
    return default


def _to_json(value: Any, indent: int | None = None) -> str:
    """``{{ value | tojson }}``: plain JSON (Jinja's own filter escapes for HTML)."""
    return json.dumps(value, indent=indent, ensure_ascii=False)


class _Environment(ImmutableSandboxedEnvironment):
    """The one Jinja2 environment: sandboxed, immutable values, undefined names are errors."""


_ENV = _Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
_ENV.filters["guess_language"] = guess_language
_ENV.filters["tojson"] = _to_json


@dataclass(frozen=True)
class Segment:
    """A slice of template source: its chat role (None before any role line) and first line."""

    role: str | None
    source: str
    line: int  # 1-based line of the segment's first source line in the file


def split_roles(body: str, first_line: int = 1) -> list[Segment]:
    """Split template source at role lines (``system:``, ``user:``, ``assistant:``).

    Text before the first role line has role None. ``function``/``tool`` roles are rejected:
    promptkit renders prompts, not tool calls.
    """
    segments: list[Segment] = []
    position, role, line = 0, None, first_line
    for match in _ROLE_LINE.finditer(body):
        segments.append(Segment(role, body[position : match.start()], line))
        line = first_line + body.count("\n", 0, match.end()) + 1
        role = match.group(1).lower()
        if role in ("function", "tool"):
            raise TemplateError(
                f"role {role!r} is not supported in templates; use system, user or assistant",
                line=line - 1,
            )
        position = match.end() + 1
    segments.append(Segment(role, body[position:], line))
    return [s for s in segments if s.role is not None or s.source.strip()]


class CompiledTemplate:
    """One compiled template and the variables it needs."""

    def __init__(self, source: str, *, name: str = "<template>", first_line: int = 1):
        self.source = source
        self.name = name
        self.first_line = first_line
        try:
            tree = _ENV.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                exc.message or "syntax error", source=name, line=self._line(exc)
            ) from None
        _reject_private_access(tree, name, self._line_of)
        self.variables: frozenset[str] = frozenset(meta.find_undeclared_variables(tree))
        self.variable_lines: dict[str, int] = {}
        for node in tree.find_all(nodes.Name):
            if node.ctx == "load" and node.name in self.variables:
                self.variable_lines.setdefault(node.name, self._line_of(node.lineno))
        self._template = _ENV.from_string(tree)
        self._pieces = _substitution_pieces(tree)
        self.constant = not self.variables

    def _line_of(self, lineno: int | None) -> int:
        return self.first_line + (lineno or 1) - 1

    def _line(self, exc: jinja2.TemplateSyntaxError) -> int:
        return self._line_of(exc.lineno)

    def render(self, context: Mapping[str, Any]) -> str:
        """Render with ``context``; raises MissingVariableError or TemplateError."""
        missing = self.variables.difference(context)
        if missing:
            raise MissingVariableError(missing, available=context.keys(), source=self.name)
        if self._pieces is not None:
            return "".join(p if isinstance(p, str) else str(context[p[0]]) for p in self._pieces)
        try:
            return self._template.render(context)
        except SecurityError as exc:
            raise TemplateError(
                f"unsafe template operation refused: {exc}", source=self.name
            ) from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{exc.message}", source=self.name) from None
        except jinja2.TemplateError as exc:
            raise TemplateError(str(exc), source=self.name) from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateError(
                f"rendering failed: {type(exc).__name__}: {exc}", source=self.name
            ) from None


def _substitution_pieces(tree: nodes.Template) -> list[str | tuple[str]] | None:
    """For a template that only substitutes plain names (``Text: {{ text }}``), its pieces:
    literal strings and ``(name,)`` tuples. Rendering those is a join, the same text Jinja2
    would produce, several times faster. None for anything else (filters, tags, expressions).
    """
    pieces: list[str | tuple[str]] = []
    for statement in tree.body:
        if not isinstance(statement, nodes.Output):
            return None
        for node in statement.nodes:
            if isinstance(node, nodes.TemplateData):
                pieces.append(node.data)
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                pieces.append((node.name,))
            else:
                return None
    return pieces


def _reject_private_access(tree: nodes.Template, name: str, line_of: Any) -> None:
    """Refuse ``x.__class__``, ``x['__globals__']`` and the like before anything runs."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            attr = node.arg.value if isinstance(node.arg.value, str) else None
        if attr is not None and attr.startswith("_"):
            raise TemplateError(
                f"access to private attribute {attr!r} is not allowed in templates",
                source=name,
                line=_lineno(node, line_of),
            )


def _lineno(node: nodes.Node, line_of: Any) -> int:
    return int(line_of(node.lineno))


def compile_template(
    source: str, *, name: str = "<template>", first_line: int = 1
) -> CompiledTemplate:
    """Compile template source (see :class:`CompiledTemplate`)."""
    return CompiledTemplate(source, name=name, first_line=first_line)
