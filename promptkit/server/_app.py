"""The FastAPI application: routes, request checks, and the answers in OpenAI's shape."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..backends._base import (
    Backend,
    Completion,
    GenerationConfig,
    check_messages,
    messages_to_text,
)
from ..backends._tool_calls import tools_system_text
from ..errors import InputValidationError, UnsupportedCapabilityError
from ._errors import ApiError, api_error
from ._guard import Guard, ServerLimits
from ._shapes import (
    ChatRequest,
    CompletionRequest,
    EventStream,
    configs,
    message,
    tool_calls,
    usage,
)
from ._tokens import chat_scores, completion_scores, local_model, prompt_scores
from ._worker import Stream, Worker

if TYPE_CHECKING:
    from ..backends._local import LocalScoring


def create_app(
    backend: Backend,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
) -> Any:
    """The FastAPI application serving ``backend`` as ``model_name`` (default: its name), with
    the request ``limits`` (default: :class:`ServerLimits`'s) and, when ``api_key`` is given,
    that key required on every path."""
    limits = limits or ServerLimits()
    service = _Service(backend, model_name or backend.name, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.worker.close()

    app = FastAPI(
        title="promptkit serve",
        description=f"An OpenAI-compatible API over the promptkit backend {backend.name!r}.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(HTTPException)
    @app.exception_handler(Exception)
    async def any_error(_: Request, exc: Exception) -> Any:
        error = api_error(exc)
        return JSONResponse(error.body, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> Any:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        error = ApiError(400, f"invalid request: {problems}")
        return JSONResponse(error.body, status_code=error.status)

    @app.get("/v1/models")
    async def models() -> Any:
        entry = {"id": service.name, "object": "model", "created": 0, "owned_by": "promptkit"}
        return JSONResponse({"object": "list", "data": [entry]})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        return await service.chat(body)

    @app.post("/v1/completions")
    async def text_completions(body: CompletionRequest) -> Any:
        return await service.completions(body)

    # ``:path`` lets a deployment name hold ``/`` (``hf:/some/folder``); the chat route comes
    # first, so ``.../chat/completions`` is never read as a deployment ending in ``/chat``
    @app.post("/openai/deployments/{deployment:path}/chat/completions")
    async def azure_chat_completions(deployment: str, request: Request, body: ChatRequest) -> Any:
        _azure(deployment, request, body)
        return await service.chat(body)

    @app.post("/openai/deployments/{deployment:path}/completions")
    async def azure_completions(deployment: str, request: Request, body: CompletionRequest) -> Any:
        _azure(deployment, request, body)
        return await service.completions(body)

    return app


class _Service:
    """What the routes do for one backend served as ``name``: check a request against the
    model name and the limits, run it through the worker, answer in OpenAI's shape."""

    def __init__(self, backend: Backend, name: str, limits: ServerLimits):
        self.backend = backend
        self.name = name
        self.limits = limits
        self.worker = Worker(backend)

    async def chat(self, body: ChatRequest) -> Any:
        """``POST /v1/chat/completions``."""
        self._check_model(body.model)
        try:
            messages = check_messages([message(m) for m in body.messages])
        except InputValidationError as exc:
            raise ApiError(400, str(exc), param="messages") from exc
        if body.stream:
            self._check_streaming()
        if body.stream and body.n > 1:
            raise ApiError(400, "streaming takes n=1; send n separate requests", param="n")
        if body.stream and body.logprobs:
            raise ApiError(400, "streaming does not return logprobs", param="logprobs")
        self.limits.check("max_choices", body.n, "completions (n)", "n")
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        tools = body.tool_settings()
        settings = configs(body, max_tokens, body.response_format, tools)
        text = messages_to_text(messages)
        if tools[0]:  # counted as a model without a tools slot sees them
            text = f"{tools_system_text(*tools)}\n\n{text}"
        counted = await asyncio.to_thread(self.backend.count_tokens, text)
        self._check_tokens(counted, body.n, max_tokens)
        created, ident = int(time.time()), f"chatcmpl-{secrets.token_hex(12)}"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            head = {"id": ident, "object": "chat.completion.chunk", "created": created}
            return head | {"model": self.name, "choices": choices} | extra

        async def chunks(job: Stream) -> AsyncIterator[dict[str, Any]]:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            async for piece in job.pieces():
                yield chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            finish, counts = await asyncio.to_thread(self._stream_end, job, text)
            yield chunk([{"index": 0, "delta": {}, "finish_reason": finish}])
            if body.include_usage:
                yield chunk([], usage=counts)

        if body.stream:
            job = self.worker.open_stream(messages, settings[0])
            return EventStream(chunks(job), job)
        results: list[Completion] = []
        choices = []
        for i, config in enumerate(settings):
            if body.logprobs:
                model = self._local("log-probabilities")
                top = body.top_logprobs or 0
                completion, scores = await self.worker.call(chat_scores, model, text, config, top)
            else:
                completion = await self.worker.generate(messages, config)
            results.append(completion)
            choice = {
                "index": i,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
            if completion.tool_calls:  # the calls stand instead of an answer, as in the API
                choice["message"] = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": tool_calls(completion),
                }
                choice["finish_reason"] = "tool_calls"
            if body.logprobs:
                choice["logprobs"] = scores
            choices.append(choice)
        head = {"id": ident, "object": "chat.completion", "created": created, "model": self.name}
        return JSONResponse(head | {"choices": choices, "usage": usage([results])})

    async def completions(self, body: CompletionRequest) -> Any:
        """``POST /v1/completions``."""
        self._check_model(body.model)
        given = body.prompts
        if not given:
            raise ApiError(400, "prompt must not be an empty list", param="prompt")
        self.limits.check("max_prompts", len(given), "prompts", "prompt")
        self.limits.check("max_choices", len(given) * body.n, "completions (prompts x n)", "n")
        prompts = [self._as_text(p) for p in given]
        max_tokens = body.max_tokens if body.max_tokens is not None else 16

        def count() -> int:
            return sum(len(ids) if ids else self.backend.count_tokens(t) for t, ids in prompts)

        self._check_tokens(await asyncio.to_thread(count), len(prompts) * body.n, max_tokens)
        created, ident = int(time.time()), f"cmpl-{secrets.token_hex(12)}"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            head = {"id": ident, "object": "text_completion", "created": created}
            return head | {"model": self.name, "choices": choices} | extra

        async def chunks(job: Stream) -> AsyncIterator[dict[str, Any]]:
            async for piece in job.pieces():
                yield chunk([{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}])
            finish, counts = await asyncio.to_thread(self._stream_end, job, prompts[0][0])
            yield chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}])
            if body.include_usage:
                yield chunk([], usage=counts)

        if body.stream:
            self._check_streaming()
            if len(prompts) > 1 or body.n > 1 or body.echo or body.logprobs is not None:
                raise ApiError(400, "streaming takes one prompt, n=1, and no echo/logprobs")
            if max_tokens == 0:
                raise ApiError(400, "streaming needs max_tokens >= 1", param="max_tokens")
            job = self.worker.open_stream(prompts[0][0], configs(body, max_tokens)[0])
            return EventStream(chunks(job), job)
        choices: list[dict[str, Any]] = []
        results: list[list[Completion]] = []
        for text, ids in prompts:
            generated = []
            for config in configs(body, max_tokens or 1):
                completion, logprobs = await self._complete(text, ids, config, body)
                generated.append(completion)
                choices.append(
                    {
                        "index": len(choices),
                        "text": (text if body.echo else "") + completion.text,
                        "logprobs": logprobs,
                        "finish_reason": completion.finish_reason,
                    }
                )
            results.append(generated)
        head = {"id": ident, "object": "text_completion", "created": created, "model": self.name}
        return JSONResponse(head | {"choices": choices, "usage": usage(results)})

    async def _complete(
        self, text: str, ids: list[int] | None, config: GenerationConfig, body: CompletionRequest
    ) -> tuple[Completion, dict[str, Any] | None]:
        """One choice of a completion request, and its logprobs when asked for. Token-id
        prompts and logprobs generate token by token, so logprobs describe the tokens the
        model chose; plain text prompts are batched with others."""
        if ids is None and body.logprobs is None:
            if body.max_tokens == 0:
                return Completion(text="", finish_reason="length"), None
            return await self.worker.generate(text, config), None
        model = self._local("log-probabilities" if ids is None else "token-id prompts")
        prompt_ids = ids if ids is not None else model.tokenizer.encode(text)
        top = body.logprobs
        if body.max_tokens == 0:
            empty = Completion(text="", finish_reason="length")
            if top is None:
                return empty, None
            scores = await self.worker.call(prompt_scores, model, prompt_ids, body.echo, top)
            return empty, scores
        return await self.worker.call(completion_scores, model, prompt_ids, config, body.echo, top)

    def _check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            raise ApiError(
                404,
                f"the model {requested!r} does not exist here; this server serves {self.name!r}",
                param="model",
                code="model_not_found",
            )

    def _check_tokens(self, counted: int, choices: int, max_tokens: int) -> None:
        total = counted + choices * max_tokens
        self.limits.check("max_request_tokens", total, "tokens (prompt tokens + n x max_tokens)")

    def _check_streaming(self) -> None:
        if not self.backend.capabilities.streaming:
            raise api_error(UnsupportedCapabilityError(self.backend.name, "streaming"))

    def _local(self, ability: str) -> LocalScoring:
        """The backend as a local model (its tokenizer and scores), which ``ability`` needs;
        a 400 naming the ability otherwise."""
        model = local_model(self.backend)
        if model is None:
            raise api_error(UnsupportedCapabilityError(self.backend.name, ability))
        return model

    def _as_text(self, prompt: str | list[int]) -> tuple[str, list[int] | None]:
        """A prompt as text for generation, and its token ids when it was given as ids."""
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, "prompt is empty", param="prompt")
            return prompt, None
        if not prompt:
            raise ApiError(400, "a token-id prompt is empty", param="prompt")
        model = self._local("token-id prompts")
        bad = next((t for t in prompt if not 0 <= t < model.vocab_size), None)
        if bad is not None:
            raise ApiError(
                400,
                f"token id {bad} is outside the vocabulary (0..{model.vocab_size - 1})",
                param="prompt",
            )
        return model.tokenizer.decode(prompt), list(prompt)

    def _stream_end(self, job: Stream, prompt_text: str) -> tuple[str, dict[str, int]]:
        """A finished stream's finish reason and usage: the backend's own when its stream
        returned a Completion, else from its token counts of the texts."""
        if job.completion is not None:
            return job.completion.finish_reason, job.completion.usage.as_dict()
        produced = self.backend.count_tokens(job.text) if job.text else 0
        prompt = self.backend.count_tokens(prompt_text)
        finish = "length" if produced >= job.config.max_tokens else "stop"
        counts = {"prompt_tokens": prompt, "completion_tokens": produced}
        return finish, counts | {"total_tokens": prompt + produced}


def serve(app: Any, *, host: str, port: int, shutdown_timeout: int = 3) -> None:
    """Run ``app`` with uvicorn until SIGINT or SIGTERM; open connections (a stream still
    being generated) get ``shutdown_timeout`` seconds to finish before they are cut."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=shutdown_timeout
    )
    uvicorn.Server(config).run()


def _azure(deployment: str, request: Request, body: ChatRequest | CompletionRequest) -> None:
    """Azure's routes: the deployment in the URL names the model; api-version is required."""
    if "api-version" not in request.query_params:
        raise ApiError(400, "the api-version query parameter is required", param="api-version")
    if body.model is None:
        body.model = deployment
    elif body.model != deployment:
        raise ApiError(400, "the body's model differs from the deployment in the URL")
