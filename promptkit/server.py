"""``promptkit serve``: any promptkit backend behind an OpenAI-compatible HTTP API.

Endpoints (FastAPI; the OpenAPI description is at ``/openapi.json``, docs at ``/docs``):

- ``GET /v1/models``
- ``POST /v1/chat/completions`` and ``POST /v1/completions``: non-streaming and streaming
  (server-sent events), ``n``, ``stop``, ``max_tokens`` (or ``max_completion_tokens``),
  ``temperature``, ``top_p``, ``seed``; ``logprobs`` / ``echo`` for completions;
  ``response_format`` ``json_schema`` (and ``json_object``) enforced by constrained decoding on
  local backends;
- the Azure routes ``/openai/deployments/{deployment}/chat/completions?api-version=...`` and
  ``.../completions`` (a deployment name may contain ``/``).

Errors use OpenAI's JSON shape (``{"error": {"message", "type", "param", "code"}}``) with the
matching status: 400 bad request (and context length, and a request over one of the
:class:`ServerLimits`), 401 missing or wrong key, 404 unknown model, 413 body too large. With an
API key set (``--api-key`` or ``PROMPTKIT_API_KEY``) every request needs it (``Authorization:
Bearer KEY`` or Azure's ``api-key: KEY``), the OpenAPI description and docs included. One worker
thread owns the model: requests reach it one batch at a time, so concurrent clients never share
its state; a streaming client that disconnects stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue as queue_module
import secrets
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Union

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from .backends.base import (
    Backend,
    Completion,
    GenerationConfig,
    check_messages,
    messages_to_text,
)
from .constraints import Grammar
from .errors import (
    ConfigurationError,
    ConstraintError,
    ContextWindowError,
    InputValidationError,
    PromptkitError,
    UnsupportedCapabilityError,
    UsageError,
)

__all__ = ["ServerLimits", "create_app", "serve"]

SEED_RANGE = 2**32  # seeds reach the backend modulo this (numpy's and transformers' range)


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

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, body: Any) -> Any:
        """Refuse strings that are not valid Unicode (a lone surrogate such as ``\\ud800``)."""
        _check_unicode(body)
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
        return self


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


class ApiError(HTTPException):
    """An error answered in OpenAI's shape (an HTTPException, so FastAPI's body parsing lets
    it through)."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", **extra: Any
    ):
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        self.body["error"].update(extra)
        super().__init__(status, message)

    def __str__(self) -> str:
        return str(self.body["error"]["message"])


def create_app(
    backend: Backend,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
) -> Any:
    """The FastAPI application serving ``backend`` as ``model_name`` (default: its name), with
    the request ``limits`` (default: :class:`ServerLimits`'s)."""
    name = model_name or backend.name
    limits = limits or ServerLimits()
    worker = _Worker(backend)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(
        title="promptkit serve",
        description=f"An OpenAI-compatible API over the promptkit backend {backend.name!r}.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Any:
        if not isinstance(exc, ApiError):
            exc = ApiError(exc.status_code, str(exc.detail))
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> Any:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        error = ApiError(400, f"invalid request: {problems}")
        return JSONResponse(error.body, status_code=error.status)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> Any:
        error = ApiError(500, f"internal error: {type(exc).__name__}", "server_error")
        return JSONResponse(error.body, status_code=error.status)

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise ApiError(
                404,
                f"the model {requested!r} does not exist here; this server serves {name!r}",
                param="model",
                code="model_not_found",
            )

    async def generate(prompt: Any, config: GenerationConfig) -> Completion:
        """Through the worker, which batches concurrent requests with the same settings."""
        try:
            completion: Completion = await asyncio.wrap_future(worker.submit(prompt, config))
        except PromptkitError as exc:
            raise _api_error(exc) from exc
        return completion

    async def check_tokens(texts: list[str], choices: int, max_tokens: int) -> None:
        counted = await asyncio.to_thread(lambda: sum(backend.count_tokens(t) for t in texts))
        total = counted + choices * max_tokens
        limits.check("max_request_tokens", total, "tokens (prompt tokens + n x max_tokens)")

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
        if body.stream and body.n > 1:
            raise ApiError(400, "streaming takes n=1; send n separate requests", param="n")
        limits.check("max_choices", body.n, "completions (n)", "n")
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        text = "".join(m["content"] for m in messages)
        await check_tokens([text], body.n, max_tokens)
        configs = _configs(body, max_tokens, body.response_format)
        created, ident = int(time.time()), f"chatcmpl-{secrets.token_hex(12)}"
        if body.stream:
            job = worker.open_stream(messages, configs[0])
            return _EventStream(_chat_chunks(job, ident, created), job)
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
                "usage": _usage([results]),
            }
        )

    async def _chat_chunks(job: _Stream, ident: str, created: int) -> AsyncIterator[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        yield chunk({"role": "assistant", "content": ""}, None)
        async for piece in job.pieces():
            yield chunk({"content": piece}, None)
        yield chunk({}, "stop")

    async def completions(body: CompletionRequest) -> Any:
        check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise ApiError(400, "prompt must be a string or a list of strings", param="prompt")
        if any(not prompt for prompt in prompts):
            raise ApiError(400, "prompt is empty", param="prompt")
        limits.check("max_prompts", len(prompts), "prompts", "prompt")
        limits.check("max_choices", len(prompts) * body.n, "completions (prompts x n)", "n")
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        await check_tokens(prompts, len(prompts) * body.n, max_tokens)
        created, ident = int(time.time()), f"cmpl-{secrets.token_hex(12)}"
        if body.stream:
            if len(prompts) > 1 or body.n > 1 or body.echo or body.logprobs is not None:
                raise ApiError(400, "streaming takes one prompt, n=1, and no echo/logprobs")
            job = worker.open_stream(prompts[0], _configs(body, body.max_tokens, None)[0])
            return _EventStream(_completion_chunks(job, ident, created), job)
        choices: list[dict[str, Any]] = []
        results: list[list[Completion]] = []
        for prompt in prompts:
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
                    logprobs = await worker.call(_logprobs, prompt, completion.text, body.echo)
                choices.append(
                    {
                        "index": len(choices),
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": completion.finish_reason,
                    }
                )
            results.append(generated)
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

    async def _completion_chunks(
        job: _Stream, ident: str, created: int
    ) -> AsyncIterator[dict[str, Any]]:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [choice],
            }

        async for piece in job.pieces():
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

    # ``:path`` lets a deployment name hold ``/`` (``hf:/some/folder``); the chat route comes
    # first, so ``.../chat/completions`` is never read as a deployment ending in ``/chat``
    @app.post("/openai/deployments/{deployment:path}/chat/completions")
    async def azure_chat_completions(deployment: str, request: Request, body: ChatRequest) -> Any:
        _azure(deployment, request, body)
        return await chat(body)

    @app.post("/openai/deployments/{deployment:path}/completions")
    async def azure_completions(deployment: str, request: Request, body: CompletionRequest) -> Any:
        _azure(deployment, request, body)
        return await completions(body)

    return app


def serve(app: Any, *, host: str, port: int, shutdown_timeout: float = 3.0) -> None:
    """Run ``app`` with uvicorn until SIGINT or SIGTERM; open connections (a stream still
    being generated) get ``shutdown_timeout`` seconds to finish before they are cut."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=max(1, round(shutdown_timeout)),
    )
    uvicorn.Server(config).run()


def _api_error(exc: PromptkitError) -> ApiError:
    """The one mapping from promptkit's errors to HTTP answers."""
    if isinstance(exc, ContextWindowError):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, (ConstraintError, UnsupportedCapabilityError, InputValidationError)):
        return ApiError(400, str(exc))
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc))
    return ApiError(500, str(exc), "server_error")


def _check_unicode(body: Any) -> None:
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


class _Stream:
    """One streamed generation: the worker puts pieces, the response iterates them. Closing it
    (the client disconnected, or the response ended) stops the generation at its next piece."""

    def __init__(self, prompt: Any, config: GenerationConfig):
        self.prompt = prompt
        self.config = config
        self.closed = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(self, kind: str, value: Any) -> bool:
        """From the worker: hand over ``("piece", text)``, ``("end", None)`` or ``("error",
        exception)``; False when nobody reads any more."""
        if self.closed.is_set():
            return False
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone: the server is shutting down
            self.closed.set()
            return False
        return True

    def close(self) -> None:
        """Stop the generation at its next piece (the reader has gone)."""
        self.closed.set()

    async def pieces(self) -> AsyncIterator[str]:
        """The text as it is generated; raises the generation's error as an ApiError."""
        while True:
            kind, value = await self._items.get()
            if kind == "end":
                return
            if kind == "error":
                if isinstance(value, PromptkitError):
                    raise _api_error(value) from value
                raise value
            yield value


class _Worker:
    """The one thread that uses the model. It takes the waiting jobs and runs generations with
    the same settings as one batch (``generate_batch``) when the backend has it, so each request
    gets what it would get alone; streams and scoring calls run in turn between batches."""

    def __init__(self, backend: Backend, max_batch: int = 32):
        self.backend = backend
        self.max_batch = max_batch
        self._queue: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="promptkit-worker", daemon=True)
        self._thread.start()

    def submit(self, prompt: Any, config: GenerationConfig) -> Future[Any]:
        """Queue one generation; its future holds the Completion (or the error)."""
        future: Future[Any] = Future()
        self._queue.put(("generate", (prompt, config), future))
        return future

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on the worker (it uses the model) and return its result."""
        future: Future[Any] = Future()
        self._queue.put(("call", (function, args), future))
        try:
            return await asyncio.wrap_future(future)
        except PromptkitError as exc:
            raise _api_error(exc) from exc

    def open_stream(self, prompt: Any, config: GenerationConfig) -> _Stream:
        """Queue one streamed generation; closing the stream stops it."""
        job = _Stream(prompt, config)
        self._queue.put(("stream", job, None))
        return job

    def close(self) -> None:
        """Stop the thread once the jobs queued before this call are done."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            waiting = [first]
            while len(waiting) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue_module.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this round
                    break
                waiting.append(job)
            groups: dict[GenerationConfig, list[tuple[Any, Future[Any]]]] = {}
            for kind, payload, future in waiting:
                if kind == "generate" and future.set_running_or_notify_cancel():
                    prompt, config = payload
                    groups.setdefault(config, []).append((prompt, future))
            for config, group in groups.items():
                self._generate(config, group)
            for kind, payload, future in waiting:
                if kind == "stream":
                    self._stream(payload)
                elif kind == "call" and future.set_running_or_notify_cancel():
                    function, args = payload
                    try:
                        future.set_result(function(*args))
                    except Exception as exc:
                        future.set_exception(exc)

    def _generate(self, config: GenerationConfig, group: list[tuple[Any, Future[Any]]]) -> None:
        batch = getattr(self.backend, "generate_batch", None)
        texts = [self._as_text(prompt) for prompt, _ in group]
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

    def _stream(self, job: _Stream) -> None:
        """Generate ``job``'s pieces until the end, an error, or the reader going away."""
        if job.closed.is_set():
            return
        try:
            pieces = self.backend.stream(job.prompt, job.config)
            try:
                for piece in pieces:
                    if not job.put("piece", piece):
                        return
            finally:
                if isinstance(pieces, Iterator) and hasattr(pieces, "close"):
                    pieces.close()
        except Exception as exc:
            job.put("error", exc)
            return
        job.put("end", None)

    def _as_text(self, prompt: Any) -> str | None:
        """The prompt as the text a completion-only backend sees (None: send it as is)."""
        if isinstance(prompt, str):
            return prompt
        if self.backend.capabilities.chat:
            return None
        return messages_to_text(prompt)


class _EventStream(StreamingResponse):
    """Server-sent events of ``job``'s chunks. However the response ends (a client that
    disconnects, a server shutting down) the job is closed, so its generation stops."""

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], job: _Stream):
        self._events = _sse(chunks)
        self._job = job
        super().__init__(self._events, media_type="text/event-stream")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.close()
            await self._events.aclose()


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
    """One GenerationConfig per choice (``n``); sampled choices get consecutive seeds. A seed
    (OpenAI's: any 64-bit integer) reaches the backend modulo ``SEED_RANGE``."""
    grammar = _grammar(response_format)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    seed = None if body.seed is None else body.seed % SEED_RANGE
    try:
        base = GenerationConfig(
            max_tokens=max_tokens or 256,
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


def _usage(per_prompt: list[list[Completion]]) -> dict[str, int]:
    """Token usage of a request: each prompt counted once, every choice's completion."""
    prompt = sum(choices[0].usage.prompt_tokens for choices in per_prompt if choices)
    completion = sum(c.usage.completion_tokens for choices in per_prompt for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[str, None]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ApiError as exc:
        yield f"data: {json.dumps(exc.body)}\n\n"
    yield "data: [DONE]\n\n"
