"""How promptkit speaks the OpenAI API: a GenerationConfig as request parameters, a grammar as
``response_format``, and the SDK's errors as promptkit errors with secrets scrubbed.

Private to :mod:`promptkit.backends._openai`, which re-exports the public names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .._grammar import Grammar
from ..errors import BackendError, ConfigurationError, ContextWindowError
from ._base import GenerationConfig
from ._messages import Message
from ._tool_calls import CHOICE_KEYWORDS, FunctionCall

__all__ = [
    "MIN_SECRET_LENGTH",
    "api_messages",
    "map_error",
    "read_tool_calls",
    "request_params",
    "response_format",
    "scrub",
    "scrubbed_copy",
    "status_error",
    "tool_params",
]

# Models that take max_completion_tokens and fix temperature/top_p (reasoning models).
_REASONING = re.compile(r"^(o\d|gpt-5)")
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-*.]{4,})")
# Values shorter than this are placeholders ("x", "EMPTY", "unused": self-hosted servers that
# check no key), not secrets: real API keys are tens of characters (OpenAI's 51 and more,
# Azure's 32), so scrubbing a short value would hide nothing while mangling every word that
# contains it ("max_tokens" -> "ma***_tokens" for the key "x").
MIN_SECRET_LENGTH = 8


def request_params(model: str, config: GenerationConfig, *, chat: bool) -> dict[str, Any]:
    """The API parameters of a GenerationConfig for ``model``.

    Raises ConfigurationError for what the API cannot do (top_k, more than 4 stop sequences).
    Reasoning models (o1, o3, o4-mini, gpt-5 ...) take ``max_completion_tokens`` and their
    fixed temperature and top_p, so those two are not sent to them.
    """
    if config.top_k is not None:
        raise ConfigurationError("top_k is not supported by the OpenAI API; leave it unset")
    if len(config.stop) > 4:
        raise ConfigurationError(
            f"the OpenAI API takes at most 4 stop sequences, got {len(config.stop)}"
        )
    params: dict[str, Any] = {}
    reasoning = bool(_REASONING.match(model))
    if chat and reasoning:
        params["max_completion_tokens"] = config.max_tokens
    else:
        params["max_tokens"] = config.max_tokens
        params["temperature"] = config.temperature
        params["top_p"] = config.top_p
    if config.stop:
        params["stop"] = list(config.stop)
    if config.seed is not None:
        params["seed"] = config.seed
    return params


def tool_params(config: GenerationConfig) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` of a request that offers tools (none otherwise)."""
    if not config.tools:
        return {}
    choice: Any = config.tool_choice
    if choice not in CHOICE_KEYWORDS:
        choice = {"type": "function", "function": {"name": choice}}
    return {"tools": [t.as_openai() for t in config.tools], "tool_choice": choice}


def api_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages in the API's shape: an assistant's calls as ``tool_calls`` of functions."""
    shaped: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            item["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in m["tool_calls"]
            ]
        if "tool_call_id" in m:
            item["tool_call_id"] = m["tool_call_id"]
        shaped.append(item)
    return shaped


def read_tool_calls(message: Any) -> tuple[FunctionCall, ...]:
    """The function calls of a response message, raw (arguments as the model wrote them).

    Raises TypeError for a call of the wrong shape (the caller reports the response)."""
    calls = getattr(message, "tool_calls", None) or []
    read = []
    for call in calls:
        function = call.function
        name, arguments, call_id = function.name, function.arguments, call.id
        if not all(isinstance(v, str) for v in (name, arguments, call_id)):
            raise TypeError(f"a tool call's name, arguments and id must be strings, got {call!r}")
        read.append(FunctionCall(name=name, arguments=arguments, id=call_id))
    return tuple(read)


def response_format(grammar: Grammar) -> dict[str, Any]:
    """Structured output for a JSON-schema grammar: a strict ``json_schema`` response format
    when the schema meets strict mode's rules (every property required, no extra
    properties), else JSON mode (the run loop's parse-and-re-ask checks the rest)."""
    schema = json.loads(grammar.source)
    strict = _strict(schema)
    if strict is None or schema.get("type") != "object":
        return {"type": "json_object"}
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "output"))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": strict, "strict": True}}


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object, or None when an
    object leaves a property optional (strict mode requires them all)."""
    if isinstance(schema, list):
        items = [_strict(s) for s in schema]
        return None if any(i is None for i in items) else items
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions"):
            inner = {k: _strict(v) for k, v in value.items()}
            if any(v is None for v in inner.values()):
                return None
            result[key] = inner
        elif isinstance(value, (dict, list)) and key not in ("enum", "const", "default"):
            converted = _strict(value)
            if converted is None:
                return None
            result[key] = converted
        else:
            result[key] = value
    if result.get("type") == "object" and "properties" in result:
        if set(result.get("required", [])) != set(result["properties"]):
            return None
        if result.get("additionalProperties", False) is not False:
            return None
        result["additionalProperties"] = False
    return result


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` without any of ``secrets`` that is long enough to be a secret (at least
    :data:`MIN_SECRET_LENGTH` characters), nor anything shaped like an ``sk-`` API key."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub("sk-***", text)


def map_error(exc: Exception, backend: str, secrets: Sequence[str] = ()) -> Exception:
    """The promptkit error for an ``openai`` SDK error, its message scrubbed of ``secrets``.

    ``exc`` itself is not changed.
    """
    import openai

    message = scrub(str(getattr(exc, "message", None) or exc), secrets)
    if isinstance(exc, openai.APITimeoutError):
        return BackendError(
            f"the request timed out: {message}", backend=backend, retryable=True, kind="timeout"
        )
    if isinstance(exc, openai.APIConnectionError):
        return BackendError(
            f"cannot connect: {message}", backend=backend, retryable=True, kind="connection"
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return BackendError(
            f"the service's response does not have the expected shape: {message}",
            backend=backend,
            kind="bad_response",
        )
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, _error_code(exc), message, backend)
    return BackendError(message, backend=backend, kind="other")


def status_error(
    status: int, code: str | None, message: str, backend: str
) -> BackendError | ContextWindowError:
    """The promptkit error of an HTTP error answer (``code``: the error's ``code`` field), by
    its status: a context window overflow, a content filter refusal, or a BackendError whose
    ``kind`` and ``retryable`` the status decides."""
    if code == "context_length_exceeded" or "maximum context length" in message:
        return ContextWindowError(f"{backend}: {message}")
    if code == "content_filter" or "content management policy" in message:
        return BackendError(
            f"the request was refused by the content filter: {message}",
            backend=backend,
            kind="content_filter",
        )
    kinds = {
        400: ("bad_request", False, "the request was refused"),
        401: ("authentication", False, "authentication failed (check the API key)"),
        403: ("permission", False, "permission denied"),
        404: ("not_found", False, "not found (check the model or deployment name)"),
        408: ("timeout", True, "the request timed out"),
        409: ("conflict", True, "conflict"),
        422: ("bad_request", False, "the request was refused"),
        429: ("rate_limit", True, "rate limited (or out of quota)"),
    }
    kind, retryable, what = kinds.get(
        status, ("server", status >= 500, f"the service failed (HTTP {status})")
    )
    return BackendError(f"{what}: {message}", backend=backend, retryable=retryable, kind=kind)


def scrubbed_copy(exc: Exception, secrets: Sequence[str]) -> Exception:
    """A copy of the SDK error whose message, args and body are scrubbed of ``secrets`` (the
    error itself when there is nothing to scrub): it becomes the promptkit error's
    ``__cause__``, so tracebacks and error reporters show no key, while the SDK's own
    exception object is left untouched."""
    message = str(getattr(exc, "message", None) or exc)
    body = getattr(exc, "body", None)
    shown = json.dumps(body, default=str) if body is not None else ""
    if scrub(message, secrets) == message and scrub(shown, secrets) == shown:
        return exc
    copy = type(exc).__new__(type(exc))
    copy.__dict__.update(vars(exc))
    copy.args = tuple(scrub(a, secrets) if isinstance(a, str) else a for a in exc.args)
    if hasattr(exc, "message"):
        copy.message = scrub(message, secrets)  # type: ignore[attr-defined]
    if body is not None:
        copy.body = json.loads(scrub(shown, secrets))  # type: ignore[attr-defined]
    copy.__cause__ = exc.__cause__
    return copy.with_traceback(exc.__traceback__)


def _error_code(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code"):
            return str(inner["code"])
    code = getattr(exc, "code", None)
    return str(code) if code else None
