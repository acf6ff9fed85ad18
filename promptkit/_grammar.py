"""The grammar compiler: output types as decoding constraints, compiled by llguidance.

An output type (its :class:`~promptkit._parsing.OutputSpec`) becomes a :class:`Grammar`: a
pydantic model (or any JSON-typed output) its JSON schema in compact JSON (no free whitespace, so
a weak model cannot wander into endless spaces), labels (``Literal`` / ``Enum``) a choice,
``int`` / ``float`` / ``bool`` their JSON form, :class:`~promptkit._outputs.Regex` a regular
expression and :class:`~promptkit._outputs.Lark` a Lark grammar. One space may precede a JSON or
label answer (a model trained on ``"Answer: positive"`` writes one); the parser strips it.

Span grammars (:func:`span_grammar`): for one run, an output's
:class:`~promptkit._outputs.SpanOf` strings become stretches of that run's inputs. A span is
copied from its input from word to word, without leading or trailing spaces, and holds at least
one letter or digit; within a JSON answer it is a JSON string of such a stretch.

Checking text against a grammar uses a byte-level view of it (:mod:`promptkit._llg`), so it needs
no model tokenizer. llguidance is imported only when a grammar is compiled or checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._llg import byte_matcher, compile_grammar, text_matches
from ._outputs import (
    SPAN_KEY,
    Lark,
    Regex,
    has_letter_or_digit,
    span_source,
    span_sources,
    without_spans,
)
from .errors import ConstraintError

if TYPE_CHECKING:
    from llguidance import LLMatcher

    from ._parsing import OutputSpec

__all__ = ["Grammar", "grammar_for", "span_grammar"]

GrammarKind = Literal["json_schema", "choice", "regex", "lark"]


@dataclass(frozen=True)
class Grammar:
    """What constrained decoding must produce: ``kind`` and its ``source`` text.

    ``json_schema`` and ``choice`` sources are JSON (a schema, a list of labels); ``regex`` and
    ``lark`` sources are the pattern or grammar. ``leading_space`` lets one space precede the
    answer.
    """

    kind: GrammarKind
    source: str
    leading_space: bool = False

    @classmethod
    def json_schema(cls, schema: dict[str, Any], *, leading_space: bool = True) -> Grammar:
        return cls("json_schema", json.dumps(schema, ensure_ascii=False), leading_space)

    @classmethod
    def choice(cls, labels: tuple[str, ...], *, leading_space: bool = True) -> Grammar:
        return cls("choice", json.dumps(list(labels), ensure_ascii=False), leading_space)

    def compiled(self) -> str:
        """The llguidance grammar; raises ConstraintError naming what llguidance cannot do,
        ConfigurationError when llguidance is not installed."""
        if self.kind in ("regex", "lark"):
            return compile_grammar(self.kind, self.source, self.describe())
        if self.kind == "json_schema":
            schema = json.loads(self.source)
            schema = {**schema, "x-guidance": {"whitespace_flexible": False}}
            body = "%json " + json.dumps(schema, ensure_ascii=False)
        else:
            body = " | ".join(json.dumps(label) for label in json.loads(self.source))
        space = '" "? ' if self.leading_space else ""
        return compile_grammar("lark", f"start: {space}answer\nanswer: {body}\n", self.describe())

    def matches(self, text: str) -> bool:
        """Whether ``text`` is a complete answer of this grammar."""
        return text_matches(self.compiled(), text)

    def byte_matcher(self) -> LLMatcher:
        """A fresh matcher of this grammar over single bytes."""
        return byte_matcher(self.compiled())

    def describe(self) -> str:
        return {
            "json_schema": "JSON matching the output type's schema",
            "choice": "one of the labels",
            "regex": "the regular expression",
            "lark": "the Lark grammar",
        }[self.kind]


def grammar_for(spec: OutputSpec, inputs: Mapping[str, Any] | None = None) -> Grammar | None:
    """The grammar of an output type, or None for free text (nothing to constrain).

    ``inputs`` (a run's) render the bounds that come from them, so the grammar enforces them;
    without, such bounds are left out (validation still checks them in a run). Raises
    TemplateError when a bound's template fails."""
    if spec.kind == "text":
        return None
    if spec.kind == "label":
        return Grammar.choice(spec.labels)
    if spec.kind == "grammar":
        constraint = spec.text_constraint
        if isinstance(constraint, Regex):
            return Grammar("regex", constraint.pattern)
        assert isinstance(constraint, Lark)
        return Grammar("lark", constraint.grammar)
    return Grammar.json_schema(without_spans(spec.schema_for(inputs)))


def span_grammar(spec: OutputSpec, inputs: Mapping[str, Any]) -> Grammar | None:
    """The grammar of ``spec`` for one run, its :class:`~promptkit._outputs.SpanOf` strings
    restricted to the text of their inputs (at any depth: the output itself, properties of
    objects, ``anyOf`` options such as ``str | None``, items of arrays); None when the output
    type has no spans.

    Raises ConstraintError when a required span's input holds no letter or digit (no valid
    answer exists); an optional one (``str | None``) can then only be null.
    """
    schema = spec.schema_for(inputs)
    if not span_sources(schema):
        return None
    builder = _SpanGrammar(schema, inputs)
    try:
        if builder.is_span(schema):
            answer = builder.span(schema, quoted=spec.kind == "json")
        elif builder.has_span(schema):
            answer = builder.value(schema)
        else:
            return None
    except _NoSpan as missing:
        raise ConstraintError(
            f"no answer can be valid: the output copies a span from the input {missing.field!r}, "
            "which holds no letter or digit (a span must hold one); give that input some text, "
            "or make the output field optional"
        ) from None
    rules = "".join(f"\n{rule}" for rule in builder.rules)
    return Grammar("lark", f'start: " "? {answer}{rules}\n')


class _NoSpan(Exception):
    """Internal: the input a span is copied from holds no letter or digit."""

    def __init__(self, field: str):
        super().__init__(field)
        self.field = field


class _SpanGrammar:
    """Builds the Lark rules of one output schema with spans (see :func:`span_grammar`)."""

    def __init__(self, schema: dict[str, Any], inputs: Mapping[str, Any]):
        self.defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
        self.inputs = inputs
        self.rules: list[str] = []

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            name = schema["$ref"].rsplit("/", 1)[-1]
            return self.defs.get(name, schema)
        return schema

    def is_span(self, schema: Any) -> bool:
        schema = self.resolve(schema)
        return isinstance(schema, dict) and isinstance(schema.get(SPAN_KEY), str)

    def has_span(self, schema: Any) -> bool:
        """Whether a value of ``schema`` holds a span at any depth the grammar places them: an
        ``anyOf`` option, a property of an object (every property is written, in order), an
        array's items."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return False
        if self.is_span(schema):
            return True
        options = schema.get("anyOf")
        if isinstance(options, list):
            return any(self.has_span(o) for o in options)
        if self._whole_object(schema):
            return any(self.has_span(sub) for sub in schema["properties"].values())
        if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
            return self.has_span(schema["items"])
        return False

    @staticmethod
    def _whole_object(schema: dict[str, Any]) -> bool:
        return schema.get("type") == "object" and isinstance(schema.get("properties"), dict)

    def _object(self, schema: dict[str, Any]) -> str:
        """An object with every property in order, compact (as the JSON grammar writes it)."""
        members = ' "," '.join(
            f"{_lark_string(json.dumps(name, ensure_ascii=False) + ':')} {self.value(sub)}"
            for name, sub in schema["properties"].items()
        )
        return f'"{{" {members} "}}"' if members else '"{}"'

    def _array(self, schema: dict[str, Any]) -> str:
        """An array of ``items`` within ``minItems``/``maxItems``. Raises _NoSpan when it
        needs an item and no item can be valid."""
        low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
        try:
            item = self.value(schema["items"])
        except _NoSpan:
            if low:
                raise
            return '"[]"'
        name = f"ITEM_{len(self.rules)}"
        self.rules.append(f"{name.lower()}: {item}")
        item = name.lower()
        more = f'("," {item})*'
        if high is not None:  # the optional items after the required ones, nested
            more = ""
            for _ in range(int(high) - max(low, 1)):
                more = f'("," {item} {more})?'
        required = " ".join([item] + [f'"," {item}'] * (low - 1)) if low else ""
        inner = f"{required} {more}".strip() if low else f"({item} {more})?"
        if high == 0:
            return '"[]"'
        return f'"[" {inner} "]"'

    def value(self, schema: Any) -> str:
        """A Lark expression of one JSON value of ``schema``; raises _NoSpan when no value
        can be valid."""
        resolved = self.resolve(schema)
        if self.is_span(resolved):
            return self.span(resolved)
        if self.has_span(resolved) and self._whole_object(resolved):
            return self._object(resolved)
        if self.has_span(resolved) and resolved.get("type") == "array":
            return self._array(resolved)
        if self.has_span(resolved):
            options: list[str] = []
            impossible: _NoSpan | None = None
            for option in resolved["anyOf"]:
                try:
                    options.append(self.value(option))
                except _NoSpan as missing:
                    impossible = missing
            if not options and impossible is not None:
                raise impossible
            return "(" + " | ".join(options) + ")"
        embedded = without_spans(resolved) if isinstance(resolved, dict) else resolved
        if isinstance(embedded, dict):
            if self.defs and "$ref" in json.dumps(embedded):
                embedded = {**embedded, "$defs": without_spans(self.defs)}
            embedded = {**embedded, "x-guidance": {"whitespace_flexible": False}}
        return "%json " + json.dumps(embedded, ensure_ascii=False)

    def span(self, schema: dict[str, Any], *, quoted: bool = True) -> str:
        """A stretch of the input's text holding a letter or digit: as a JSON string, or
        (``quoted=False``, a text output) as it is. Raises _NoSpan when the input has none."""
        field = schema[SPAN_KEY]
        source = span_source(self.inputs, field)
        if not has_letter_or_digit(source):
            raise _NoSpan(field)
        chunks = _CHUNK.findall(source)
        if quoted:
            chunks = [json.dumps(chunk, ensure_ascii=False)[1:-1] for chunk in chunks]
        name = f"SPAN_{len(self.rules)}"
        lexeme = "%regex " + json.dumps({"substring_chunks": chunks}, ensure_ascii=False)
        # no leading or trailing space (escaped inside JSON, so there only " " is whitespace),
        # and a letter or digit that is not part of an escape such as \n or \u0007
        if quoted:
            lexeme += " & /[^ ](.*[^ ])?/ & " + _WORDY_JSON
        else:
            lexeme += r" & /\S([\s\S]*\S)?/ & /[\s\S]*[\p{L}\p{N}][\s\S]*/"
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            lexeme += f" & /{_full_match(pattern)}/"
        self.rules.append(f"{name}: {lexeme}")
        return f'"\\"" {name} "\\""' if quoted else name


# JSON string content holding a letter or digit outside its escapes
_WORDY_JSON = r"/(?:[^\\]|\\u[0-9a-fA-F]{4}|\\[^u])*[\p{L}\p{N}].*/"
_CHUNK = re.compile(r"\w+|\s+|[^\w\s]")  # the words, spaces and signs a span is made of


def _full_match(pattern: str) -> str:
    """A JSON-schema ``pattern`` (found anywhere in the string) as a whole-string regex."""
    anchored = pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$")
    body = f"(?:{pattern[1:-1]})" if anchored else f".*(?:{pattern}).*"
    return body.replace("/", "\\/")


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
