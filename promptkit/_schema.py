"""JSON Schema -> Python type (pydantic models for objects), for output types declared in files.

Covers what structured-output schemas use: objects (nested, required/optional, additional
properties), arrays (items, min/max items), enums and consts, strings (length, pattern, and
``x-span-of``: copied from an input), numbers and integers (bounds), booleans, null,
``anyOf``/``oneOf`` and type lists, ``$ref`` to ``$defs``/``definitions``, descriptions and
defaults. Anything else is a TemplateError naming the keyword, never silently ignored.

A bound (``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``minLength``,
``maxLength``, ``minItems``, ``maxItems``) may be a Jinja template over the prompt's inputs,
``maximum: "{{ answers|length - 1 }}"``, rendered for each run (see :mod:`promptkit._bounds`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, create_model

from ._bounds import BOUND_KEY, BOUND_KEYWORDS, InputBound
from ._outputs import SPAN_KEY, SpanOf
from .errors import TemplateError

__all__ = ["type_from_schema"]

_ANNOTATION_KEYS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "format",
    "deprecated",
    "readOnly",
    "writeOnly",
}
_SUPPORTED = {
    "object": {"type", "properties", "required", "additionalProperties"},
    "array": {"type", "items", "minItems", "maxItems", BOUND_KEY},
    "string": {"type", "minLength", "maxLength", "pattern", "enum", "const", SPAN_KEY, BOUND_KEY},
    "integer": {
        "type",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "enum",
        "const",
        BOUND_KEY,
    },
    "number": {
        "type",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "enum",
        "const",
        BOUND_KEY,
    },
    "boolean": {"type", "enum", "const"},
    "null": {"type"},
}
_SCALARS: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "null": type(None),
}
_CONSTRAINTS = {
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "minItems": "min_length",
    "maxItems": "max_length",
}


def type_from_schema(schema: Any, *, name: str = "Output", source: str | None = None) -> Any:
    """Build the Python type that validates exactly what ``schema`` describes.

    Raises TemplateError naming the keyword or construct that is not supported.
    """
    if not isinstance(schema, dict):
        raise TemplateError(
            f"a JSON schema must be a mapping, got {type(schema).__name__}", source=source
        )
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _Builder(defs, source).build(schema, name)


class _Builder:
    def __init__(self, defs: dict[str, Any], source: str | None):
        self.defs = defs
        self.source = source
        self.models: dict[str, Any] = {}

    def fail(self, message: str) -> TemplateError:
        return TemplateError(f"unsupported JSON schema: {message}", source=self.source)

    def build(self, schema: Any, name: str) -> Any:
        if schema is True or schema == {}:
            return Any
        if not isinstance(schema, dict):
            raise self.fail(f"expected a schema object at {name!r}, got {schema!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.build(s, f"{name}Option{i}") for i, s in enumerate(schema[key])]
                return Union[tuple(options)]
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            if not values:
                raise self.fail(f"{name!r} has an empty enum")
            return Literal[tuple(values)]
        kind = schema.get("type")
        if isinstance(kind, list):
            options = [self.build({**schema, "type": k}, name) for k in kind]
            return Union[tuple(options)]
        if kind is None:
            if "properties" in schema:
                kind = "object"
            else:
                raise self.fail(f"{name!r} has no 'type' (or anyOf/enum/$ref)")
        if kind not in _SUPPORTED:
            raise self.fail(f"type {kind!r} at {name!r}")
        unknown = set(schema) - _SUPPORTED[kind] - _ANNOTATION_KEYS
        if unknown:
            raise self.fail(f"keyword(s) {', '.join(sorted(unknown))} at {name!r}")
        if kind == "object":
            return self.object(schema, name)
        if kind == "array":
            item = self.build(schema.get("items", True), f"{name}Item")
            return self.constrained(list[item], schema, name, kind)  # type: ignore[valid-type]
        return self.constrained(_SCALARS[kind], schema, name, kind)

    def constrained(self, base: Any, schema: dict[str, Any], name: str, kind: str) -> Any:
        bounds = self.input_bounds(schema, name, kind)
        options = {
            _CONSTRAINTS[k]: v for k, v in schema.items() if k in _CONSTRAINTS and k not in bounds
        }
        for keyword in set(schema) & set(BOUND_KEYWORDS) - set(bounds):
            value = schema[keyword]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TemplateError(
                    f"the output schema's {keyword} at {name!r} must be a number or a template "
                    f"over the inputs such as '{{{{ answers|length - 1 }}}}', got {value!r}",
                    source=self.source,
                )
        if "pattern" in options:
            try:
                re.compile(options["pattern"])
            except re.error as exc:
                raise self.fail(f"invalid pattern {options['pattern']!r}: {exc}") from None
        metadata: list[Any] = [Field(**options)] if options else []
        metadata.extend(bounds.values())
        if SPAN_KEY in schema:
            source = schema[SPAN_KEY]
            if not isinstance(source, str) or not source.isidentifier():
                raise self.fail(f"{SPAN_KEY} at {name!r} must name an input field, got {source!r}")
            metadata.append(SpanOf(source))
        return Annotated[tuple([base, *metadata])] if metadata else base

    def input_bounds(self, schema: dict[str, Any], name: str, kind: str) -> dict[str, InputBound]:
        """The bounds of ``schema`` given as templates over the inputs: string values of bound
        keywords, and the ``x-from-inputs`` mapping (how a type's own JSON schema writes them)."""
        written = schema.get(BOUND_KEY, {})
        if not isinstance(written, dict):
            raise self.fail(f"{BOUND_KEY} at {name!r} must map bound keywords to templates")
        twice = set(written) & set(schema)
        if twice:
            raise self.fail(f"{', '.join(sorted(twice))} at {name!r} is given twice")
        templates = {k: v for k, v in schema.items() if k in BOUND_KEYWORDS and isinstance(v, str)}
        bounds: dict[str, InputBound] = {}
        for keyword, template in {**templates, **written}.items():
            if keyword not in _SUPPORTED[kind]:
                raise self.fail(f"keyword {keyword} at {name!r} (in {BOUND_KEY})")
            try:
                bound = InputBound(keyword, template)
                if not bound.variables:  # a constant: render it now, so that a bad one fails here
                    bound.value({})
            except TemplateError as exc:
                reason = exc.reason
                if not reason.startswith("the output schema's"):
                    reason = f"the output schema's {keyword} {template!r} fails: {reason}"
                raise TemplateError(f"{reason} (at {name!r})", source=self.source) from None
            bounds[keyword] = bound
        return bounds

    def object(self, schema: dict[str, Any], name: str) -> Any:
        properties = schema.get("properties", {})
        if not properties:
            values = schema.get("additionalProperties", True)
            value = Any if values is True else self.build(values, f"{name}Value")
            return dict[str, value]  # type: ignore[valid-type]
        required = set(schema.get("required", []))
        unknown_required = required - set(properties)
        if unknown_required:
            raise self.fail(f"{name!r} requires undeclared properties {sorted(unknown_required)}")
        fields: dict[str, Any] = {}
        for prop, sub in properties.items():
            if not prop.isidentifier() or prop.startswith("_"):
                raise self.fail(f"property name {prop!r} at {name!r} is not a Python identifier")
            annotation = self.build(sub, _camel(name, prop))
            description = sub.get("description") if isinstance(sub, dict) else None
            if prop in required:
                fields[prop] = (annotation, Field(..., description=description))
            else:
                default = sub.get("default") if isinstance(sub, dict) else None
                fields[prop] = (Optional[annotation], Field(default, description=description))
        extra: Literal["forbid", "ignore"] = (
            "forbid" if schema.get("additionalProperties") is False else "ignore"
        )
        title = schema.get("title") or name
        model = create_model(_identifier(title), __config__=ConfigDict(extra=extra), **fields)
        if schema.get("description"):
            model.__doc__ = schema["description"]
        return model

    def ref(self, ref: Any) -> Any:
        match = re.fullmatch(r"#/(?:\$defs|definitions)/(.+)", str(ref))
        if not match or match.group(1) not in self.defs:
            raise self.fail(f"$ref {ref!r} (only local #/$defs/NAME references are supported)")
        key = match.group(1)
        if key not in self.models:
            self.models[key] = None  # recursion guard
            self.models[key] = self.build(self.defs[key], _identifier(key))
        elif self.models[key] is None:
            raise self.fail(f"recursive $ref {ref!r}")
        return self.models[key]


def _camel(parent: str, prop: str) -> str:
    return parent + "".join(part.capitalize() for part in prop.split("_"))


def _identifier(text: str) -> str:
    cleaned = re.sub(r"\W+", "_", str(text)).strip("_") or "Model"
    return cleaned if not cleaned[0].isdigit() else f"M{cleaned}"
