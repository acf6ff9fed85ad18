"""Errors in OpenAI's JSON shape, and the one mapping from promptkit's errors to them."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

from ..errors import ContextWindowError, PromptkitError, UsageError


class ApiError(HTTPException):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param",
    "code"}}`` with the HTTP ``status`` (an HTTPException, so FastAPI's body parsing lets it
    through)."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", **extra: Any
    ):
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        self.body["error"].update(extra)
        super().__init__(status, message)

    def __str__(self) -> str:
        return str(self.body["error"]["message"])


def api_error(exc: BaseException) -> ApiError:
    """Any error as the answer a client gets: the caller's mistakes (promptkit's usage errors,
    a prompt that does not fit) are 400s, everything else a 500 that names only its type."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException):
        return ApiError(exc.status_code, str(exc.detail))
    if isinstance(exc, ContextWindowError):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc))
    if isinstance(exc, PromptkitError):
        return ApiError(500, str(exc), "server_error")
    return ApiError(500, f"internal error: {type(exc).__name__}", "server_error")
