"""Prompt -> ``.prompty`` text: the inverse of :func:`promptkit._files.load_prompt`."""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel

from ._conversation import ThreadSlot, is_thread_type
from ._outputs import Lark, Regex, strip_annotated
from ._prompt import Prompt

__all__ = ["dump_prompty"]

_TYPE_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def dump_prompty(prompt: Prompt[Any]) -> str:
    """The text of a template file holding ``prompt`` (front matter + body)."""
    import yaml

    front: dict[str, Any] = {"name": prompt.name or "prompt"}
    if prompt.description:
        front["description"] = prompt.description
    model = dict(prompt.metadata.get("model") or {})
    model["api"] = prompt.style
    if prompt.config is not None:
        parameters = dict(model.get("parameters") or {})
        for key, value in vars(prompt.config).items():
            parameters[key] = list(value) if isinstance(value, tuple) else value
        model["parameters"] = {k: v for k, v in parameters.items() if v is not None}
    front["model"] = model
    front["inputs"] = _inputs(prompt)
    output = _output(prompt)
    if output is not None:
        front["output"] = output
    if prompt.examples:
        front["examples"] = [
            {
                "input": validated.model_dump(mode="json"),
                "output": prompt.output.adapter.dump_python(
                    prompt.output.validate(example.output), mode="json"
                ),
            }
            for validated, example in zip(prompt._example_inputs, prompt.examples, strict=True)
        ]
    if prompt.shots is not None:
        front["shots"] = prompt.shots
    if not prompt.format_instructions:
        front["format_instructions"] = False
    for key, value in prompt.metadata.items():
        front.setdefault(key, value)
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{head}---\n{_body(prompt)}"


def _body(prompt: Prompt[Any]) -> str:
    header = [_raw(prompt.system)] if prompt.system else []
    if prompt.instruction.source.strip():
        header.append(prompt.instruction.source)
    if not header and not prompt.turns and prompt.style == "completion":
        return prompt.query.source.rstrip("\n") + "\n"
    blocks = []
    if header:
        blocks.append("system:\n" + "\n\n".join(header))
    blocks.extend(
        f"{{{{ {turn.name} }}}}"  # a conversation input alone on a line is its place
        if isinstance(turn, ThreadSlot)
        else f"{turn.role}:\n{turn.template.source}"
        for turn in prompt.turns
    )
    if prompt.asks_query:
        blocks.append("user:\n" + prompt.query.source)
    return "\n\n".join(b.rstrip("\n") for b in blocks) + "\n"


def _raw(text: str) -> str:
    """Plain text that must not be read as a template on reload."""
    if any(mark in text for mark in ("{{", "{%", "{#")):
        return "{% raw %}" + text + "{% endraw %}"
    return text


def _inputs(prompt: Prompt[Any]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for name, info in prompt.input_type.model_fields.items():
        spec: dict[str, Any] = {}
        annotation = strip_annotated(info.annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = strip_annotated(args[0])
        if annotation is Any:
            pass
        elif is_thread_type(annotation):
            spec["type"] = "thread"
        elif typing.get_origin(annotation) is Literal:
            spec["type"] = "string"
            spec["enum"] = list(typing.get_args(annotation))
        else:
            origin = typing.get_origin(annotation) or annotation
            if isinstance(origin, type) and issubclass(origin, BaseModel):
                origin = dict
            spec["type"] = _TYPE_NAMES.get(origin, "string")
        if info.description:
            spec["description"] = info.description
        if not info.is_required():
            default = info.get_default(call_default_factory=True)
            if is_thread_type(annotation):
                default = [message.model_dump() for message in default]
            spec["default"] = default
        inputs[name] = spec
    return inputs


def _output(prompt: Prompt[Any]) -> dict[str, Any] | None:
    spec = prompt.output
    if spec.kind == "text":
        return None
    if spec.kind == "label":
        return {"labels": list(spec.labels)}
    if isinstance(spec.text_constraint, Regex):
        return {"regex": spec.text_constraint.pattern}
    if isinstance(spec.text_constraint, Lark):
        return {"lark": spec.text_constraint.grammar}
    inner = strip_annotated(spec.type)
    if inner in (int, float, bool) or (isinstance(inner, type) and issubclass(inner, enum.Enum)):
        return {**{k: v for k, v in spec.schema.items() if k != "title"}}
    return {"schema": spec.schema}
