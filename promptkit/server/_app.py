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

from ..backends.base import (
    Backend,
    Completion,
    GenerationConfig,
    Usage,
    check_messages,
    cut_at_stop,
    messages_to_text,
)
from ..errors import InputValidationError, UnsupportedCapabilityError
from ._errors import ApiError, api_error
from ._guard import Guard, ServerLimits
from ._shapes import (
    ChatRequest,
    CompletionRequest,
    EventStream,
    chat_logprobs,
    completion_logprobs,
    configs,
    message,
    usage,
)
from ._worker import Stream, Worker

if TYPE_CHECKING:
    from ..backends.local import LocalScoring


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
    name = model_name or backend.name
    limits = limits or ServerLimits()
    worker = Worker(backend)

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

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise ApiError(
                404,
                f"the model {requested!r} does not exist here; this server serves {name!r}",
                param="model",
                code="model_not_found",
            )

    def local(ability: str) -> LocalScoring:
        """The backend as a local model (its tokenizer and scores), which ``ability`` needs."""
        try:
            from ..backends.local import LocalScoring
        except ImportError:  # no torch: no local model either
            raise UnsupportedCapabilityError(backend.name, ability) from None
        if not isinstance(backend, LocalScoring):
            raise UnsupportedCapabilityError(backend.name, ability)
        return backend

    async def check_tokens(counted: int, choices: int, max_tokens: int) -> None:
        total = counted + choices * max_tokens
        limits.check("max_request_tokens", total, "tokens (prompt tokens + n x max_tokens)")

    def stream_end(job: Stream, prompt_text: str) -> tuple[str, dict[str, int]]:
        """A finished stream's finish reason and usage: the backend's own when its stream
        returned a Completion, else from its token counts of the texts."""
        if job.completion is not None:
            return job.completion.finish_reason, job.completion.usage.as_dict()
        produced = backend.count_tokens(job.text) if job.text else 0
        prompt = backend.count_tokens(prompt_text)
        finish = "length" if produced >= job.config.max_tokens else "stop"
        counts = {"prompt_tokens": prompt, "completion_tokens": produced}
        return finish, counts | {"total_tokens": prompt + produced}

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
            messages = check_messages([message(m) for m in body.messages])
        except InputValidationError as exc:
            raise ApiError(400, str(exc), param="messages") from exc
        if body.stream and body.n > 1:
            raise ApiError(400, "streaming takes n=1; send n separate requests", param="n")
        if body.stream and body.logprobs:
            raise ApiError(400, "streaming does not return logprobs", param="logprobs")
        limits.check("max_choices", body.n, "completions (n)", "n")
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        text = messages_to_text(messages)
        counted = await asyncio.to_thread(backend.count_tokens, text)
        await check_tokens(counted, body.n, max_tokens)
        settings = configs(body, max_tokens, body.response_format)
        created, ident = int(time.time()), f"chatcmpl-{secrets.token_hex(12)}"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            head = {"id": ident, "object": "chat.completion.chunk", "created": created}
            return head | {"model": name, "choices": choices} | extra

        async def chunks(job: Stream) -> AsyncIterator[dict[str, Any]]:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            async for piece in job.pieces():
                yield chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            finish, counts = await asyncio.to_thread(stream_end, job, text)
            yield chunk([{"index": 0, "delta": {}, "finish_reason": finish}])
            if body.include_usage:
                yield chunk([], usage=counts)

        if body.stream:
            job = worker.open_stream(messages, settings[0])
            return EventStream(chunks(job), job)
        results: list[Completion] = []
        choices = []
        for i, config in enumerate(settings):
            if body.logprobs:
                completion, scores = await worker.call(
                    chat_scores, text, config, body.top_logprobs or 0
                )
            else:
                completion, scores = await worker.generate(messages, config), None
            results.append(completion)
            choice = {
                "index": i,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
            if body.logprobs:
                choice["logprobs"] = scores
            choices.append(choice)
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": choices,
                "usage": usage([results]),
            }
        )

    def by_tokens(
        model: LocalScoring, prompt_ids: list[int], config: GenerationConfig
    ) -> tuple[Completion, list[int]]:
        """Generate from token ids: the completion, and every token generated (end-of-text
        included when the model ended with it), for log-probabilities of what it really chose."""
        new, reason = model.generate_tokens(prompt_ids, config)
        ended = reason == "stop" and new[-1:] == [model.tokenizer.eot_id]
        kept = new[:-1] if ended else new
        text, _ = cut_at_stop(model.tokenizer.decode(kept), config.stops)
        spent = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(kept))
        return Completion(text=text, usage=spent, finish_reason=reason), new

    def chat_scores(
        prompt_text: str, config: GenerationConfig, top: int
    ) -> tuple[Completion, dict[str, Any]]:
        model = local("log-probabilities")
        prompt_ids = model.tokenizer.encode(prompt_text)
        completion, new = by_tokens(model, prompt_ids, config)
        return completion, chat_logprobs(
            model, prompt_ids, new[: completion.usage.completion_tokens], top
        )

    def as_text(prompt: str | list[int]) -> tuple[str, list[int] | None]:
        """A prompt as text for generation, and its token ids when it was given as ids."""
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, "prompt is empty", param="prompt")
            return prompt, None
        if not prompt:
            raise ApiError(400, "a token-id prompt is empty", param="prompt")
        model = local("token-id prompts")
        bad = next((t for t in prompt if not 0 <= t < model.vocab_size), None)
        if bad is not None:
            raise ApiError(
                400,
                f"token id {bad} is outside the vocabulary (0..{model.vocab_size - 1})",
                param="prompt",
            )
        return model.tokenizer.decode(prompt), list(prompt)

    async def completions(body: CompletionRequest) -> Any:
        check_model(body.model)
        given = body.prompts
        if not given:
            raise ApiError(400, "prompt must not be an empty list", param="prompt")
        limits.check("max_prompts", len(given), "prompts", "prompt")
        limits.check("max_choices", len(given) * body.n, "completions (prompts x n)", "n")
        try:
            prompts = [as_text(p) for p in given]
        except UnsupportedCapabilityError as exc:
            raise api_error(exc) from exc
        max_tokens = body.max_tokens if body.max_tokens is not None else 16

        def count() -> int:
            return sum(len(ids) if ids else backend.count_tokens(t) for t, ids in prompts)

        await check_tokens(await asyncio.to_thread(count), len(prompts) * body.n, max_tokens)
        created, ident = int(time.time()), f"cmpl-{secrets.token_hex(12)}"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            head = {"id": ident, "object": "text_completion", "created": created}
            return head | {"model": name, "choices": choices} | extra

        async def chunks(job: Stream) -> AsyncIterator[dict[str, Any]]:
            async for piece in job.pieces():
                yield chunk([{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}])
            finish, counts = await asyncio.to_thread(stream_end, job, prompts[0][0])
            yield chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}])
            if body.include_usage:
                yield chunk([], usage=counts)

        if body.stream:
            if len(prompts) > 1 or body.n > 1 or body.echo or body.logprobs is not None:
                raise ApiError(400, "streaming takes one prompt, n=1, and no echo/logprobs")
            if max_tokens == 0:
                raise ApiError(400, "streaming needs max_tokens >= 1", param="max_tokens")
            job = worker.open_stream(prompts[0][0], configs(body, max_tokens)[0])
            return EventStream(chunks(job), job)
        choices: list[dict[str, Any]] = []
        results: list[list[Completion]] = []
        for text, ids in prompts:
            settings = configs(body, max_tokens or 1)
            generated = []
            for config in settings:
                if body.max_tokens == 0:
                    completion = Completion(text="", finish_reason="length")
                    logprobs = None
                    if body.logprobs is not None:
                        logprobs = await worker.call(prompt_scores, text, ids, body)
                elif ids is not None or body.logprobs is not None:
                    completion, logprobs = await worker.call(
                        completion_scores, text, ids, config, body
                    )
                else:
                    completion, logprobs = await worker.generate(text, config), None
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
        return JSONResponse(
            {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": choices,
                "usage": usage(results),
            }
        )

    def completion_scores(
        text: str, ids: list[int] | None, config: GenerationConfig, body: CompletionRequest
    ) -> tuple[Completion, dict[str, Any] | None]:
        """Generate from the prompt's tokens; the completion and, when asked, its logprobs."""
        model = local("log-probabilities" if ids is None else "token-id prompts")
        prompt_ids = ids if ids is not None else model.tokenizer.encode(text)
        completion, new = by_tokens(model, prompt_ids, config)
        if body.logprobs is None:
            return completion, None
        return completion, completion_logprobs(model, prompt_ids, new, body.echo, body.logprobs)

    def prompt_scores(text: str, ids: list[int] | None, body: CompletionRequest) -> dict[str, Any]:
        """The logprobs when nothing is generated (``max_tokens: 0``): the prompt's with
        ``echo``, else none."""
        model = local("log-probabilities")
        prompt_ids = ids if ids is not None else model.tokenizer.encode(text)
        return completion_logprobs(model, prompt_ids, [], body.echo, body.logprobs or 0)

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
