"""Output types as decoding constraints, compiled by llguidance.

An output type becomes a :class:`Grammar`: a pydantic model (or any JSON-typed output) its JSON
schema in compact JSON (no free whitespace, so a weak model cannot wander into endless spaces),
labels (``Literal`` / ``Enum``) a choice, ``int`` / ``float`` / ``bool`` their JSON form,
:class:`Regex` a regular expression and :class:`Lark` a Lark grammar. One space may precede a
JSON or label answer (a model trained on ``"Answer: positive"`` writes one); the parser strips it.

:class:`Regex` and :class:`Lark` are output types themselves (``output_type=pk.Regex(r"...")``)
and ``Regex`` also works inside a model (``code: Annotated[str, pk.Regex(r"[A-Z]{3}")]``), where
it becomes the field's JSON-schema ``pattern``.

:class:`SpanOf` marks a string copied from an input (``name: Annotated[str, pk.SpanOf("text")]``,
or ``x-span-of: text`` in a template's schema). Every backend validates it (the answer must occur
in that input, or it is re-asked); constrained decoding also restricts it to the input's text,
from word to word, so a model can only choose where a span starts and ends, never misspell it.

Checking text against a grammar and finding a short valid ending for a partial answer (what keeps
constrained decoding inside its token budget) use a byte-level view of the grammar, so they need
no model tokenizer. llguidance is imported only when a grammar is compiled or checked.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from .errors import ConfigurationError, ConstraintError, TemplateError

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

    from .parsing import OutputSpec

__all__ = [
    "SPAN_KEY",
    "Grammar",
    "Lark",
    "Regex",
    "SpanOf",
    "grammar_for",
    "has_letter_or_digit",
    "shortest_ending",
    "span_source",
    "span_sources",
]

GrammarKind = Literal["json_schema", "choice", "regex", "lark"]
BYTE_EOS = 256  # the end token of the byte-level tokenizer


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise ConfigurationError(
            "constrained decoding and grammar checks need llguidance: "
            "pip install 'promptkit[local]' (or pip install llguidance)"
        ) from None
    return llguidance


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
        return Grammar("lark", self.grammar).matches(text)

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
        """The llguidance grammar; raises ConstraintError naming what llguidance cannot do."""
        return _compile(self)

    def matches(self, text: str) -> bool:
        """Whether ``text`` is a complete answer of this grammar."""
        matcher = self.byte_matcher()
        return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()

    def byte_matcher(self) -> LLMatcher:
        """A fresh matcher of this grammar over single bytes."""
        matcher: LLMatcher = _llguidance().LLMatcher(byte_tokenizer(), self.compiled(), log_level=0)
        return matcher

    def describe(self) -> str:
        return {
            "json_schema": "JSON matching the output type's schema",
            "choice": "one of the labels",
            "regex": "the regular expression",
            "lark": "the Lark grammar",
        }[self.kind]


@lru_cache(maxsize=512)
def _compile(grammar: Grammar) -> str:
    llg = _llguidance()
    matcher_cls = llg.LLMatcher
    if grammar.kind == "regex":
        compiled: str = matcher_cls.grammar_from_regex(grammar.source)
    elif grammar.kind == "lark":
        compiled = matcher_cls.grammar_from_lark(grammar.source)
    else:
        if grammar.kind == "json_schema":
            schema = json.loads(grammar.source)
            schema = {**schema, "x-guidance": {"whitespace_flexible": False}}
            body = "%json " + json.dumps(schema, ensure_ascii=False)
        else:
            body = " | ".join(json.dumps(label) for label in json.loads(grammar.source))
        space = '" "? ' if grammar.leading_space else ""
        compiled = matcher_cls.grammar_from_lark(f"start: {space}answer\nanswer: {body}\n")
    failed, messages = matcher_cls.validate_grammar_with_warnings(compiled, None)
    if failed:
        detail = messages[0].strip() if messages else "unknown error"
        feature = _feature(detail)
        raise ConstraintError(
            f"llguidance cannot compile {grammar.describe()} into a decoding constraint: "
            f"{feature}. Simplify the output type, or run with constrained='fallback' to "
            "parse and re-ask instead (constrained=False turns constraints off)",
            feature=feature,
        )
    return compiled


def _feature(message: str) -> str:
    """The unsupported feature in an llguidance error, as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    first = re.sub(r"^at \d+\(\d+\): ", "", lines[0] if lines else message)
    return first.removeprefix("failed to compile JSON schema: ")


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


# -- byte-level view --------------------------------------------------------------------------


class _Bytes:
    """A tokenizer whose tokens are the 256 bytes, plus an end token (for llguidance)."""

    eos_token_id = BYTE_EOS
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<end>"]
    special_token_ids: ClassVar[list[int]] = [BYTE_EOS]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@lru_cache(maxsize=1)
def byte_tokenizer() -> LLTokenizer:
    llg = _llguidance()
    tokenizer: LLTokenizer = llg.LLTokenizer(llg.TokenizerWrapper(_Bytes()))
    return tokenizer


# Bytes preferred when looking for a short ending: closers, then separators, then fillers.
_CLOSERS = b'"}]'
_LETTERS = bytes(range(97, 123)) + bytes(range(65, 91))
_PREFERRED = _CLOSERS + b",:0123456789" + _LETTERS + b"-. "
_ORDER = tuple(_PREFERRED) + tuple(b for b in range(256) if b not in _PREFERRED)
# In a state met before, look first for a byte that leads somewhere else: closers, then
# punctuation (``@`` in an e-mail pattern), then the rest.
_SYMBOLS = bytes(b for b in range(33, 127) if not chr(b).isalnum() and b not in _CLOSERS)
_ESCAPE = _CLOSERS + _SYMBOLS
_ESCAPE_ORDER = tuple(_ESCAPE) + tuple(b for b in _ORDER if b not in _ESCAPE)
_ESCAPE_TRIES = 96  # candidates tried for a way out of a repeated state


def _mask(matcher: LLMatcher) -> int:
    return int.from_bytes(matcher.compute_bitmask(), "little")


def shortest_ending(matcher: LLMatcher, limit: int) -> bytes | None:
    """A short byte string that completes what a byte-level ``matcher`` has consumed.

    Greedy: bytes the grammar forces are taken as they are; otherwise the best-ranked allowed
    byte (closers ``"`` ``}`` ``]`` first, then ``,`` ``:`` ``0`` ...), except one already taken
    from a state with the same allowed set since the last closer; in a state met before, a byte
    that leads elsewhere comes first (so ``a*b`` ends with ``b`` instead of looping on ``a``,
    ``[a-z]+@`` reaches the ``@`` after one letter, and ``[0-9]+`` stops when it may). Not
    always the shortest, always valid; None when no ending of at most ``limit`` bytes was found.
    The matcher is left as it was.
    """
    matcher = matcher.deep_copy()
    out = bytearray()
    taken: set[tuple[int, int]] = set()
    seen: set[int] = set()
    while len(out) <= limit:
        if matcher.is_accepting():
            return bytes(out)
        forced = matcher.compute_ff_bytes()
        if forced:
            if not matcher.consume_tokens(list(forced)):
                return None
            out += forced
            if any(byte in _CLOSERS for byte in forced):
                taken.clear()
                seen.clear()
            continue
        mask = _mask(matcher)
        if mask >> BYTE_EOS & 1:
            return bytes(out)
        chosen = _way_out(matcher, mask, taken) if mask in seen else -1
        seen.add(mask)
        if chosen < 0:
            chosen = next((b for b in _ORDER if mask >> b & 1 and (mask, b) not in taken), -1)
        if chosen < 0:  # every allowed byte was taken here before: take the best-ranked one
            chosen = next((b for b in _ORDER if mask >> b & 1), -1)
            if chosen < 0:
                return None
        if not matcher.consume_token(chosen):
            return None
        out.append(chosen)
        if chosen in _CLOSERS:
            taken.clear()
            seen.clear()
        else:
            taken.add((mask, chosen))
    return None


def _way_out(matcher: LLMatcher, mask: int, taken: set[tuple[int, int]]) -> int:
    """In a state met before: an allowed byte after which the allowed set changes (or the
    answer may end), so that the ending makes progress; -1 when none was found."""
    tries = 0
    for byte in _ESCAPE_ORDER:
        if not mask >> byte & 1 or (mask, byte) in taken:
            continue
        matcher.consume_token(byte)
        moved = matcher.is_accepting() or _mask(matcher) != mask
        matcher.rollback(1)
        if moved:
            return byte
        tries += 1
        if tries >= _ESCAPE_TRIES:
            break
    return -1
