"""Prompty compatibility: the front matter keys that Prompty 1 and 2 spell their own way.

``model: gpt-4o`` (an id alone), ``model.options`` beside ``model.parameters`` (camelCase
names such as ``maxOutputTokens`` included), ``model.*.response_format`` as the output type
(``${file:schema.json}`` allowed there), Prompty 2's ``inputSchema: {properties: [...]}``,
``kind: thread`` inputs, per-input ``sample:`` / ``example:`` values, and the backend that
``model.configuration`` (Prompty 1) or ``model.connection`` (Prompty 2) names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._prompt import Prompt, TemplateFormat
from ._references import resolve_env
from ._schema import type_from_schema
from .backends._base import Backend
from .errors import ConfigurationError, TemplateError

__all__ = [
    "backend_from_prompt",
    "declared_inputs",
    "model_options",
    "response_format_type",
    "sample_inputs",
    "split_response_format",
    "template_format",
    "thread_inputs",
]

_OPTION_KEYS = ("parameters", "options")
# Prompty 2's option names -> GenerationConfig's fields.
_OPTION_NAMES = {
    "maxOutputTokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "topP": "top_p",
    "topK": "top_k",
    "stopSequences": "stop",
}


def split_response_format(model: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``model.parameters.response_format`` (or ``model.options.response_format``; None when
    neither) and the model settings without it, whose references are checked separately."""
    found = None
    rest: dict[str, Any] = dict(model)
    for key in _OPTION_KEYS:
        options = model.get(key)
        if isinstance(options, Mapping) and "response_format" in options:
            found = options["response_format"]
            rest[key] = {k: v for k, v in options.items() if k != "response_format"}
    return found, rest


def model_options(model: Mapping[str, Any], source: str, line: int | None) -> dict[str, Any]:
    """The generation settings of ``model.parameters`` (Prompty 1) and ``model.options``
    (Prompty 2, which wins), under promptkit's names. Raises TemplateError when one is not a
    mapping."""
    merged: dict[str, Any] = {}
    for key in _OPTION_KEYS:
        options = model.get(key)
        if options is None:
            continue
        if not isinstance(options, Mapping):
            raise TemplateError(f"'model.{key}' must be a mapping", source=source, line=line)
        merged.update({_OPTION_NAMES.get(str(k), str(k)): v for k, v in options.items()})
    return merged


def response_format_type(
    response_format: Any, resolve: Callable[[Any], Any], source: str, line: int | None
) -> Any:
    """The output type an OpenAI ``response_format`` asks for: ``{type: json_schema,
    json_schema: {name, schema}}`` gives that schema's model, ``json_object`` a dict, ``text``
    str. ``resolve`` reads its ``${file:...}``. Raises TemplateError for another shape."""
    value = resolve(response_format)
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "text":
        return str
    if kind == "json_object":
        return dict[str, Any]
    spec = value.get("json_schema") if isinstance(value, Mapping) else None
    if kind == "json_schema" and isinstance(spec, Mapping) and isinstance(spec.get("schema"), dict):
        try:
            return type_from_schema(spec["schema"], name=str(spec.get("name") or "Output"))
        except TemplateError as exc:
            raise TemplateError(
                f"model response_format: {exc.reason}", source=source, line=line
            ) from None
    raise TemplateError(
        "model response_format must be {type: json_schema, json_schema: {name, schema}}, "
        f"{{type: json_object}} or {{type: text}}, got {value!r:.200}",
        source=source,
        line=line,
    )


def declared_inputs(front: Mapping[str, Any]) -> Any:
    """The file's inputs: ``inputs``, or Prompty 2's ``inputSchema.properties``."""
    if front.get("inputs") is not None:
        return front["inputs"]
    schema = front.get("inputSchema")
    if isinstance(schema, Mapping):
        return schema.get("properties")
    return None


def thread_inputs(inputs: Any) -> frozenset[str]:
    """The names of the inputs declared ``kind: thread`` (or ``type: thread``)."""
    items: list[Mapping[str, Any]]
    if isinstance(inputs, Mapping):
        items = [{"name": k, **v} for k, v in inputs.items() if isinstance(v, Mapping)]
    elif isinstance(inputs, list):
        items = [i for i in inputs if isinstance(i, Mapping)]
    else:
        return frozenset()
    return frozenset(
        str(i["name"]) for i in items if "thread" in (i.get("kind"), i.get("type")) and "name" in i
    )


def template_format(front: dict[str, Any], source: str, line: int | None) -> TemplateFormat:
    """The body's template language: ``template: jinja2`` (the default) or ``mustache``, also
    as ``template: {format: ...}`` and Prompty 2's ``format: {kind: ...}``. Raises
    TemplateError for another."""
    template = front.get("template")
    fmt = template.get("format") if isinstance(template, dict) else template
    if isinstance(fmt, dict):
        fmt = fmt.get("kind")
    if fmt in (None, "jinja2", "jinja"):
        return "jinja2"
    if fmt == "mustache":
        return "mustache"
    raise TemplateError(
        f"template format {fmt!r} is not supported; promptkit renders jinja2 and mustache",
        source=source,
        line=line,
    )


def sample_inputs(prompt: Prompt[Any]) -> dict[str, Any] | None:
    """The sample inputs of a loaded template: each input's own ``sample:`` (or ``example:``)
    value, under the file's ``sample:`` mapping; None when it has neither."""
    sample = {
        name: field.examples[0]
        for name, field in prompt.input_type.model_fields.items()
        if field.examples
    }
    whole = prompt.metadata.get("sample")
    if isinstance(whole, dict):
        sample.update(whole)
    return sample or None


def _merged(template: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """A template's backend settings that are set, as text (YAML reads an unquoted
    ``api_version: 2024-06-01`` as a date), with ``given`` options over them."""
    return {**{k: str(v) for k, v in template.items() if v}, **given}


def backend_from_prompt(
    prompt: Prompt[Any], options: Mapping[str, Any] | None = None
) -> Backend | None:
    """The backend a template's ``model.configuration`` (Prompty 1) or ``model.connection``
    (Prompty 2) names, or None when it names none. ``options`` (the command line's
    ``--backend-option``) go to ``get_backend`` too, over the template's own settings.

    ``type: azure_openai`` (``azure_deployment``, ``azure_endpoint``, ``api_version``,
    ``api_key``) gives ``azure:DEPLOYMENT``; ``type: openai`` (``name`` or ``model``,
    ``api_key``, ``base_url``, ``organization``) gives ``openai:MODEL``; ``type: scratch``
    (``name``) gives ``scratch:NAME``, except that a known model or shipped adapter whose
    weights are not pulled yet gives None (the default rule applies; nothing is fetched to
    honour a template). ``${env:VAR}`` values
    are read now, when the backend is made (never when the file is loaded or saved). Unset
    values fall back to the backends' standard environment variables.
    Raises ConfigurationError for an unknown type, a missing variable or a ``${file:...}``.
    """
    from .backends import get_backend

    model = prompt.metadata.get("model")
    if not isinstance(model, dict):
        return None
    settings = model.get("configuration") or model.get("connection")
    if not isinstance(settings, dict) or not settings.get("type"):
        return None
    source = prompt.source
    extra = dict(options or {})
    values = {k: resolve_env(v, source) for k, v in settings.items() if k != "type"}
    kind = str(settings["type"]).lower()
    if kind in ("azure_openai", "azure"):
        deployment = values.pop("azure_deployment", None) or values.pop("deployment", None)
        if not deployment:
            raise ConfigurationError(f"{source}: model.configuration needs azure_deployment")
        given = {
            "endpoint": values.get("azure_endpoint") or values.get("endpoint"),
            "api_version": values.get("api_version"),
            "api_key": values.get("api_key"),
        }
        return get_backend(f"azure:{deployment}", **_merged(given, extra))
    if kind == "openai":
        name = values.get("name") or values.get("model") or model.get("name")
        if not name:
            raise ConfigurationError(f"{source}: model.configuration needs the model's name")
        given = {k: values.get(k) for k in ("api_key", "base_url", "organization")}
        return get_backend(f"openai:{name}", **_merged(given, extra))
    if kind == "scratch":
        from .models._registry import ready

        name = values.get("name") or values.get("model") or model.get("name")
        if not name:
            raise ConfigurationError(f"{source}: model.configuration needs the model's name")
        return get_backend(f"scratch:{name}", **extra) if ready(str(name)) else None
    raise ConfigurationError(
        f"{source}: model.configuration type {settings['type']!r} is not one promptkit knows "
        "(azure_openai, openai, scratch); pass --backend instead"
    )
