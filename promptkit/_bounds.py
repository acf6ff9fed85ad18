"""Output bounds that depend on a run's inputs, written as templates in an output schema.

A template file cannot hold Python, so the output schema of a file may give a bound as a Jinja
template over the inputs: ``maximum: "{{ answers|length - 1 }}"`` (an index below the number of
answers). The template is compiled when the file loads (a syntax error is a TemplateError
then) and rendered for each run by the prompt's own sandboxed environment; validation and the
constrained-decoding grammar both use the rendered value.

In an output type such a bound is :class:`InputBound` metadata; in its JSON schema, the keyword
``x-from-inputs`` maps each bound keyword to its template, and :func:`schema_for_inputs` turns
that into the plain keywords (``"maximum": 2``) of one run's schema.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from ._templating import CompiledTemplate
from .errors import TemplateError

__all__ = [
    "BOUND_KEY",
    "BOUND_KEYWORDS",
    "InputBound",
    "bound_variables",
    "has_bounds",
    "schema_for_inputs",
]

BOUND_KEY = "x-from-inputs"  # the JSON-schema keyword holding a type's bound templates


@dataclass(frozen=True)
class _Rule:
    compare: Callable[[Any, Any], bool]
    relation: str  # as pydantic words it: "Input should be {relation} {bound}"
    length: bool = False  # compares the value's length (strings, arrays)


BOUND_KEYWORDS: dict[str, _Rule] = {
    "minimum": _Rule(operator.ge, "greater than or equal to"),
    "maximum": _Rule(operator.le, "less than or equal to"),
    "exclusiveMinimum": _Rule(operator.gt, "greater than"),
    "exclusiveMaximum": _Rule(operator.lt, "less than"),
    "minLength": _Rule(operator.ge, "at least", length=True),
    "maxLength": _Rule(operator.le, "at most", length=True),
    "minItems": _Rule(operator.ge, "at least", length=True),
    "maxItems": _Rule(operator.le, "at most", length=True),
}


@lru_cache(maxsize=256)
def _compiled(keyword: str, template: str) -> CompiledTemplate:
    return CompiledTemplate(template, name=f"the output schema's {keyword}")


@dataclass(frozen=True)
class InputBound:
    """``Annotated`` metadata: the JSON-schema bound ``keyword`` (``maximum``, ``minLength``,
    ...) whose value is ``template`` rendered with a run's inputs.

    Raises TemplateError for an unknown keyword or a template that does not compile. Outside a
    run (no inputs) the bound is not checked.
    """

    keyword: str
    template: str

    def __post_init__(self) -> None:
        if self.keyword not in BOUND_KEYWORDS:
            raise TemplateError(
                f"the output schema's {self.keyword!r} cannot come from the inputs; bounds that "
                "can: " + ", ".join(BOUND_KEYWORDS)
            )
        if not isinstance(self.template, str):
            raise TemplateError(
                f"the output schema's {self.keyword} template must be a string, "
                f"got {self.template!r}"
            )
        _compiled(self.keyword, self.template)

    @property
    def variables(self) -> frozenset[str]:
        """The input names the template uses."""
        return _compiled(self.keyword, self.template).variables

    def value(self, inputs: Mapping[str, Any]) -> int | float:
        """The bound for these inputs.

        Raises TemplateError (MissingVariableError for an input that is not given) when the
        template fails or does not render a number (a whole number >= 0 for a length).
        """
        text = _compiled(self.keyword, self.template).render(inputs).strip()
        length = BOUND_KEYWORDS[self.keyword].length
        number: int | float | None
        try:
            number = int(text)
        except ValueError:
            try:
                number = None if length else float(text)
            except ValueError:
                number = None
        finite = not isinstance(number, float) or math.isfinite(number)
        if number is None or not finite or (length and number < 0):
            raise TemplateError(
                f"the output schema's {self.keyword} {self.template!r} rendered {text[:60]!r}, "
                f"not {'a whole number >= 0' if length else 'a finite number'}"
            )
        return number

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        rule = BOUND_KEYWORDS[self.keyword]

        def check(value: Any, info: core_schema.ValidationInfo) -> Any:
            inputs = (info.context or {}).get("inputs") if isinstance(info.context, dict) else None
            if not isinstance(inputs, Mapping):
                return value  # outside a run (no inputs to render the bound with)
            bound = self.value(inputs)
            if rule.compare(len(value) if rule.length else value, bound):
                return value
            unit = ""
            if rule.length:
                unit = " character" if isinstance(value, str) else " item"
                unit += "" if bound == 1 else "s"
            raise PydanticCustomError(
                "input_bound",
                "Input should {verb} {relation} {bound}{unit}",
                {
                    "verb": "have" if rule.length else "be",
                    "relation": rule.relation,
                    "bound": bound,
                    "unit": unit,
                },
            )

        return core_schema.with_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema: dict[str, Any] = dict(handler(schema))
        json_schema[BOUND_KEY] = {**json_schema.get(BOUND_KEY, {}), self.keyword: self.template}
        return json_schema


def _walk(schema: Any, visit: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """``schema`` with ``visit`` applied to every (sub)schema, bottom up (property names are
    names, not keywords)."""
    if isinstance(schema, dict):
        walked = {
            key: (
                {name: _walk(sub, visit) for name, sub in value.items()}
                if key in ("properties", "$defs", "definitions") and isinstance(value, dict)
                else value
                if key == BOUND_KEY
                else _walk(value, visit)
            )
            for key, value in schema.items()
        }
        return visit(walked)
    if isinstance(schema, list):
        return [_walk(item, visit) for item in schema]
    return schema


def _bounds(schema: dict[str, Any]) -> dict[str, str]:
    found = schema.get(BOUND_KEY)
    return found if isinstance(found, dict) else {}


def bound_variables(schema: Any) -> frozenset[str]:
    """The input names that the bound templates anywhere in ``schema`` use."""
    found: set[str] = set()

    def collect(sub: dict[str, Any]) -> dict[str, Any]:
        for keyword, template in _bounds(sub).items():
            found.update(InputBound(keyword, template).variables)
        return sub

    _walk(schema, collect)
    return frozenset(found)


def has_bounds(schema: Any) -> bool:
    """Whether ``schema`` has bound templates anywhere."""
    found = False

    def look(sub: dict[str, Any]) -> dict[str, Any]:
        nonlocal found
        found = found or BOUND_KEY in sub
        return sub

    _walk(schema, look)
    return found


def schema_for_inputs(schema: Any, inputs: Mapping[str, Any] | None) -> Any:
    """``schema`` with its bound templates rendered with ``inputs`` into plain keywords
    (``"maximum": 2``), or left out when ``inputs`` is None.

    Raises TemplateError when a template fails or does not render a number.
    """

    def render(sub: dict[str, Any]) -> dict[str, Any]:
        bounds = _bounds(sub)
        if BOUND_KEY not in sub:
            return sub
        plain = {key: value for key, value in sub.items() if key != BOUND_KEY}
        if inputs is not None:
            for keyword, template in bounds.items():
                plain[keyword] = InputBound(keyword, template).value(inputs)
        return plain

    return _walk(schema, render)
