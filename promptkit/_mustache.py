"""Mustache templates (Prompty's ``template: mustache``), rendered by chevron, the library
Prompty itself uses, escaping as it does (``{{x}}`` HTML-escaped, ``{{{x}}}`` and ``{{& x}}``
not), under the limits of :mod:`promptkit._template_limits`.

Mustache has no expressions, so a template can only walk its data: values are data (turned
into plain JSON-like values first, so no object's methods or attributes are reachable), keys
starting with ``_`` are refused, and before chevron runs, an upper bound of the rendered size
(each tag's size times the longest list to the power of its section depth) is held to
``max_length``. Partials (``{{> name}}``) load ``name.mustache`` from the template's own
folder when it loads, like ``{% include %}``; a name at the top level of the template must be
an input (as in Jinja), names inside sections may also be the items' fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import _template_limits as _limits
from ._references import read_confined
from ._template_limits import LIMITS, TemplateLimits
from ._templating import CompiledTemplate
from .errors import MissingVariableError, TemplateError

__all__ = ["MustacheTemplate"]

Token = tuple[str, str]
_MAX_PARTIALS = 32  # partials one template may reach
_OPENING = ("section", "inverted section")
_LOOKUPS = ("variable", "no escape", *_OPENING)  # the tags that look a key up


def _chevron(source: str) -> Any:
    try:
        import chevron  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise TemplateError(
            "mustache templates are rendered by the chevron package, which is not installed; "
            "pip install chevron (or write the template in jinja2)",
            source=source,
        ) from None
    return chevron


class MustacheTemplate(CompiledTemplate):
    """One compiled mustache template and the inputs it needs; renders under ``limits``.

    Raises TemplateError for a syntax error, a private key, a partial that cannot load (or any
    partial without a ``folder``).
    """

    def __init__(
        self,
        source: str,
        *,
        name: str = "<template>",
        first_line: int = 1,
        limits: TemplateLimits = LIMITS,
        folder: Path | None = None,
    ):
        self.source = source
        self.name = name
        self.first_line = first_line
        self.limits = limits
        self._partials: dict[str, list[Token]] = {}
        self._tokens = self._tokenize(source, name)
        self._load_partials(self._tokens, folder)
        top = {
            key.split(".")[0]
            for kind, key, depth in _walk(self._tokens)
            if depth == 0 and kind in _LOOKUPS
        }
        self.variables = frozenset(key for key in top if key != ".")
        self.printed = frozenset(
            key
            for kind, key, depth in _walk(self._tokens)
            if depth == 0 and kind in ("variable", "no escape")
        )
        self.variable_lines = {key: first_line for key in self.variables}
        self.constant = not any(kind != "literal" for kind, _ in self._tokens)

    def _tokenize(self, source: str, shown: str) -> list[Token]:
        chevron = _chevron(self.name)
        try:
            tokens: list[Token] = list(chevron.tokenizer.tokenize(source))
        except chevron.tokenizer.ChevronError as exc:
            message = " ".join(str(exc).split())
            raise TemplateError(f"mustache syntax error: {message}", source=shown) from None
        for kind, key in tokens:
            if kind not in ("literal", "set delimiter") and any(
                part.startswith("_") for part in key.split(".")
            ):
                raise TemplateError(
                    f"access to private attribute {key!r} is not allowed in templates",
                    source=self.name,
                    line=self.first_line,
                )
        return tokens

    def _load_partials(self, tokens: list[Token], folder: Path | None) -> None:
        pending = [key for kind, key in tokens if kind == "partial"]
        while pending:
            partial = pending.pop()
            if partial in self._partials:
                continue
            if folder is None or len(self._partials) == _MAX_PARTIALS:
                why = "needs a template file's folder" if folder is None else "is one too many"
                raise TemplateError(
                    f"mustache partial {partial!r} {why} (at most {_MAX_PARTIALS} partials, "
                    "loaded from the template's own folder)",
                    source=self.name,
                )
            shown = f"mustache partial {partial!r}"
            if Path(partial).is_absolute() or ".." in Path(partial).parts:
                raise TemplateError(
                    f"{shown}: partials are loaded only from this template's own folder "
                    f"({folder}); name one there, without '..' or an absolute path",
                    source=self.name,
                )
            data = read_confined(f"{partial}.mustache", folder, folder, shown, self.name, None)[1]
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise TemplateError(f"{shown} is not UTF-8 text", source=self.name) from None
            self._partials[partial] = self._tokenize(text, f"{self.name} ({shown})")
            pending.extend(key for kind, key in self._partials[partial] if kind == "partial")

    def render(self, context: Mapping[str, Any]) -> str:
        """Render with ``context`` under the template's limits.

        Raises MissingVariableError for a missing input, TemplateError for a value that is not
        plain data or a rendering whose size bound is over ``max_length`` (the message names
        the limit).
        """
        import pydantic_core

        missing = self.variables.difference(context)
        if missing:
            raise MissingVariableError(missing, available=context.keys(), source=self.name)
        try:
            data = pydantic_core.to_jsonable_python(dict(context))
        except pydantic_core.PydanticSerializationError as exc:
            raise TemplateError(
                f"mustache renders plain data (text, numbers, lists, mappings): {exc}",
                source=self.name,
            ) from None
        _limits.start(self.limits)
        size = _Sizer(self._partials, _limits.active(), self.name).size(self._tokens, [data])
        _limits.active().length(size, "the rendered mustache text")
        text: str = _chevron(self.name).render(
            template=self._tokens, data=data, partials_dict=self._partials, partials_path=""
        )
        return text


_MISSING = object()


class _Sizer:
    """The size of what chevron will render, found first without building it, looking keys
    up as chevron does: one step per tag, and a key that chevron would look up as an attribute
    or method of a value (``name.upper``, ``items.append``) is refused."""

    def __init__(self, partials: Mapping[str, list[Token]], budget: Any, source: str) -> None:
        self.partials = partials
        self.budget = budget
        self.source = source

    def size(
        self, tokens: list[Token], scopes: list[Any], padding: int = 0, before: int = 0
    ) -> int:
        """Characters ``tokens`` render to: ``padding`` bounds the indentation chevron adds
        after each newline of a partial's text, ``before`` the text already written on the
        same output (the indentation of a partial comes from its line)."""
        total, index = 0, 0
        while index < len(tokens):
            kind, key = tokens[index]
            self.budget.charge(1, "a mustache tag")
            if kind == "literal":
                total += len(key) + key.count("\n") * padding
            elif kind in ("variable", "no escape"):
                total += _text_size(self.lookup(key, scopes), kind == "variable", self.budget)
            elif kind == "partial":
                total += self.nested(self.partials[key], scopes, padding + before + total, 0)
            elif kind in _OPENING:
                end = _matching_end(tokens, index)
                inner, value = tokens[index + 1 : end], self.lookup(key, scopes)
                if kind == "inverted section":
                    if not value:
                        total += self.nested(inner, [True, *scopes], padding, before + total)
                elif isinstance(value, list):
                    for item in value:
                        total += self.nested(inner, [item, *scopes], padding, 0)
                elif value:
                    total += self.nested(inner, [value, *scopes], padding, before + total)
                index = end
            self.budget.length(before + total, "the rendered mustache text")
            index += 1
        return total

    def nested(self, tokens: list[Token], scopes: list[Any], padding: int, before: int) -> int:
        """:meth:`size` one section or partial deeper, within ``max_depth``."""
        self.budget.depth += 1
        try:
            if self.budget.depth > self.budget.limits.max_depth:
                raise _limits.exceeded(
                    "max_depth",
                    self.budget.limits.max_depth,
                    "mustache sections and partials nest past",
                )
            return self.size(tokens, scopes, padding, before)
        finally:
            self.budget.depth -= 1

    def lookup(self, key: str, scopes: list[Any]) -> Any:
        """The value chevron finds for ``key`` ('' when none)."""
        if key == ".":
            return scopes[1] if scopes[0] is True and len(scopes) > 1 else scopes[0]
        for scope in scopes:
            value = scope
            for child in key.split("."):
                value = self._child(value, child, key)
                if value is _MISSING:
                    break
            else:
                return value if value in (0, False) else value or ""
        return ""

    def _child(self, value: Any, child: str, key: str) -> Any:
        if isinstance(value, dict):
            return value.get(child, _MISSING)
        if not hasattr(value, child):
            if isinstance(value, list) and child.lstrip("-").isdigit():
                index = int(child)
                return value[index] if -len(value) <= index < len(value) else _MISSING
            return _MISSING
        raise TemplateError(
            f"mustache key {key!r} reaches the {child!r} attribute of a "
            f"{type(value).__name__}; templates may only look up keys of mappings and "
            "indexes of lists",
            source=self.source,
        )


def _matching_end(tokens: list[Token], start: int) -> int:
    """The index of the 'end' token closing the section opened at ``start``."""
    depth = 0
    for index in range(start, len(tokens)):
        kind = tokens[index][0]
        depth += kind in _OPENING
        depth -= kind == "end"
        if depth == 0:
            return index
    return len(tokens)


def _text_size(value: Any, escaped: bool, budget: Any) -> int:
    """The characters chevron writes for a value (HTML-escaped when ``escaped``)."""
    text = value if isinstance(value, str) else None
    if text is None:
        return _limits.text_size(value, budget) * (6 if escaped else 1)
    if not escaped:
        return len(text)
    return (
        len(text)
        + 4 * text.count("&")
        + 3 * (text.count("<") + text.count(">"))
        + 5 * text.count('"')
    )


def _walk(tokens: list[Token]) -> list[tuple[str, str, int]]:
    """Each token with its section depth."""
    walked, depth = [], 0
    for kind, key in tokens:
        if kind == "end":
            depth -= 1
            continue
        walked.append((kind, key, depth))
        if kind in _OPENING:
            depth += 1
    return walked
