"""The typed parts of a template file's front matter: its inputs, output type, examples and
generation parameters, each turned into what a :class:`~promptkit.Prompt` takes, with the
file's line in every error."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Any, Literal, Optional, TypeVar

from ._conversation import Message
from ._outputs import Lark, Regex
from ._prompt import Example
from ._schema import type_from_schema
from .backends._base import GenerationConfig
from .errors import ConfigurationError, PromptkitError, TemplateError

__all__ = ["Steps", "examples_of", "generation_config", "input_type", "output_type"]

_T = TypeVar("_T")
_INPUT_TYPES: dict[str, Any] = {
    "string": str,
    "str": str,
    "integer": int,
    "int": int,
    "number": float,
    "float": float,
    "boolean": bool,
    "bool": bool,
    "array": list,
    "list": list,
    "object": dict,
    "dict": dict,
}
_NONE = object()  # no sample given
_SIMPLE_OUTPUTS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool}
_CONFIG_KEYS = {f for f in GenerationConfig.__dataclass_fields__}


class Steps:
    """Runs the steps of building a Prompt: raising the first problem (loading), or keeping
    every problem and going on with a stand-in value (checking)."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.problems: list[PromptkitError] = []
        self.own_body = True  # False once a checker's stand-in replaced the body

    def run(self, step: Callable[[], _T], stand_in: _T) -> _T:
        try:
            return step()
        except PromptkitError as exc:
            if not self.keep:
                raise
            self.problems.append(exc)
            return stand_in


def input_type(
    inputs: Any,
    sample: Any,
    source: str,
    key_lines: dict[str, int],
    steps: Steps,
    *,
    threads: Collection[str] = (),
) -> Any:
    """The pydantic model of the inputs (None: inferred from the body); an input whose spec is
    wrong is a problem of its own (typed Any while checking). ``threads`` are conversations
    (``list[pk.Message]``, empty by default); an input's ``sample`` / ``example`` value is
    kept as its field's first example."""
    from pydantic import ConfigDict, Field, create_model

    inputs = _properties_as_mapping(inputs, "inputs", source, key_lines)
    if inputs is None:
        if isinstance(sample, dict) and sample:
            inputs = {k: {"type": _json_type(v)} for k, v in sample.items()}
        else:
            return None  # inferred from the body's variables
    if isinstance(inputs, dict):
        inputs = {**{name: {"type": "thread"} for name in threads}, **inputs}
    if not isinstance(inputs, dict):
        raise TemplateError(
            "'inputs' must map each input name to its spec",
            source=source,
            line=key_lines.get("inputs"),
        )
    fields: dict[str, Any] = {}
    for name, spec in inputs.items():
        line = key_lines.get(f"inputs.{name}")
        if not isinstance(name, str) or not name.isidentifier():
            raise TemplateError(
                f"input name {name!r} is not a valid identifier", source=source, line=line
            )
        if not isinstance(spec, dict):
            spec = {"type": _json_type(spec), "default": spec}
        if name in threads and spec.get("type", spec.get("kind")) in (None, "array", "list"):
            spec = {**spec, "type": "thread"}  # a list the body walks as a conversation
        if spec.get("type", spec.get("kind")) == "thread":
            spec.setdefault("default", [])
        annotation: Any = steps.run(partial(_input_annotation, name, spec, source, line), Any)
        description = spec.get("description")
        shown = next((spec[k] for k in ("sample", "example") if k in spec), _NONE)
        examples = None if shown is _NONE else [shown]
        if "default" in spec:
            default = spec["default"]
            if default is None:
                annotation = Optional[annotation]
            fields[name] = (
                annotation,
                Field(default, description=description, examples=examples),
            )
        elif spec.get("required", True) is False:
            fields[name] = (
                Optional[annotation],
                Field(None, description=description, examples=examples),
            )
        else:
            fields[name] = (annotation, Field(..., description=description, examples=examples))
    return create_model("Inputs", __config__=ConfigDict(extra="forbid"), **fields)


def _input_annotation(name: str, spec: dict[str, Any], source: str, line: int | None) -> Any:
    kind = spec.get("type", spec.get("kind"))
    if kind == "thread":
        return list[Message]
    if "enum" in spec:
        return Literal[tuple(spec["enum"])]
    if kind is None:
        return Any
    if kind in _INPUT_TYPES:
        return _INPUT_TYPES[kind]
    raise TemplateError(
        f"input {name!r} has unknown type {kind!r}; use one of "
        "string, integer, number, boolean, array, object, thread",
        source=source,
        line=line,
    )


def _properties_as_mapping(value: Any, key: str, source: str, key_lines: dict[str, int]) -> Any:
    """Prompty 2 writes inputs/outputs as a list of ``{name, kind, ...}``; make it a mapping."""
    if not isinstance(value, list):
        return value
    mapping: dict[str, Any] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise TemplateError(
                f"each entry of '{key}' needs a 'name', got {item!r}",
                source=source,
                line=key_lines.get(key),
            )
        spec = {k: v for k, v in item.items() if k != "name"}
        if "kind" in spec and "type" not in spec:
            spec["type"] = spec.pop("kind")
        mapping[item["name"]] = spec
    return mapping


def _json_type(value: Any) -> str:
    for kind, python in (
        ("boolean", bool),
        ("integer", int),
        ("number", float),
        ("array", list),
        ("object", dict),
    ):
        if isinstance(value, python):
            return kind
    return "string"


def output_type(front: dict[str, Any], source: str, key_lines: dict[str, int]) -> Any:
    output = front.get("output")
    outputs = _properties_as_mapping(front.get("outputs"), "outputs", source, key_lines)
    if output is None and outputs is None:
        return str
    if output is None:
        if not isinstance(outputs, dict):
            raise TemplateError(
                "'outputs' must map output names to specs",
                source=source,
                line=key_lines.get("outputs"),
            )
        schema = {
            "type": "object",
            "properties": {k: _output_property(v) for k, v in outputs.items()},
            "required": list(outputs),
        }
        return type_from_schema(schema, source=source)
    line = key_lines.get("output")
    if not isinstance(output, dict):
        raise TemplateError(
            "'output' must be a mapping such as {labels: [...]}, {type: integer}, "
            "{regex: '...'} or {schema: {...}}",
            source=source,
            line=line,
        )
    try:
        if "labels" in output:
            labels = output["labels"]
            if (
                not isinstance(labels, list)
                or not labels
                or not all(isinstance(x, str) for x in labels)
            ):
                raise TemplateError(
                    "output.labels must be a non-empty list of strings (quote labels such as "
                    "'yes', 'no', 'on' or 'off', which YAML reads as booleans)"
                )
            return Literal[tuple(labels)]
        if "schema" in output:
            return type_from_schema(output["schema"], name=output.get("name", "Output"))
        for key in ("regex", "lark"):
            if key in output:
                text = output[key]
                if not isinstance(text, str):
                    raise TemplateError(f"output.{key} must be a string, got {text!r}")
                return Regex(text) if key == "regex" else Lark(text)
        kind = output.get("type")
        if kind in _SIMPLE_OUTPUTS or kind == "array":
            return type_from_schema(output)
        raise TemplateError(
            "output needs 'labels', 'schema', 'regex', 'lark' or a 'type' (string, integer, "
            f"number, boolean, array), got keys {sorted(output)}"
        )
    except TemplateError as exc:
        raise TemplateError(exc.reason, source=source, line=line) from None


_SCHEMA_KEYS = {"type", "description", "enum", "items", "properties", "minimum", "maximum"}


def _output_property(spec: Any) -> dict[str, Any]:
    """A Prompty ``outputs`` entry as a JSON schema (its other keys, e.g. ``example``, dropped)."""
    if not isinstance(spec, dict):
        return {"type": "string"}
    schema = {k: v for k, v in spec.items() if k in _SCHEMA_KEYS}
    schema.setdefault("type", "string")
    return schema


def examples_of(raw: Any, source: str, line: int | None) -> list[Example]:
    if not isinstance(raw, list):
        raise TemplateError(
            "'examples' must be a list of {input: {...}, output: ...}", source=source, line=line
        )
    examples = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"input", "output"}:
            raise TemplateError(
                f"example {i} must have exactly the keys 'input' and 'output'",
                source=source,
                line=line,
            )
        examples.append(Example(input=item["input"], output=item["output"]))
    return examples


def generation_config(parameters: Any, source: str, line: int | None) -> GenerationConfig | None:
    if not isinstance(parameters, Mapping):
        raise TemplateError("'model.parameters' must be a mapping", source=source, line=line)
    known = {k: v for k, v in parameters.items() if k in _CONFIG_KEYS}
    try:
        return GenerationConfig(**known) if known else None
    except ConfigurationError as exc:
        raise TemplateError(str(exc), source=source, line=line) from None
