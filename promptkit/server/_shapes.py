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
from ..backends._tool_calls import ToolChoice, ToolSpec
from ..errors import UsageError
from ._errors import ApiError
from ._guard import check_unicode

if TYPE_CHECKING:
    from ._worker import Stream

SEED_RANGE = 2**32  # seeds reach the backend modulo this (numpy's and transformers' range)

# The API's deprecated way to offer tools: a client that sends them is told to send ``tools``,
# instead of getting an answer that silently ignored them.
UNSUPPORTED_FIELDS = ("functions", "function_call")


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
                    f"{field!r} (the deprecated function calling) is not supported by promptkit "
                    "serve; offer the functions as tools (and tool_choice) instead",
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
    tools: list[Any] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if self.tools and (self.stream or self.logprobs):
            field = "stream" if self.stream else "logprobs"
            raise ApiError(
                400,
                f"{field} is not supported with tools; send the request without it",
                param=field,
            )
        return self

    def tool_settings(self) -> tuple[tuple[ToolSpec, ...], ToolChoice]:
        """The offered tools and the tool_choice (a function's name for a named one).

        Raises ApiError (400, naming the field) for a tool or choice of the wrong shape."""
        specs = tuple(_tool_spec(i, tool) for i, tool in enumerate(self.tools or []))
        choice: Any = self.tool_choice
        if choice is None or (choice == "none" and not specs):
            return specs, "auto"
        if isinstance(choice, dict):
            function = choice.get("function")
            if choice.get("type") != "function" or not isinstance(function, dict):
                raise ApiError(400, _CHOICE_SHAPE, param="tool_choice")
            choice = function.get("name")
        if not isinstance(choice, str):
            raise ApiError(400, _CHOICE_SHAPE, param="tool_choice")
        return specs, choice


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


_CHOICE_SHAPE = (
    "tool_choice must be 'auto', 'required', 'none' or "
    '{"type": "function", "function": {"name": ...}}'
)


def _tool_spec(i: int, tool: Any) -> ToolSpec:
    """Tool ``i`` of a request (``{"type": "function", "function": {"name", "description",
    "parameters"}}``) as a ToolSpec; ApiError (400) for another shape."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if not (
        isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
        and isinstance(function.get("description", ""), str)
        and isinstance(function.get("parameters", {}), dict)
    ):
        raise ApiError(
            400,
            f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
            "'description': ..., 'parameters': {JSON schema}}}",
            param="tools",
        )
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return ToolSpec(function["name"], function.get("description", ""), parameters)


def message(raw: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as promptkit's {role, content} (text parts of content lists joined),
    with an assistant's ``tool_calls`` and a tool message's ``tool_call_id``."""
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
    converted: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant" and raw.get("tool_calls"):
        converted["content"] = content or ""  # an answer that only calls tools has none
        converted["tool_calls"] = [_call(call) for call in raw["tool_calls"]]
    if "tool_call_id" in raw:
        converted["tool_call_id"] = raw["tool_call_id"]
    return converted


def _call(call: Any) -> dict[str, Any]:
    """An API tool call as promptkit's ``{"id", "name", "arguments"}``; 400 for another shape."""
    function = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(call, dict) and isinstance(function, dict)):
        raise ApiError(
            400,
            "a tool call must be {'id': ..., 'type': 'function', 'function': {'name': ..., "
            "'arguments': ...}}",
            param="messages",
        )
    return {
        "id": call.get("id"),
        "name": function.get("name"),
        "arguments": function.get("arguments"),
    }


def tool_calls(completion: Completion) -> list[dict[str, Any]]:
    """A completion's calls in the API's shape."""
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in completion.tool_calls
    ]


def configs(
    body: _Request,
    max_tokens: int,
    response_format: dict[str, Any] | None = None,
    tools: tuple[tuple[ToolSpec, ...], ToolChoice] = ((), "auto"),
) -> list[GenerationConfig]:
    """One GenerationConfig per choice (``n``), offering ``tools`` (the tools and the choice);
    sampled choices get consecutive seeds. A seed (OpenAI's: any 64-bit integer) reaches the
    backend modulo ``SEED_RANGE``."""
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
            tools=tools[0],
            tool_choice=tools[1],
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
