"""``promptkit serve``: any promptkit backend behind an OpenAI-compatible HTTP API.

Endpoints (FastAPI; the OpenAPI description is at ``/openapi.json``, docs at ``/docs``):

- ``GET /v1/models``
- ``POST /v1/chat/completions`` and ``POST /v1/completions``: non-streaming and streaming
  (server-sent events), ``n``, ``stop``, ``max_tokens`` (or ``max_completion_tokens``),
  ``temperature``, ``top_p``, ``seed``; ``logprobs`` / ``echo`` for completions;
  ``response_format`` ``json_schema`` (and ``json_object``) enforced by constrained decoding on
  local backends;
- the Azure routes ``/openai/deployments/{deployment}/chat/completions?api-version=...`` and
  ``.../completions``.

Errors use OpenAI's JSON shape (``{"error": {"message", "type", "param", "code"}}``) with the
matching status: 400 bad request (and context length), 401 missing or wrong key, 404 unknown
model, 413 body too large. With an API key set (``--api-key`` or ``PROMPTKIT_API_KEY``) every
request needs it (``Authorization: Bearer KEY`` or Azure's ``api-key: KEY``). Requests reach
the model one at a time (a queue in front of it), so concurrent clients never share its state.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue as queue_module
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .backends.base import (
    Backend,
    Completion,
    GenerationConfig,
    Message,
    check_messages,
    messages_to_text,
)
from .errors import (
    ConstraintError,
    ContextWindowError,
    InputValidationError,
    PromptkitError,
    UnsupportedCapabilityError,
    UsageError,
)
from .grammar import Grammar

__all__ = ["create_app"]

MAX_BODY_BYTES = 1024 * 1024


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False


class ChatRequest(_Request):
    """The body of ``POST /v1/chat/completions`` (the fields promptkit reads)."""

    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Request):
    """The body of ``POST /v1/completions`` (the fields promptkit reads)."""

    prompt: Union[str, list[str]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", **extra: Any
    ):
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        self.body["error"].update(extra)
        super().__init__(message)


def create_app(
    backend: Backend,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """The FastAPI application serving ``backend`` as ``model_name`` (default: its name)."""
    name = model_name or backend.name
    worker = _Worker(backend)
    queue = worker.lock  # one call at a time reaches the model
    app = FastAPI(
        title="promptkit serve",
        description=f"An OpenAI-compatible API over the promptkit backend {backend.name!r}.",
        version="1",
    )
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Any:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> Any:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return _error_response(ApiError(400, f"invalid request: {problems}"))

    def _error_response(exc: ApiError) -> Any:
        return JSONResponse(exc.body, status_code=exc.status)

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise ApiError(
                404,
                f"the model {requested!r} does not exist here; this server serves {name!r}",
                param="model",
                code="model_not_found",
            )

    def run(function: Any, *args: Any) -> Any:
        with queue:
            try:
                return function(*args)
            except PromptkitError as exc:
                raise _api_error(exc) from exc

    async def generate(prompt: Any, config: GenerationConfig) -> Completion:
        """Through the worker, which batches concurrent requests with the same settings."""
        try:
            completion: Completion = await asyncio.wrap_future(worker.submit(prompt, config))
        except PromptkitError as exc:
            raise _api_error(exc) from exc
        return completion

    @app.get("/v1/models")
    async def models() -> Any:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": name, "object": "model", "created": 0, "owned_by": "promptkit"}],
            }
        )

    async def chat(body: ChatRequest) -> Any:
        check_model(body.model)
        try:
            messages = check_messages([_message(m) for m in body.messages])
        except InputValidationError as exc:
            raise ApiError(400, str(exc), param="messages") from exc
        configs = _configs(
            body, body.max_completion_tokens or body.max_tokens, body.response_format
        )
        created, ident = int(time.time()), f"chatcmpl-{secrets.token_hex(12)}"
        if body.stream:
            return StreamingResponse(
                _sse(_chat_chunks(configs[0], messages, ident, created)),
                media_type="text/event-stream",
            )
        results: list[Completion] = []
        for config in configs:
            results.append(await generate(messages, config))
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": c.text},
                        "finish_reason": c.finish_reason,
                    }
                    for i, c in enumerate(results)
                ],
                "usage": _usage(results),
            }
        )

    def _chat_chunks(
        config: GenerationConfig, messages: list[Message], ident: str, created: int
    ) -> Iterator[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        yield chunk({"role": "assistant", "content": ""}, None)
        for piece in _locked_stream(messages, config):
            yield chunk({"content": piece}, None)
        yield chunk({}, "stop")

    def _locked_stream(prompt: Any, config: GenerationConfig) -> Iterator[str]:
        with queue:
            try:
                yield from backend.stream(prompt, config)
            except PromptkitError as exc:
                raise ApiError(400, str(exc)) from exc

    async def completions(body: CompletionRequest) -> Any:
        check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or any(not isinstance(p, str) for p in prompts):
            raise ApiError(400, "prompt must be a string or a list of strings", param="prompt")
        created, ident = int(time.time()), f"cmpl-{secrets.token_hex(12)}"
        if body.stream:
            if len(prompts) > 1 or body.n > 1 or body.echo or body.logprobs is not None:
                raise ApiError(400, "streaming takes one prompt, n=1, and no echo/logprobs")
            config = _configs(body, body.max_tokens, None)[0]
            return StreamingResponse(
                _sse(_completion_chunks(config, prompts[0], ident, created)),
                media_type="text/event-stream",
            )
        choices: list[dict[str, Any]] = []
        results: list[Completion] = []
        for prompt in prompts:
            if not prompt:
                raise ApiError(400, "prompt is empty", param="prompt")
            if body.max_tokens == 0:
                generated = [Completion(text="", finish_reason="length")] * body.n
            else:
                generated = [
                    await generate(prompt, config)
                    for config in _configs(body, body.max_tokens, None)
                ]
            for completion in generated:
                text = (prompt if body.echo else "") + completion.text
                logprobs = None
                if body.logprobs is not None:
                    logprobs = await run_in_threadpool(
                        run, _logprobs, prompt, completion.text, body.echo
                    )
                choices.append(
                    {
                        "index": len(choices),
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": completion.finish_reason,
                    }
                )
                results.append(completion)
        return JSONResponse(
            {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": choices,
                "usage": _usage(results),
            }
        )

    def _completion_chunks(
        config: GenerationConfig, prompt: str, ident: str, created: int
    ) -> Iterator[dict[str, Any]]:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [choice],
            }

        for piece in _locked_stream(prompt, config):
            yield chunk(piece, None)
        yield chunk("", "stop")

    def _logprobs(prompt: str, generated: str, echo: bool) -> dict[str, Any]:
        """Per-token log-probabilities (the prompt's too with ``echo``), from the backend's
        scoring: each token given everything before it."""
        scorer = getattr(backend, "token_logprobs", None)
        if scorer is None:
            raise UnsupportedCapabilityError(backend.name, "log-probabilities")
        tokens = scorer(prompt + generated)  # [(text, logprob or None, offset)]
        if not echo:
            tokens = [t for t in tokens if t[2] >= len(prompt)]
            base = len(prompt)
        else:
            base = 0
        return {
            "tokens": [t for t, _, _ in tokens],
            "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [None if lp is None else {t: lp} for t, lp, _ in tokens],
            "text_offset": [offset - base for _, _, offset in tokens],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        return await chat(body)

    @app.post("/v1/completions")
    async def text_completions(body: CompletionRequest) -> Any:
        return await completions(body)

    @app.post("/openai/deployments/{deployment}/chat/completions")
    async def azure_chat_completions(deployment: str, request: Request, body: ChatRequest) -> Any:
        _azure(deployment, request, body)
        return await chat(body)

    @app.post("/openai/deployments/{deployment}/completions")
    async def azure_completions(deployment: str, request: Request, body: CompletionRequest) -> Any:
        _azure(deployment, request, body)
        return await completions(body)

    return app


def _api_error(exc: PromptkitError) -> ApiError:
    if isinstance(exc, ContextWindowError):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, (ConstraintError, UnsupportedCapabilityError, InputValidationError)):
        return ApiError(400, str(exc))
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc))
    return ApiError(500, str(exc), "server_error")


class _Worker:
    """The one thread that generates: it takes the waiting requests and runs those with the
    same settings as one batch (``generate_batch``) when the backend has it; each request
    gets what it would get alone."""

    def __init__(self, backend: Backend, max_batch: int = 32):
        self.backend = backend
        self.max_batch = max_batch
        self.lock = threading.Lock()
        self._queue: queue_module.SimpleQueue[tuple[Any, GenerationConfig, Future[Any]]] = (
            queue_module.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="promptkit-worker", daemon=True)
        self._thread.start()

    def submit(self, prompt: Any, config: GenerationConfig) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((prompt, config, future))
        return future

    def _run(self) -> None:
        while True:
            waiting = [self._queue.get()]
            while len(waiting) < self.max_batch:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue_module.Empty:
                    break
            groups: dict[GenerationConfig, list[tuple[Any, Future[Any]]]] = {}
            for prompt, config, future in waiting:
                groups.setdefault(config, []).append((prompt, future))
            for config, group in groups.items():
                self._serve(config, group)

    def _serve(self, config: GenerationConfig, group: list[tuple[Any, Future[Any]]]) -> None:
        batch = getattr(self.backend, "generate_batch", None)
        texts = [self._as_text(prompt) for prompt, _ in group]
        with self.lock:
            if batch is not None and len(group) > 1 and all(t is not None for t in texts):
                try:
                    results = batch(texts, config)
                except Exception as exc:  # each request then fails with the same error
                    for _, future in group:
                        future.set_exception(exc)
                    return
                for (_, future), result in zip(group, results, strict=True):
                    future.set_result(result)
                return
            for prompt, future in group:
                try:
                    future.set_result(self.backend.generate(prompt, config))
                except Exception as exc:
                    future.set_exception(exc)

    def _as_text(self, prompt: Any) -> str | None:
        """The prompt as the text a completion-only backend sees (None: send it as is)."""
        if isinstance(prompt, str):
            return prompt
        if self.backend.capabilities.chat:
            return None
        return messages_to_text(prompt)


class _Guard:
    """Pure ASGI middleware: the body size limit and the API key, before any routing."""

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
            await _send(
                send, ApiError(413, f"the request body exceeds {self.max_body_bytes} bytes")
            )
            return
        if self.api_key is not None and scope["path"] not in ("/openapi.json", "/docs"):
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


def _limited(receive: Any, limit: int) -> Any:
    """``receive`` that fails a body (also one sent in chunks) longer than ``limit``."""
    seen = 0

    async def wrapped() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ApiError(413, f"the request body exceeds {limit} bytes")
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


def _azure(deployment: str, request: Request, body: _Request) -> None:
    """Azure's routes: the deployment in the URL names the model; api-version is required."""
    if "api-version" not in request.query_params:
        raise ApiError(400, "the api-version query parameter is required", param="api-version")
    if body.model is None:
        body.model = deployment
    elif body.model != deployment:
        raise ApiError(400, "the body's model differs from the deployment in the URL")


def _message(raw: dict[str, Any]) -> dict[str, Any]:
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


def _configs(
    body: _Request, max_tokens: int | None, response_format: dict[str, Any] | None
) -> list[GenerationConfig]:
    """One GenerationConfig per choice (``n``); sampled choices get consecutive seeds."""
    grammar = _grammar(response_format)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        base = GenerationConfig(
            max_tokens=max_tokens or 256,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(stop),
            seed=body.seed,
            grammar=grammar,
        )
    except UsageError as exc:
        raise ApiError(400, str(exc)) from exc
    if body.n == 1:
        return [base]
    seed = base.seed if base.seed is not None else secrets.randbelow(2**31)
    return [base.replace(seed=seed + i) for i in range(body.n)]


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


def _usage(results: list[Completion]) -> dict[str, int]:
    prompt = results[0].usage.prompt_tokens if results else 0
    completion = sum(r.usage.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    try:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ApiError as exc:
        yield f"data: {json.dumps(exc.body)}\n\n"
    yield "data: [DONE]\n\n"
