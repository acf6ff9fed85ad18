"""Text -> output type: find the answer in what a model wrote, then validate it with pydantic.

:class:`OutputSpec` describes an output type once (its kind, labels, JSON schema, how to ask for
it and how to write a demonstration's answer) and parses text into it. :func:`parse_output` is
the one-shot form. Every failure is an :class:`~promptkit.errors.OutputParseError` that keeps the
raw text; nothing else escapes.
"""

from __future__ import annotations

import enum
import json
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json

from ._bounds import bound_variables, has_bounds, schema_for_inputs
from ._outputs import SPAN_KEY, Lark, Regex, strip_annotated, without_keywords
from .errors import OutputParseError, TemplateError, UsageError

__all__ = ["OutputCheck", "OutputSpec", "extract_json", "output_spec", "parse_output", "run_check"]

# A prompt's own test of a parsed output against the run's inputs (see Prompt's ``check``).
OutputCheck = Callable[[Any, Any], bool | None]
Kind = Literal["text", "grammar", "label", "json", "integer", "number", "boolean"]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}
_MAX_JSON_STARTS = 256  # bound the scan for JSON in long prose
# pydantic's generated titles (noise in a prompt) and promptkit's own keyword (a SpanOf)
_NOT_SHOWN = frozenset({"title", SPAN_KEY})
_LABEL_PUNCTUATION = " \t\r\n\"'`.,;:!?*()[]{}"


def _metadata(tp: Any) -> list[Any]:
    """The ``Annotated`` metadata of ``tp`` (outermost last)."""
    found: list[Any] = []
    while typing.get_origin(tp) is typing.Annotated:
        found = [*tp.__metadata__, *found]
        tp = typing.get_args(tp)[0]
    return found


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()


class OutputSpec:
    """How one output type is asked for, written in demonstrations, and parsed from text."""

    def __init__(self, output_type: Any):
        if isinstance(output_type, (Regex, Lark)):
            output_type = Annotated[str, output_type]
        self.type = output_type
        try:
            self.adapter: TypeAdapter[Any] = TypeAdapter(output_type)
        except Exception as exc:  # pydantic raises several types for unusable annotations
            raise TemplateError(
                f"cannot use {output_type!r} as an output type: {exc}. Use a pydantic model, str, "
                "int, float, bool, list[str], Literal[...] labels or an Enum."
            ) from exc
        inner = strip_annotated(output_type)
        # Regex(...) / Lark(...) on a str output: the text itself is constrained.
        self.text_constraint: Regex | Lark | None = next(
            (m for m in _metadata(output_type) if isinstance(m, (Regex, Lark))), None
        )
        self.labels: tuple[str, ...] = ()
        self._label_values: dict[str, Any] = {}
        self.kind: Kind
        if typing.get_origin(inner) is Literal:
            values = typing.get_args(inner)
            self._set_labels({str(v): v for v in values})
        elif isinstance(inner, type) and issubclass(inner, enum.Enum):
            self._set_labels({str(m.value): m for m in inner})
        elif inner is str:
            self.kind = "text" if self.text_constraint is None else "grammar"
        elif inner is bool:
            self.kind = "boolean"
        elif inner is int:
            self.kind = "integer"
        elif inner is float:
            self.kind = "number"
        else:
            self.kind = "json"
        self._schema: dict[str, Any] | None = None

    def _set_labels(self, values: dict[str, Any]) -> None:
        if not values:
            raise TemplateError("a label output type needs at least one label")
        self.kind = "label"
        self.labels = tuple(values)
        self._label_values = values
        self._by_squashed = {_squash(label): label for label in values}

    @property
    def schema(self) -> dict[str, Any]:
        """The output type's JSON schema."""
        if self._schema is None:
            self._schema = self.adapter.json_schema()
        return self._schema

    @cached_property
    def bounded(self) -> bool:
        """Whether bounds of the output are templates rendered with each run's inputs."""
        return has_bounds(self.schema)

    @cached_property
    def bound_inputs(self) -> frozenset[str]:
        """The inputs that the output's bounds are rendered from."""
        return bound_variables(self.schema) if self.bounded else frozenset()

    def schema_for(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """The JSON schema that one run shows and constrains: bounds given as templates over
        the inputs rendered with ``inputs`` (left out when None).

        Raises TemplateError when a bound's template fails or does not give a number.
        """
        if not self.bounded:
            return self.schema
        rendered: dict[str, Any] = schema_for_inputs(self.schema, inputs)
        return rendered

    @property
    def is_object(self) -> bool:
        inner = strip_annotated(self.type)
        return isinstance(inner, type) and issubclass(inner, BaseModel)

    def format_instructions(self, inputs: Mapping[str, Any] | None = None) -> str:
        """One sentence telling the model how to answer (empty for free text); ``inputs``
        render the bounds that come from them (see :meth:`schema_for`)."""
        if self.kind == "label":
            return "Answer with exactly one of: " + ", ".join(self.labels) + "."
        if self.kind == "integer":
            return "Answer with a whole number."
        if self.kind == "number":
            return "Answer with a number."
        if self.kind == "boolean":
            return "Answer with true or false."
        if self.kind == "grammar":
            constraint = self.text_constraint
            if isinstance(constraint, Regex):
                return f"Answer with text that matches the regular expression {constraint.pattern}"
            assert constraint is not None
            return "Answer in the format of this Lark grammar:\n" + constraint.grammar.strip()
        if self.kind == "json":
            schema = self.schema_for(inputs)
            if schema == {"items": {"type": "string"}, "type": "array"}:
                return "Answer with a JSON array of strings."
            compact = json.dumps(
                without_keywords(schema, _NOT_SHOWN),
                separators=(",", ":"),
                ensure_ascii=False,
            )
            noun = "a JSON object" if self.is_object else "JSON"
            return f"Answer with {noun} that matches this JSON schema: {compact}"
        return ""

    def validate(self, value: Any, inputs: Mapping[str, Any] | None = None) -> Any:
        """Validate a Python value (an example's output) into the output type; with
        ``inputs`` (the example's), SpanOf strings must occur in them."""
        if self.kind == "label" and isinstance(value, str):
            return self._match_label(value)
        return self.adapter.validate_python(value, context=_context(inputs))

    def serialize(self, value: Any) -> str:
        """Write a valid output the way the model is asked to answer (for demonstrations)."""
        if self.kind == "label":
            return str(value.value) if isinstance(value, enum.Enum) else str(value)
        if self.kind == "text":
            return str(value)
        return self.adapter.dump_json(value).decode()

    def parse(self, text: str, inputs: Mapping[str, Any] | None = None) -> Any:
        """Parse a model's text into the output type; raises OutputParseError keeping the text.

        ``inputs``: the run's inputs, which SpanOf strings must occur in (unchecked without)."""
        if not isinstance(text, str):
            raise OutputParseError(
                f"expected the model's text as a string, got {type(text).__name__}",
                raw_text=repr(text),
            )
        try:
            if self.kind == "label":
                return self._match_label(text)
            if self.kind == "text":
                value: Any = text.strip()
            elif self.kind == "grammar":
                value = self._find_match(text)
            elif self.kind == "json":
                value = self._find_json(text)
            elif self.kind == "boolean":
                value = self._find_boolean(text)
            else:
                value = self._find_number(text)
            return self.adapter.validate_python(value, context=_context(inputs))
        except ValidationError as exc:
            raise OutputParseError(_describe(exc), raw_text=text) from None
        except _NotFound as exc:
            raise OutputParseError(str(exc), raw_text=text) from None

    def _match_label(self, text: str) -> Any:
        answer = _squash(text.strip(_LABEL_PUNCTUATION))
        if answer in self._by_squashed:
            return self._label_values[self._by_squashed[answer]]
        if answer.startswith(("{", "[")) or text.lstrip().startswith(("{", "[")):
            found = _first_json(text)
            if isinstance(found, str) and _squash(found) in self._by_squashed:
                return self._label_values[self._by_squashed[_squash(found)]]
        # "Positive. The review praises ..." -> the label that the answer starts with.
        starts = [
            label
            for key, label in self._by_squashed.items()
            if answer.startswith(key) and not answer[len(key) : len(key) + 1].isalnum()
        ]
        if starts:
            return self._label_values[max(starts, key=len)]
        raise OutputParseError(
            f"answer {_preview(text)} is not one of the allowed labels: " + ", ".join(self.labels),
            raw_text=text,
        )

    def _find_json(self, text: str) -> Any:
        want_object = self.is_object
        refused: list[str] = []
        for value in _json_candidates(text, refused):
            if not want_object or isinstance(value, dict):
                return value
        what = "no JSON object" if want_object else "no JSON value"
        why = f" ({refused[0]})" if refused else ""
        raise _NotFound(f"{what} found in the answer {_preview(text)}{why}")

    def _find_match(self, text: str) -> str:
        """The text itself when it matches the constraint, else the text without surrounding
        whitespace (validation reports the mismatch)."""
        assert self.text_constraint is not None
        return text if self.text_constraint.matches(text) else text.strip()

    @staticmethod
    def _find_number(text: str) -> Any:
        stripped = text.strip()
        try:
            return _read_json(stripped)
        except ValueError:
            pass
        match = _NUMBER.search(stripped)
        if match is None:
            raise _NotFound(f"no number found in the answer {_preview(text)}")
        number = match.group()
        try:
            return float(number) if any(c in number for c in ".eE") else int(number)
        except ValueError:  # Python refuses integers of more than sys.get_int_max_str_digits()
            raise _NotFound(
                f"the number in the answer {_preview(text)} has {len(number)} digits, too many "
                "to read"
            ) from None

    @staticmethod
    def _find_boolean(text: str) -> bool:
        words = text.strip(_LABEL_PUNCTUATION).split()
        word = words[0].strip(_LABEL_PUNCTUATION).casefold() if words else ""
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise _NotFound(f"answer {_preview(text)} is not true/false or yes/no")


def _context(inputs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """pydantic's validation context of a run: its inputs (what SpanOf checks against)."""
    return None if inputs is None else {"inputs": inputs}


class _NotFound(Exception):
    """Internal: the answer's shape was not found; becomes an OutputParseError."""


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _describe(exc: ValidationError) -> str:
    """pydantic's errors as one line each: ``field.path: message``."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "answer"
        lines.append(f"{where}: {error['msg']}")
    return "the answer does not validate: " + "; ".join(lines)


def _read_json(text: str) -> Any:
    """One JSON document, read by pydantic-core: ValueError for bad JSON, nesting deeper than
    its recursion limit or numbers too long to read (never RecursionError)."""
    return from_json(text, allow_inf_nan=False)


def _json_candidates(text: str, refused: list[str] | None = None) -> Iterator[Any]:
    """JSON values in ``text``: fenced blocks first, then the whole text, then embedded ones.

    ``refused`` collects why JSON-looking stretches could not be read (too deep, a number too
    long), for the error message."""
    for block in _FENCE.findall(text):
        yield from _embedded_json(block, refused)
    try:
        whole = _read_json(text.strip())
    except ValueError:
        pass
    else:
        yield whole
    yield from _embedded_json(text, refused)


# Finds where a JSON value embedded in prose ends, without building it: numbers stay text and
# objects are dropped, so that reading the value itself is left to pydantic-core's limits.
_EXTENT = json.JSONDecoder(
    parse_int=len, parse_float=len, parse_constant=len, object_pairs_hook=len
)


def _embedded_json(text: str, refused: list[str] | None = None) -> Iterator[Any]:
    starts = [i for i, c in enumerate(text) if c in "{["][:_MAX_JSON_STARTS]
    end = 0
    for start in starts:
        if start < end:
            continue  # inside a value already returned
        try:
            _, stop = _EXTENT.raw_decode(text, start)
        except RecursionError:  # the standard decoder recurses; no answer nests that deep
            _note(refused, f"the JSON at character {start} is nested too deeply to read")
            continue
        except ValueError:
            continue  # not JSON from here
        try:
            value = _read_json(text[start:stop])
        except ValueError as exc:  # well-formed, beyond pydantic-core's limits
            _note(refused, f"the JSON at character {start} cannot be read: {exc}")
            continue
        end = stop
        yield value


def _note(refused: list[str] | None, reason: str) -> None:
    if refused is not None and not refused:
        refused.append(reason)


def _first_json(text: str) -> Any:
    return next(_json_candidates(text), None)


def extract_json(text: str) -> Any:
    """The first JSON value in ``text`` (fenced block, whole text, or embedded in prose).

    Raises OutputParseError when there is none.
    """
    for value in _json_candidates(text):
        return value
    raise OutputParseError(f"no JSON found in {_preview(text)}", raw_text=text)


@lru_cache(maxsize=256)
def _cached_spec(output_type: Any, spelled: str) -> OutputSpec:
    return OutputSpec(output_type)


def output_spec(output_type: Any) -> OutputSpec:
    """The (cached) :class:`OutputSpec` of an output type."""
    try:
        # Keyed on the spelling too: Literal["a", "b"] == Literal["b", "a"], but the order of
        # the labels is what the format instructions list.
        return _cached_spec(output_type, repr(output_type))
    except TypeError:  # unhashable annotation
        return OutputSpec(output_type)


def parse_output(text: str, output_type: Any) -> Any:
    """Parse a model's text into ``output_type``; raises OutputParseError keeping the text."""
    return output_spec(output_type).parse(text)


def run_check(check: OutputCheck, inputs: Any, output: Any) -> str | None:
    """Why ``check(inputs, output)`` refuses the output, or None when it accepts it.

    The check accepts by returning True or None and refuses by returning False or raising
    ValueError or AssertionError (whose message is the reason). Raises UsageError when it
    returns anything else; its other exceptions (bugs in the check) propagate.
    """
    name = getattr(check, "__qualname__", None) or type(check).__name__
    try:
        verdict = check(inputs, output)
    except (ValueError, AssertionError) as exc:
        reason = str(exc).strip()
        return reason or f"the answer failed the prompt's check {name}"
    if verdict is None or verdict is True:
        return None
    if verdict is False:
        return f"the answer failed the prompt's check {name}"
    raise UsageError(
        f"check {name} returned {type(verdict).__name__}; it must return True, False or None "
        "(or raise ValueError saying what is wrong)"
    )
