"""Assertions per dataset item, in promptfoo's vocabulary: what a line's ``assert:`` list may
hold, how each assertion is checked against an answer, and how they make an item's verdict.

An assertion is ``{"type": ..., "value": ..., "weight": 1, "threshold": null, "metric": null,
"field": null}``; only ``type`` is always required. Types:

- ``equals``: the output equals ``value`` (a string compares as text; any other JSON value is
  compared with the output read as JSON);
- ``contains`` / ``icontains`` (case-insensitive): ``value`` (a string) occurs in the output;
  ``contains-all``, ``contains-any``, ``icontains-all``, ``icontains-any``: every / at least one
  string of the list ``value`` occurs;
- ``regex``: ``value`` (a Python regular expression) matches somewhere in the output;
- ``is-json``: the output is JSON; with ``value`` (a JSON schema, promptkit's subset: see
  :mod:`promptkit._schema`), JSON that matches it;
- ``python``: Python code over ``output`` (and ``context``: ``{"vars": the item's inputs,
  "prediction": the validated output as JSON}``), run in the code-evaluation :class:`Sandbox`.
  One line is an expression; several lines are a function body that ``return`` s. It returns a
  bool, a score (passes when it reaches ``threshold``, else when above 0) or
  ``{"pass": bool, "score": float, "reason": str}``;
- ``llm-rubric``: a grader model (``--grader SPEC``) judges the output against the rubric
  ``value`` and answers ``{pass, score, reason}`` (passes when ``pass`` and, with a
  ``threshold``, ``score`` reaches it).

``not-`` before a type inverts its verdict (the score becomes 1 - score); an assertion that
could not be checked (a python error or timeout, a grader that failed) fails either way.

The output an assertion reads is the answer's raw text (promptfoo's ``output``). ``field``
names one field of a record output instead (``potential_issues``; a dotted path reaches nested
fields and list positions, ``methods.0.name``), taken from the validated prediction: a string
is read as it is, a list of strings as its lines, anything else as JSON.

An item's assertions pass when every one with a weight above 0 passes (weight 0: reported
only) or, when the line gives ``threshold``, when their weighted mean score reaches it.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .._outputs import strip_annotated
from .._parsing import OutputSpec
from .._schema import type_from_schema
from ..errors import InputValidationError, PromptkitError
from ._schema import AssertionResult, ItemResult

__all__ = [
    "ASSERTION_TYPES",
    "Assertion",
    "as_text",
    "assertion_pass_rates",
    "assertions_pass",
    "check_text",
    "compile_python",
    "parse_assertions",
    "python_program",
    "record_fields",
    "subject_of",
]

_TEXT_TYPES = ("equals", "contains", "icontains", "regex", "is-json")
_LIST_TYPES = ("contains-all", "contains-any", "icontains-all", "icontains-any")
#: Every assertion type without its ``not-`` prefix.
ASSERTION_TYPES = (*_TEXT_TYPES, *_LIST_TYPES, "python", "llm-rubric")
_NOT = "not-"


class _Spec(BaseModel):
    """One assertion as a data line writes it (unknown keys are refused, not ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    value: Any = None
    weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    threshold: float | None = Field(default=None, allow_inf_nan=False)
    metric: str | None = Field(default=None, min_length=1)
    field: str | None = Field(default=None, pattern=r"^[^.\s]+(\.[^.\s]+)*$")


@dataclass(frozen=True)
class Assertion:
    """One checked assertion spec: its type (with any ``not-`` prefix), value, weight,
    threshold, the name its pass rate is reported under, and the field it reads."""

    type: str
    value: Any
    weight: float = 1.0
    threshold: float | None = None
    metric: str | None = None
    field: str | None = None
    schema: TypeAdapter[Any] | None = None  # is-json with a schema: validates the JSON
    pattern: re.Pattern[str] | None = None  # regex: the compiled expression

    @property
    def negated(self) -> bool:
        """Whether the verdict is inverted (a ``not-`` type)."""
        return self.type.startswith(_NOT)

    @property
    def base(self) -> str:
        """The type without its ``not-`` prefix."""
        return self.type.removeprefix(_NOT)

    @property
    def key(self) -> str:
        """The name its pass rate is reported under: ``metric``, else the type."""
        return self.metric or self.type

    def result(self, passed: bool, score: float, reason: str) -> AssertionResult:
        """The outcome of checking it, with ``not-`` applied."""
        if self.negated:
            passed, score, reason = not passed, 1.0 - score, f"inverted ({self.type}): {reason}"
        return self._record(passed, score, reason)

    def failure(self, reason: str) -> AssertionResult:
        """The outcome when it could not be checked: failed, whatever the ``not-`` prefix."""
        return self._record(False, 0.0, reason)

    def _record(self, passed: bool, score: float, reason: str) -> AssertionResult:
        return AssertionResult(
            type=self.type,
            value=self.value,
            passed=passed,
            score=score,
            reason=reason,
            weight=self.weight,
        )


def parse_assertions(
    specs: Any, where: str, *, fields: Sequence[str] | None = None
) -> tuple[Assertion, ...]:
    """The ``assert`` list of the data line at ``where`` (``file:line``), checked.

    ``fields``: the output's top-level field names when it is a record (a ``field`` must name
    one of them), None otherwise (then ``field`` is refused). Raises InputValidationError
    naming the file, line and assertion (its position and type) and what is wrong.
    """
    if not isinstance(specs, list) or not specs:
        raise InputValidationError(
            f"{where}: 'assert' must be a non-empty list of assertions "
            '({"type": ..., "value": ...}), got ' + _preview(specs)
        )
    return tuple(
        _parse_one(spec, f"{where}: assertion {n}", fields) for n, spec in enumerate(specs, 1)
    )


def _parse_one(spec: Any, where: str, fields: Sequence[str] | None) -> Assertion:
    if not isinstance(spec, dict):
        raise InputValidationError(
            f"{where}: expected an object with a 'type', got {_preview(spec)}"
        )
    named = f"{where} ({spec.get('type')!r})" if "type" in spec else where
    try:
        checked = _Spec.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'assertion'}: {e['msg']}" for e in exc.errors()
        )
        raise InputValidationError(f"{named}: {problems}") from None
    base = checked.type.removeprefix(_NOT)
    if base not in ASSERTION_TYPES:
        raise InputValidationError(
            f"{named}: unknown assertion type; use one of {', '.join(ASSERTION_TYPES)} "
            "(each may take a 'not-' prefix)"
        )
    if checked.field is not None:
        top = checked.field.split(".")[0]
        if fields is None:
            raise InputValidationError(
                f"{named}: 'field' needs a record output, and this template's output is not one"
            )
        if top not in fields:
            raise InputValidationError(
                f"{named}: the output has no field {top!r}; its fields: {', '.join(fields)}"
            )
    try:
        extra = _check_value(base, checked.value)
    except ValueError as exc:
        raise InputValidationError(f"{named}: {exc}") from None
    return Assertion(
        type=checked.type,
        value=checked.value,
        weight=checked.weight,
        threshold=checked.threshold,
        metric=checked.metric,
        field=checked.field,
        **extra,
    )


def _check_value(base: str, value: Any) -> dict[str, Any]:
    """Check ``value`` for an assertion of type ``base``; the compiled parts it needs.
    Raises ValueError saying what the value must be."""
    if base in ("contains", "icontains", "llm-rubric") and not (isinstance(value, str) and value):
        raise ValueError(f"'value' must be a non-empty string, got {_preview(value)}")
    if base in _LIST_TYPES and not (
        isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
    ):
        raise ValueError(
            f"'value' must be a non-empty list of non-empty strings, got {_preview(value)}"
        )
    if base == "equals" and value is None:
        raise ValueError("'value' is required: the output it must equal")
    if base == "regex":
        if not isinstance(value, str):
            raise ValueError(
                f"'value' must be a regular expression (a string), got {_preview(value)}"
            )
        try:
            return {"pattern": re.compile(value)}
        except re.error as exc:
            raise ValueError(f"'value' is not a valid regular expression: {exc}") from None
    if base == "is-json" and value is not None:
        if not isinstance(value, dict):
            raise ValueError(
                f"'value' must be a JSON schema (an object) or absent, got {_preview(value)}"
            )
        try:
            return {"schema": TypeAdapter(type_from_schema(value, name="Asserted"))}
        except PromptkitError as exc:
            raise ValueError(f"'value' is not a usable JSON schema: {exc}") from None
    if base == "python":
        compile_python(value)
    return {}


# The program a python assertion runs as: the output and context arrive as JSON literals, the
# assertion is the body of a function, and its result comes back as one JSON line after a
# marker drawn for each run (so nothing the code prints is taken for its result).
_PROGRAM = """\
import json
output = json.loads({output})
context = json.loads({context})
def _assertion(output, context):
{body}
_result = _assertion(output, context)
print()
print({marker} + json.dumps(_result))
"""


def compile_python(code: Any) -> str:
    """The function body of a python assertion's ``code``: one line is an expression whose
    value is returned; several lines are the body itself (it must ``return``).

    Raises ValueError when ``code`` is not a non-empty string or not valid Python.
    """
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"'value' must be Python code (a non-empty string), got {code!r}")
    source = code.strip()
    if "\n" not in source and _is_expression(source):
        body = f"    return (\n{textwrap.indent(source, '        ')}\n    )"
    else:
        body = textwrap.indent(textwrap.dedent(code).strip("\n"), "    ")
    try:
        compile(python_program(body, "", {}, ""), "<python assertion>", "exec")
    except SyntaxError as exc:
        raise ValueError(
            f"'value' is not valid Python ({exc.msg}); give one expression over `output`, or "
            "a function body that returns a bool, a score or {'pass', 'score', 'reason'}"
        ) from None
    return body


def _is_expression(source: str) -> bool:
    try:
        compile(source, "<python assertion>", "eval")
    except SyntaxError:
        return False
    return True


def python_program(body: str, output: Any, context: Mapping[str, Any], marker: str) -> str:
    """The program that runs a python assertion's ``body`` on ``output`` and ``context`` and
    prints what it returns as JSON after ``marker``."""
    return _PROGRAM.format(
        output=repr(json.dumps(output)),
        context=repr(json.dumps(context)),
        body=body,
        marker=repr(marker),
    )


def subject_of(assertion: Assertion, text: str | None, prediction: Any, valid: bool) -> Any:
    """What ``assertion`` reads: the raw ``text`` (the prediction for an answer chosen by
    scoring, which has none), or its ``field`` of the validated ``prediction``.

    Raises LookupError saying why there is nothing to read.
    """
    if assertion.field is None:
        if text is not None:
            return text
        if valid:
            return prediction
        raise LookupError("there is no answer to check (the run failed before one came back)")
    if not valid:
        raise LookupError(f"no answer validated, so it has no field {assertion.field!r}")
    value = prediction
    for part in assertion.field.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise LookupError(f"the output has no {assertion.field!r} (stopped at {part!r})")
    return value


def as_text(value: Any) -> str:
    """The text a text assertion reads: a string as it is, a list of strings one per line,
    anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value, ensure_ascii=False)


def check_text(assertion: Assertion, subject: Any) -> AssertionResult:
    """Check a deterministic assertion (every type but ``python`` and ``llm-rubric``)."""
    base, value = assertion.base, assertion.value
    if base == "equals":
        return _equals(assertion, subject)
    if base == "is-json":
        return _is_json(assertion, subject)
    text = as_text(subject)
    if base == "regex":
        assert assertion.pattern is not None  # compiled by parse_assertions
        found = assertion.pattern.search(text)
        reason = f"matched {found.group(0)[:80]!r}" if found else f"no match for {value!r}"
        return assertion.result(found is not None, float(found is not None), reason)
    folded = base.startswith("i")
    haystack = text.casefold() if folded else text
    wanted: list[str] = [value] if isinstance(value, str) else list(value)
    present = [w for w in wanted if (w.casefold() if folded else w) in haystack]
    missing = [w for w in wanted if w not in present]
    if base.endswith("-any"):
        passed = bool(present)
        reason = f"found {present!r}" if present else f"none of {wanted!r} found"
    else:
        passed = not missing
        reason = f"found {present!r}" if passed else f"missing {missing!r}"
    return assertion.result(passed, float(passed), reason)


def _equals(assertion: Assertion, subject: Any) -> AssertionResult:
    value = assertion.value
    if isinstance(value, str) and isinstance(subject, str):
        same = subject == value
    elif isinstance(subject, str):
        try:
            same = json.loads(subject) == value
        except ValueError:
            same = False
    else:
        same = subject == value
    reason = "equal" if same else f"{_preview(subject)} is not {_preview(value)}"
    return assertion.result(same, float(same), reason)


def _is_json(assertion: Assertion, subject: Any) -> AssertionResult:
    if isinstance(subject, str):
        try:
            parsed = json.loads(subject)
        except ValueError as exc:
            return assertion.result(False, 0.0, f"not JSON: {exc}")
    else:
        parsed = subject
    if assertion.schema is None:
        return assertion.result(True, 1.0, "valid JSON")
    try:
        assertion.schema.validate_json(json.dumps(parsed), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the value"
        return assertion.result(False, 0.0, f"JSON, but not of the schema: {where}: {first['msg']}")
    return assertion.result(True, 1.0, "valid JSON matching the schema")


def assertions_pass(results: Sequence[AssertionResult], threshold: float | None) -> bool:
    """An item's verdict on its assertions (promptfoo's): with ``threshold``, whether the
    weighted mean score reaches it; else whether every assertion of weight above 0 passed."""
    gating = [r for r in results if r.weight > 0]
    if threshold is None:
        return all(r.passed for r in gating)
    total = sum(r.weight for r in gating)
    score = sum(r.weight * r.score for r in gating) / total if total else 1.0
    return score >= threshold or math.isclose(score, threshold)


def assertion_pass_rates(
    assertions: Sequence[Sequence[Assertion]], results: Sequence[ItemResult]
) -> dict[str, float]:
    """Per assertion ``metric`` (else type), the share of its checks that passed; ``assertions``
    holds each item's, in the order of ``results``."""
    counts: dict[str, list[int]] = {}
    for specs, item in zip(assertions, results, strict=True):
        for spec, checked in zip(specs, item.assertions, strict=True):
            tally = counts.setdefault(spec.key, [0, 0])
            tally[0] += checked.passed
            tally[1] += 1
    return {key: passed / total for key, (passed, total) in sorted(counts.items())}


def _preview(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_fields(output: OutputSpec) -> list[str] | None:
    """The top-level field names of a record output (None: the output is not a record)."""
    if not output.is_object:
        return None
    return list(strip_annotated(output.type).model_fields)
