"""OpenAI and Azure OpenAI through the official ``openai`` package (``openai:MODEL``,
``azure:DEPLOYMENT``).

Configuration comes from arguments or the standard environment: ``OPENAI_API_KEY``,
``OPENAI_BASE_URL``, ``OPENAI_ORG_ID`` for OpenAI (``base_url`` points it at any
OpenAI-compatible server: vLLM, TGI, Ollama, ``promptkit serve``); ``AZURE_OPENAI_ENDPOINT``,
``AZURE_OPENAI_API_KEY`` (or an Azure AD token provider) and ``OPENAI_API_VERSION`` for Azure,
where the deployment name is the model.

Chat templates use chat completions; completion templates use the completions endpoint where
the model offers it (``completions=True``: legacy instruct models and most self-hosted servers),
else they are sent as one user message. Parameters are mapped in one place
(:func:`request_params`: ``max_tokens`` or ``max_completion_tokens``, stop sequences, seed), and
so are errors (:func:`map_error`, applied by one context manager around every SDK call and
stream): each becomes a promptkit error with a ``retryable`` flag, and a 200 answer of the wrong
shape is a ``BackendError`` of kind ``bad_response``. Retries (429, 5xx, connection errors) are
the SDK's own: exponential backoff with jitter, honouring ``Retry-After``; ``max_retries`` sets
how many.

The API key lives in the SDK client, which sends it; the backend keeps no copy. Every error
message is scrubbed of the client's key (and of anything shaped like an ``sk-`` key); the
promptkit error's ``__cause__`` is a scrubbed copy of the SDK's error, which itself is left as
the SDK raised it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from ..errors import BackendError
from ._base import (
    Backend,
    BatchAPI,
    Capabilities,
    Completion,
    GenerationConfig,
    Message,
    PromptInput,
    Usage,
)
from ._openai_mapping import (
    MIN_SECRET_LENGTH,
    api_messages,
    map_error,
    read_tool_calls,
    request_params,
    response_format,
    scrub,
    scrubbed_copy,
    tool_params,
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "OpenAIBackend",
    "map_error",
    "request_params",
    "response_format",
    "scrub",
]

# Context windows of common models, for fitting demonstrations (others: pass context_window=).
CONTEXT_WINDOWS = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-instruct": 4_096,
    "o1": 200_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
}
logger = logging.getLogger(__name__)
SHOWN_RESPONSE_CHARS = 1000  # how much of a malformed response an error message quotes


class OpenAIBackend(Backend):
    """A model behind the OpenAI API (or an OpenAI-compatible server, or Azure OpenAI).

    ``client`` (and ``async_client``) are the SDK's clients, which hold the API key and the
    connection settings; ``secrets`` are further values to scrub from error messages (the
    client's key always is). ``batch_api``: the service has OpenAI's files and batches
    endpoints (``openai:`` specs; not Azure's deployments).
    """

    def __init__(
        self,
        model: str,
        *,
        client: Any,
        async_client: Any = None,
        name: str | None = None,
        completions: bool = False,
        context_window: int | None = None,
        secrets: Sequence[str] = (),
        batch_api: bool = False,
    ):
        self.model = model
        self.name = name or f"openai:{model}"
        self._client = client
        self._async_client = async_client
        self._extra_secrets = tuple(s for s in secrets if s)
        self.context_window = context_window or CONTEXT_WINDOWS.get(model)
        self.capabilities = Capabilities(
            completion=completions,
            chat=True,
            streaming=True,
            loglikelihood=completions,
            json_schema=True,
            concurrent=True,
            batch_api=batch_api,
            tools=True,
        )

    def cache_identity(self) -> dict[str, Any]:
        """Where requests go and as whom: the base URL (for Azure the endpoint, and the
        deployment when the client fixes one), the model or deployment, the API version, the
        organization and project, and which endpoint text prompts use. Never the key."""
        client = self._client
        return {
            **super().cache_identity(),
            "model": self.model,
            "base_url": str(client.base_url),
            "api_version": dict(client.default_query).get("api-version"),
            "organization": getattr(client, "organization", None),
            "project": getattr(client, "project", None),
            "text_endpoint": "completions" if self.capabilities.completion else "chat",
        }

    # -- calls --------------------------------------------------------------------------------

    def _secrets(self) -> tuple[str, ...]:
        """What error messages are scrubbed of: the client's key and the extra secrets."""
        key = getattr(self._client, "api_key", None)
        return (key, *self._extra_secrets) if isinstance(key, str) else self._extra_secrets

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """Around every SDK call and stream: the SDK's errors become promptkit errors (see
        :func:`map_error`), a body that is not JSON a ``bad_response``."""
        import openai

        try:
            yield
        except openai.OpenAIError as exc:
            secrets = self._secrets()
            raise map_error(exc, self.name, secrets) from scrubbed_copy(exc, secrets)
        except ValueError as exc:  # a body that is not JSON
            raise BackendError(
                f"the service answered with something that is not a valid API response "
                f"({scrub(str(exc), self._secrets())}); check that the base URL points at an "
                "OpenAI-compatible API",
                backend=self.name,
                kind="bad_response",
            ) from exc

    @contextlib.contextmanager
    def _reading(self, response: Any, what: str) -> Iterator[None]:
        """Around reading a parsed response: a missing or mistyped field (the SDK builds
        responses without validating them) is a ``bad_response`` quoting what came back."""
        try:
            yield
        except (AttributeError, TypeError, IndexError, KeyError, ValueError) as exc:
            raise BackendError(
                f"the service's {what} does not have the expected shape ({exc}); it was "
                f"{self._quote(response)}; check that the base URL points at an "
                "OpenAI-compatible API",
                backend=self.name,
                kind="bad_response",
            ) from exc

    def _quote(self, response: Any) -> str:
        """The response as JSON for an error message, scrubbed, cut (and saying so) when long."""
        try:
            data = response.to_dict(warnings=False)
        except Exception:  # not an SDK model: show what it is
            data = response
        text = scrub(json.dumps(data, default=repr, ensure_ascii=False), self._secrets())
        if len(text) <= SHOWN_RESPONSE_CHARS:
            return text
        shown = SHOWN_RESPONSE_CHARS
        return f"{text[:shown]}... (the first {shown} of {len(text)} characters)"

    def _chat_kwargs(self, messages: list[Message], config: GenerationConfig) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": api_messages(messages),
            **request_params(self.model, config, chat=True),
            **tool_params(config),
        }
        if config.grammar is not None:
            kwargs["response_format"] = response_format(config.grammar)
        return kwargs

    def _completion_kwargs(self, text: str, config: GenerationConfig) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": text,
            **request_params(self.model, config, chat=False),
        }

    def _chat(self, messages: list[Message], config: GenerationConfig) -> Completion:
        kwargs = self._chat_kwargs(messages, config)
        with self._sdk_errors():
            response = self._client.chat.completions.create(**kwargs)
        return self._completion(response, chat=True)

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        kwargs = self._completion_kwargs(text, config)
        with self._sdk_errors():
            response = self._client.completions.create(**kwargs)
        return self._completion(response, chat=False)

    def _completion(self, response: Any, *, chat: bool) -> Completion:
        """Our Completion of a (chat) completion response; raises BackendError for a filtered
        answer (``content_filter``) or a response of the wrong shape (``bad_response``)."""
        with self._reading(response, "chat completion" if chat else "completion"):
            choices = response.choices
            if not isinstance(choices, list) or not choices:
                raise TypeError(f"it has no choices (choices is {choices!r})")
            choice = choices[0]
            if chat and choice.message is None:
                raise TypeError("its first choice has no message")
            text = choice.message.content if chat else choice.text
            if not isinstance(text, (str, type(None))):
                raise TypeError(f"the answer's text is a {type(text).__name__}, not a string")
            finish = choice.finish_reason
            calls = read_tool_calls(choice.message) if chat else ()
            counts = self._usage(response.usage)
        if finish == "content_filter":
            raise BackendError(
                "the answer was withheld by the content filter",
                backend=self.name,
                kind="content_filter",
            )
        return Completion(
            text=text or "",
            usage=counts,
            finish_reason="length" if finish == "length" else "stop",
            tool_calls=calls,
        )

    def _usage(self, usage: Any) -> Usage:
        """Token counts of a response; a server that leaves them out (or sends something that is
        not a count) gets zeros and a logged warning, not a failed call that loses the answer."""
        if usage is None:
            return Usage()
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if type(prompt) is int and type(completion) is int:
            return Usage(prompt, completion)
        logger.warning("%s: the response's usage holds no token counts (%r)", self.name, usage)
        return Usage()

    def _stream_chat(self, messages: list[Message], config: GenerationConfig) -> Iterator[str]:
        kwargs = self._chat_kwargs(messages, config)
        with self._sdk_errors():
            stream = self._client.chat.completions.create(stream=True, **kwargs)
            for chunk in stream:
                piece = self._chunk_text(chunk, chat=True)
                if piece:
                    yield piece

    def _stream_complete(self, text: str, config: GenerationConfig) -> Iterator[str]:
        kwargs = self._completion_kwargs(text, config)
        with self._sdk_errors():
            stream = self._client.completions.create(stream=True, **kwargs)
            for chunk in stream:
                piece = self._chunk_text(chunk, chat=False)
                if piece:
                    yield piece

    def _chunk_text(self, chunk: Any, chat: bool) -> str:
        """The text a streamed chunk adds (chat: the delta's content; completions: the text);
        raises BackendError (``bad_response``) for a chunk of the wrong shape."""
        with self._reading(chunk, "streamed chunk"):
            if not chunk.choices:
                return ""
            choice = chunk.choices[0]
            text = choice.delta.content if chat else choice.text
            if not isinstance(text, (str, type(None))):
                raise TypeError(f"the chunk's text is a {type(text).__name__}, not a string")
        return text or ""

    # -- async ----------------------------------------------------------------------------------

    def _route_async(self, prompt: PromptInput, config: GenerationConfig) -> tuple[bool, Any]:
        """(chat?, payload) for an async call: :meth:`Backend._route`'s own validation and
        choice of form, with hooks that only say which form was chosen."""
        return self._route(prompt, config, lambda text, _: (False, text), lambda m, _: (True, m))

    async def agenerate(
        self, prompt: PromptInput, config: GenerationConfig | None = None
    ) -> Completion:
        """Generate with the async client (no worker thread)."""
        if self._async_client is None:
            return await super().agenerate(prompt, config)
        config = config or GenerationConfig()
        chat, payload = self._route_async(prompt, config)
        if chat:
            kwargs = self._chat_kwargs(payload, config)
            with self._sdk_errors():
                response = await self._async_client.chat.completions.create(**kwargs)
        else:
            kwargs = self._completion_kwargs(payload, config)
            with self._sdk_errors():
                response = await self._async_client.completions.create(**kwargs)
        return self._completion(response, chat=chat)

    async def astream(
        self, prompt: PromptInput, config: GenerationConfig | None = None
    ) -> AsyncIterator[str]:
        """Stream with the async client."""
        if self._async_client is None:
            async for piece in super().astream(prompt, config):
                yield piece
            return
        config = config or GenerationConfig()
        chat, payload = self._route_async(prompt, config)
        if chat:
            kwargs = self._chat_kwargs(payload, config)
            create = self._async_client.chat.completions.create
        else:
            kwargs = self._completion_kwargs(payload, config)
            create = self._async_client.completions.create
        with self._sdk_errors():
            stream = await create(stream=True, **kwargs)
            async for chunk in stream:
                piece = self._chunk_text(chunk, chat)
                if piece:
                    yield piece

    async def aclose(self) -> None:
        """Close the async client's connections (inside the event loop that used them)."""
        if self._async_client is not None:
            await self._async_client.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    # -- the Batch API ---------------------------------------------------------------------------

    def batch_api(self) -> BatchAPI:
        """This backend's requests through OpenAI's Batch API (see :class:`OpenAIBatch`)."""
        from ._openai_batch import OpenAIBatch

        if not self.capabilities.batch_api:
            return super().batch_api()  # raises: Azure deployments are not served
        return OpenAIBatch(
            self.name, self._client, self._sdk_errors, self._request_body, self._batch_answer
        )

    def _request_body(self, prompt: PromptInput, config: GenerationConfig) -> tuple[str, Any]:
        """The endpoint and the body that :meth:`generate` would send for this request."""
        chat, payload = self._route_async(prompt, config)
        if chat:
            return "/v1/chat/completions", self._chat_kwargs(payload, config)
        return "/v1/completions", self._completion_kwargs(payload, config)

    def _batch_answer(self, endpoint: str, body: Any) -> Completion:
        """Our Completion of a response body from a batch's output file (BackendError as for
        :meth:`generate`'s response)."""
        from openai.types import Completion as TextCompletion
        from openai.types.chat import ChatCompletion

        chat = endpoint.endswith("/chat/completions")
        with self._reading(body, "batch response"):
            if not isinstance(body, dict):
                raise TypeError("the response body is not an object")
            response = (ChatCompletion if chat else TextCompletion).construct(**body)
        return self._completion(response, chat=chat)

    # -- scoring and counting -------------------------------------------------------------------

    def _loglikelihood(self, context: str, continuation: str) -> float:
        """Log-probability of ``continuation`` from the completions endpoint (``echo`` with
        ``logprobs``): the prompt's own tokens are scored, nothing is generated."""
        with self._sdk_errors():
            response = self._client.completions.create(
                model=self.model,
                prompt=context + continuation,
                max_tokens=0,
                echo=True,
                logprobs=0,
            )
        with self._reading(response, "completion with log-probabilities"):
            logprobs = response.choices[0].logprobs
            if logprobs is None or logprobs.token_logprobs is None:
                raise BackendError(
                    "the server returned no log-probabilities for echo=True; it may not "
                    "support echo with logprobs",
                    backend=self.name,
                    kind="bad_response",
                )
            pairs = list(zip(logprobs.text_offset, logprobs.token_logprobs, strict=True))
        total = 0.0
        for offset, value in pairs:
            if offset >= len(context):
                if value is None:
                    raise BackendError(
                        "a continuation token has no log-probability",
                        backend=self.name,
                        kind="bad_response",
                    )
                total += float(value)
        return total

    def count_tokens(self, text: str) -> int:
        """Exact with tiktoken when it is installed and has the model's encoding offline; else
        the base estimate (four characters a token)."""
        try:
            import tiktoken  # type: ignore[import-not-found,unused-ignore]

            return len(tiktoken.encoding_for_model(self.model).encode(text))
        except Exception:  # not installed, unknown model, or the encoding cannot be fetched
            return super().count_tokens(text)
