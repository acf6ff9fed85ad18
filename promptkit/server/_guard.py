"""What a request may ask of the server (:class:`ServerLimits`), and the ASGI guard that checks
the API key and the body size before any routing."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ._errors import ApiError


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server, stated in one place.

    Each limit is enforced before any generation starts, and the error that refuses a request
    names the limit (status 413 for the body, 400 for the others). Raises
    :class:`~promptkit.errors.ConfigurationError` when a limit is not a positive integer.
    """

    max_body_bytes: int = 1024 * 1024  # size of a request body (``--max-body``)
    max_prompts: int = 64  # prompts in one /v1/completions request (``--max-prompts``)
    max_choices: int = 64  # completions one request asks for: prompts x n (``--max-choices``)
    # prompt tokens plus max_tokens for every choice, summed over the request
    max_request_tokens: int = 65_536  # (``--max-request-tokens``)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_prompts", "max_choices", "max_request_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"ServerLimits.{name} must be a positive integer, got {value!r}"
                )

    def check(self, name: str, value: int, what: str, param: str | None = None) -> None:
        """Raise a 400 :class:`ApiError` naming the limit ``name`` when ``value`` exceeds it."""
        limit = getattr(self, name)
        if value > limit:
            option = "--" + name.replace("_", "-")
            raise ApiError(
                400,
                f"this request asks for {value} {what}; the server's limit {name} is {limit} "
                f"(promptkit serve {option}); split the request",
                param=param,
                code="request_limit_exceeded",
            )


class Guard:
    """Pure ASGI middleware: the body size limit and the API key (for every path, the OpenAPI
    description and docs included), before any routing."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await _send(send, _too_large(self.max_body_bytes))
            return
        if self.api_key is not None:
            given = headers.get("api-key", b"")
            bearer = headers.get("authorization", b"")
            if not given and bearer.lower().startswith(b"bearer "):
                given = bearer[7:].strip()
            if not hmac.compare_digest(given, self.api_key):
                error = ApiError(
                    401,
                    "missing or wrong API key (send Authorization: Bearer KEY)",
                    "authentication_error",
                    code="invalid_api_key",
                )
                await _send(send, error)
                return
        await self.app(scope, _limited(receive, self.max_body_bytes), send)


def check_unicode(body: Any) -> None:
    """Raise ValueError naming the first string in ``body`` (a parsed JSON value) that holds a
    lone surrogate; iterative, so a deeply nested body cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("body", body)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = value[exc.start]
                raise ValueError(
                    f"{where} holds {bad!r}, a lone surrogate that is not valid Unicode text; "
                    "send text that UTF-8 can encode"
                ) from None
        elif isinstance(value, dict):
            stack.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}", item) for i, item in enumerate(value))


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body exceeds {limit} bytes, the server's limit max_body_bytes "
        "(promptkit serve --max-body)",
        code="request_limit_exceeded",
    )


def _limited(receive: Any, limit: int) -> Any:
    """``receive`` that fails a body (also one sent in chunks) longer than ``limit``."""
    seen = 0

    async def wrapped() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return wrapped


async def _send(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
