"""The output types users write, and the walkers of the JSON schemas they make.

:class:`Regex` and :class:`Lark` are output types themselves (``output_type=pk.Regex(r"...")``)
and ``Regex`` also works inside a model (``code: Annotated[str, pk.Regex(r"[A-Z]{3}")]``), where
it becomes the field's JSON-schema ``pattern``.

:class:`SpanOf` marks a string copied from an input (``name: Annotated[str, pk.SpanOf("text")]``,
or ``x-span-of: text`` in a template's schema). Every backend validates it (the answer must occur
in that input, or it is re-asked); constrained decoding also restricts it to the input's text,
from word to word (the span grammars of :mod:`promptkit._grammar`), so a model can only choose
where a span starts and ends, never misspell it.

Checking an answer against a :class:`Lark` grammar needs llguidance, imported on first use.
"""

from __future__ import annotations

import re
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from ._llg import compile_grammar, text_matches
from .errors import TemplateError

__all__ = [
    "SPAN_KEY",
    "Lark",
    "Regex",
    "SpanOf",
    "has_letter_or_digit",
    "span_source",
    "span_sources",
    "strip_annotated",
    "without_keywords",
    "without_spans",
]


@dataclass(frozen=True)
class Regex:
    """Text that matches a regular expression in full (an output type, or ``Annotated`` metadata).

    The syntax is the common subset of Python's ``re`` (used to validate answers) and Rust's
    ``regex`` (used by llguidance to constrain decoding): no look-around, no backreferences.
    """

    pattern: str

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise TemplateError(f"Regex needs a non-empty pattern string, got {self.pattern!r}")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise TemplateError(f"invalid regular expression {self.pattern!r}: {exc}") from None

    def matches(self, text: str) -> bool:
        """Whether the whole of ``text`` matches the pattern."""
        return re.fullmatch(self.pattern, text, flags=re.DOTALL) is not None

    def describe(self) -> str:
        return f"the regular expression {self.pattern}"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _text_validator(self, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema: dict[str, Any] = dict(handler(schema))
        json_schema["pattern"] = f"^(?:{self.pattern})$"
        return json_schema


@dataclass(frozen=True)
class Lark:
    """Text in the language of a Lark grammar (llguidance's dialect, ``start`` rule first).

    For experts: the grammar is the whole answer's format. Checking an answer against it needs
    llguidance.
    """

    grammar: str

    def __post_init__(self) -> None:
        if not isinstance(self.grammar, str) or not self.grammar.strip():
            raise TemplateError(f"Lark needs a grammar string, got {self.grammar!r}")

    def matches(self, text: str) -> bool:
        """Whether ``text`` is in the grammar's language; raises ConstraintError when
        llguidance cannot compile the grammar, ConfigurationError without llguidance."""
        return text_matches(compile_grammar("lark", self.grammar, "the Lark grammar"), text)

    def describe(self) -> str:
        return "the Lark grammar of the output type"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _text_validator(self, handler(source))


SPAN_KEY = "x-span-of"  # the JSON-schema keyword of a SpanOf string


@dataclass(frozen=True)
class SpanOf:
    """``Annotated`` metadata of a string that is copied from the input field ``field``.

    A span holds at least one letter or digit (``"."`` is not a name or a city). Validation,
    when the inputs are known (a run): the value must occur in that input as written, else the
    answer is refused (and re-asked) with a message saying so. Constrained decoding (local
    backends) restricts the value to a stretch of the input from word to word, without leading
    or trailing spaces, holding a letter or digit (and within the field's ``pattern``, if any).
    In the JSON schema it is the keyword ``x-span-of``, which is left out of what the model is
    shown.
    """

    field: str

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field.isidentifier():
            raise TemplateError(f"SpanOf needs the name of an input field, got {self.field!r}")

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        field = self.field

        def check(value: Any, info: core_schema.ValidationInfo) -> Any:
            inputs = (info.context or {}).get("inputs") if isinstance(info.context, dict) else None
            if not isinstance(value, str):
                return value
            if not has_letter_or_digit(value):
                raise PydanticCustomError(
                    "span_without_word",
                    "{value} holds no letter or digit; copy a word or name from the input {field}",
                    {"value": _quote(value), "field": repr(field)},
                )
            if not isinstance(inputs, Mapping):
                return value  # outside a run (no inputs to compare with)
            if value not in span_source(inputs, field):
                raise PydanticCustomError(
                    "not_a_span",
                    "{value} does not occur in the input {field}; copy it as written there",
                    {"value": _quote(value), "field": repr(field)},
                )
            return value

        return core_schema.with_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema: dict[str, Any] = dict(handler(schema))
        json_schema[SPAN_KEY] = self.field
        return json_schema


def span_source(inputs: Mapping[str, Any], field: str) -> str:
    """The text that spans of the input ``field`` are copied from (empty for None)."""
    value = inputs.get(field)
    return "" if value is None else value if isinstance(value, str) else str(value)


def has_letter_or_digit(text: str) -> bool:
    """Whether ``text`` holds a letter or digit (Unicode categories L and N, as ``\\p{L}`` and
    ``\\p{N}`` in the span grammar): what makes a span."""
    return any(unicodedata.category(char)[0] in "LN" for char in text)


def _quote(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def _text_validator(
    constraint: Regex | Lark, inner: core_schema.CoreSchema
) -> core_schema.CoreSchema:
    def check(value: Any) -> Any:
        if isinstance(value, str) and not constraint.matches(value):
            raise PydanticCustomError(
                "grammar_mismatch",
                "text does not match {what}",
                {"what": constraint.describe()},
            )
        return value

    return core_schema.no_info_after_validator_function(check, inner)


def without_keywords(schema: Any, keywords: frozenset[str]) -> Any:
    """``schema`` without the given keywords anywhere (property names are kept, whatever they
    are called)."""
    if isinstance(schema, dict):
        return {
            key: (
                {name: without_keywords(sub, keywords) for name, sub in value.items()}
                if key in ("properties", "$defs", "definitions")
                else without_keywords(value, keywords)
            )
            for key, value in schema.items()
            if key not in keywords
        }
    if isinstance(schema, list):
        return [without_keywords(item, keywords) for item in schema]
    return schema


def without_spans(schema: Any) -> Any:
    """``schema`` without the ``x-span-of`` keyword (for llguidance's JSON schemas, the OpenAI
    API and the format instructions a model is shown)."""
    return without_keywords(schema, frozenset({SPAN_KEY}))


def span_sources(schema: Any) -> set[str]:
    """The input fields that strings of ``schema`` are spans of (``x-span-of`` anywhere)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == SPAN_KEY and isinstance(value, str):
                found.add(value)
            elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for sub in value.values():
                    found |= span_sources(sub)
            else:
                found |= span_sources(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= span_sources(item)
    return found


def strip_annotated(tp: Any) -> Any:
    """The type under ``Annotated[...]`` (``tp`` itself when it is not annotated)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp
