"""OpenAI's shapes: the request bodies promptkit reads, and the pieces of its answers (choices'
settings, usage, log-probabilities, server-sent events)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Union

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from .._grammar import Grammar
from ..backends._base import Completion, GenerationConfig
from ..errors import UsageError
from ._errors import ApiError
from ._guard import check_unicode

if TYPE_CHECKING:
    from ._worker import Stream

SEED_RANGE = 2**32  # seeds reach the backend modulo this (numpy's and transformers' range)

# Request fields promptkit does not serve yet: a client that sends them is told so, instead of
# getting an answer that silently ignored them (tool calling comes with a later release).
UNSUPPORTED_FIELDS = ("tools", "functions", "tool_choice", "function_call")


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, body: Any) -> Any:
        """Refuse strings that are not valid Unicode (a lone surrogate such as ``\\ud800``)."""
        check_unicode(body)
        return body

    @model_validator(mode="after")
    def _no_unsupported_fields(self) -> _Request:
        for field in UNSUPPORTED_FIELDS:
            if (self.model_extra or {}).get(field) not in (None, [], "none"):
                raise ApiError(
                    400,
                    f"{field!r} is not supported by promptkit serve (tool calling is not "
                    "available yet); send the request without it",
                    param=field,
                    code="unsupported_parameter",
                )
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options needs stream: true", param="stream_options")
        return self

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a chunk that holds the usage."""
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(_Request):
    """The body of ``POST /v1/chat/completions`` (the fields promptkit reads)."""

    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return self


class CompletionRequest(_Request):
    """The body of ``POST /v1/completions`` (the fields promptkit reads). ``prompt`` is a
    text, a list of texts, a list of token ids, or a list of such lists."""

    prompt: Union[str, list[str], list[StrictInt], list[list[StrictInt]]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


def message(raw: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as promptkit's {role, content} (text parts of content lists joined)."""
    content = raw.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise ApiError(400, "only text message content is supported", param="messages")
            parts.append(str(part.get("text", "")))
        content = "".join(parts)
    role = raw.get("role")
    if role == "developer":
        role = "system"
    return {"role": role, "content": content}


def configs(
    body: _Request, max_tokens: int, response_format: dict[str, Any] | None = None
) -> list[GenerationConfig]:
    """One GenerationConfig per choice (``n``); sampled choices get consecutive seeds. A seed
    (OpenAI's: any 64-bit integer) reaches the backend modulo ``SEED_RANGE``."""
    grammar = _grammar(response_format)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    seed = None if body.seed is None else body.seed % SEED_RANGE
    try:
        base = GenerationConfig(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(stop),
            seed=seed,
            grammar=grammar,
        )
    except UsageError as exc:
        raise ApiError(400, str(exc)) from exc
    if body.n == 1:
        return [base]
    first = seed if seed is not None else secrets.randbelow(SEED_RANGE)
    return [base.replace(seed=(first + i) % SEED_RANGE) for i in range(body.n)]


def _grammar(response_format: dict[str, Any] | None) -> Grammar | None:
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return Grammar.json_schema({"type": "object"}, leading_space=False)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be an object")
        return Grammar.json_schema(schema, leading_space=False)
    raise ApiError(400, f"unknown response_format type {kind!r}", param="response_format")


def usage(per_prompt: list[list[Completion]]) -> dict[str, int]:
    """Token usage of a request: each prompt counted once, every choice's completion."""
    prompt = sum(choices[0].usage.prompt_tokens for choices in per_prompt if choices)
    completion = sum(c.usage.completion_tokens for choices in per_prompt for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class EventStream(StreamingResponse):
    """Server-sent events of ``job``'s chunks. However the response ends (a client that
    disconnects, a server shutting down) the job is closed, so its generation stops."""

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], job: Stream):
        self._events = _sse(chunks)
        self._job = job
        super().__init__(self._events, media_type="text/event-stream")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.close()
            await self._events.aclose()


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[str, None]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ApiError as exc:
        yield f"data: {json.dumps(exc.body)}\n\n"
    yield "data: [DONE]\n\n"
