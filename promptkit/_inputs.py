"""A prompt's inputs: the input type its templates imply, the checks that every name the prompt
uses is an input, validation of given inputs, and the template variables of validated inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ._conversation import Message as ChatMessage
from ._outputs import span_sources
from ._parsing import OutputSpec
from ._templating import CompiledTemplate
from .errors import InputValidationError, MissingVariableError, TemplateError

__all__ = [
    "check_output_inputs",
    "check_variables",
    "infer_input_type",
    "template_context",
    "validate_inputs",
]


def template_context(instance: BaseModel) -> dict[str, Any]:
    """The template variables of validated inputs (``dict(model)`` is several times slower)."""
    extra = instance.__pydantic_extra__
    return {**instance.__dict__, **extra} if extra else dict(instance.__dict__)


def infer_input_type(names: frozenset[str], threads: Sequence[str] = ()) -> type[BaseModel]:
    """An input type requiring every one of ``names`` (of any type), with a message list
    (``list[pk.Message]``, empty by default) for each of ``threads``, and nothing else."""
    fields: dict[str, Any] = {name: (Any, ...) for name in sorted(names)}
    fields.update({name: (list[ChatMessage], []) for name in threads})
    model: type[BaseModel] = create_model("Inputs", __config__=ConfigDict(extra="forbid"), **fields)
    return model


def check_variables(templates: Sequence[CompiledTemplate], declared: set[str], source: str) -> None:
    """Raise MissingVariableError (at the first line using one) when ``templates`` use names
    that are not ``declared`` inputs."""
    used = frozenset().union(*(t.variables for t in templates))
    missing = used - declared
    if missing:
        first = min(
            (t.variable_lines.get(v, t.first_line), v)
            for t in templates
            for v in missing
            if v in t.variables
        )
        raise MissingVariableError(missing, available=declared, source=source, line=first[0])


def check_output_inputs(output: OutputSpec, declared: set[str], source: str) -> None:
    """Raise TemplateError when the output copies spans from, or renders bounds from, names
    that are not ``declared`` inputs."""
    unknown_spans = span_sources(output.schema) - declared
    if unknown_spans:
        raise TemplateError(
            f"the output copies spans from {', '.join(sorted(map(repr, unknown_spans)))}, "
            f"which {'is not an input' if len(unknown_spans) == 1 else 'are not inputs'}; "
            f"inputs: {', '.join(sorted(declared)) or '(none)'}",
            source=source,
        )
    unknown_bounds = output.bound_inputs - declared
    if unknown_bounds:
        raise TemplateError(
            f"the output schema's bounds use {', '.join(sorted(map(repr, unknown_bounds)))}, "
            f"which {'is not an input' if len(unknown_bounds) == 1 else 'are not inputs'}; "
            f"inputs: {', '.join(sorted(declared)) or '(none)'}",
            source=source,
        )


def validate_inputs(
    input_type: type[BaseModel], inputs: Mapping[str, Any] | BaseModel
) -> BaseModel:
    """``inputs`` validated as ``input_type``; raises InputValidationError naming each field
    that is missing, unknown or invalid, and the fields there are."""
    if isinstance(inputs, input_type):
        return inputs
    if isinstance(inputs, BaseModel):
        inputs = dict(inputs)
    if not isinstance(inputs, Mapping):
        raise InputValidationError(
            f"inputs must be a mapping or a {input_type.__name__} instance, "
            f"got {type(inputs).__name__}"
        )
    try:
        return input_type.model_validate(inputs)
    except ValidationError as exc:
        raise InputValidationError(_input_problems(exc, input_type)) from None


def _input_problems(exc: ValidationError, model: type[BaseModel]) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "inputs"
        if error["type"] == "missing":
            problems.append(f"missing input {where!r}")
        elif error["type"] == "extra_forbidden":
            problems.append(f"unknown input {where!r}")
        else:
            problems.append(f"input {where!r}: {error['msg']} (got {error['input']!r:.60})")
    fields = ", ".join(model.model_fields) or "none"
    return "invalid inputs: " + "; ".join(problems) + f". The inputs are: {fields}."
