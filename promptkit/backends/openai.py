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
so are errors (:func:`map_error`): each becomes a promptkit error with the SDK's error as
``__cause__`` and a ``retryable`` flag. Retries (429, 5xx, connection errors) are the SDK's own:
exponential backoff with jitter, honouring ``Retry-After``; ``max_retries`` sets how many.

The API key is never kept on the backend, and is scrubbed from every error message (the SDK's
included) before it is raised.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from ..errors import BackendError, ConfigurationError, ContextWindowError
from ..grammar import Grammar
from .base import (
    Backend,
    Capabilities,
    Completion,
    GenerationConfig,
    Message,
    PromptInput,
    Usage,
)

__all__ = ["OpenAIBackend", "azure_from_spec", "from_spec", "map_error", "request_params"]

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
# Models that take max_completion_tokens and fix temperature/top_p (reasoning models).
_REASONING = re.compile(r"^(o\d|gpt-5)")
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-*.]{4,})")


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
    """``text`` without any of ``secrets`` or anything shaped like an API key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub("sk-***", text)


def map_error(exc: Exception, backend: str, secrets: Sequence[str] = ()) -> Exception:
    """The promptkit error for an ``openai`` SDK error (keys scrubbed, also from the SDK error,
    which stays reachable as ``__cause__``)."""
    import openai

    message = scrub(str(getattr(exc, "message", None) or exc), secrets)
    exc.args = (message,)
    if hasattr(exc, "message"):
        exc.message = message
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
        status = exc.status_code
        code = _error_code(exc)
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
    return BackendError(message, backend=backend, kind="other")


def _error_code(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code"):
            return str(inner["code"])
    code = getattr(exc, "code", None)
    return str(code) if code else None


class OpenAIBackend(Backend):
    """A model behind the OpenAI API (or an OpenAI-compatible server, or Azure OpenAI)."""

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
    ):
        self.model = model
        self.name = name or f"openai:{model}"
        self._client = client
        self._async_client = async_client
        self._secrets = tuple(s for s in secrets if s)
        self.context_window = context_window or CONTEXT_WINDOWS.get(model)
        self.capabilities = Capabilities(
            completion=completions,
            chat=True,
            streaming=True,
            loglikelihood=completions,
            json_schema=True,
        )

    # -- calls --------------------------------------------------------------------------------

    def _call(self, function: Callable[..., Any], **kwargs: Any) -> Any:
        import openai

        try:
            return function(**kwargs)
        except openai.OpenAIError as exc:
            raise map_error(exc, self.name, self._secrets) from exc
        except ValueError as exc:  # a body that is not JSON
            raise self._bad_response(exc) from exc

    async def _acall(self, function: Callable[..., Any], **kwargs: Any) -> Any:
        import openai

        try:
            return await function(**kwargs)
        except openai.OpenAIError as exc:
            raise map_error(exc, self.name, self._secrets) from exc
        except ValueError as exc:
            raise self._bad_response(exc) from exc

    def _bad_response(self, exc: Exception) -> BackendError:
        return BackendError(
            f"the service answered with something that is not a valid API response "
            f"({scrub(str(exc), self._secrets)}); check that the base URL points at an "
            "OpenAI-compatible API",
            backend=self.name,
            kind="bad_response",
        )

    def _chat_kwargs(self, messages: list[Message], config: GenerationConfig) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            **request_params(self.model, config, chat=True),
        }
        if config.grammar is not None:
            kwargs["response_format"] = response_format(config.grammar)
        return kwargs

    def _completion_kwargs(self, text: str, config: GenerationConfig) -> dict[str, Any]:
        if config.grammar is not None:
            raise ConfigurationError(
                f"{self.name}: structured output needs the chat API; use a chat template"
            )
        return {
            "model": self.model,
            "prompt": text,
            **request_params(self.model, config, chat=False),
        }

    def _chat(self, messages: list[Message], config: GenerationConfig) -> Completion:
        response = self._call(
            self._client.chat.completions.create, **self._chat_kwargs(messages, config)
        )
        return self._completion(response, chat=True)

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        response = self._call(
            self._client.completions.create, **self._completion_kwargs(text, config)
        )
        return self._completion(response, chat=False)

    def _completion(self, response: Any, *, chat: bool) -> Completion:
        choice = response.choices[0]
        text = (choice.message.content if chat else choice.text) or ""
        if choice.finish_reason == "content_filter":
            raise BackendError(
                "the answer was withheld by the content filter",
                backend=self.name,
                kind="content_filter",
            )
        usage = response.usage
        return Completion(
            text=text,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            finish_reason="length" if choice.finish_reason == "length" else "stop",
        )

    def _stream_chat(self, messages: list[Message], config: GenerationConfig) -> Iterator[str]:
        stream = self._call(
            self._client.chat.completions.create,
            stream=True,
            **self._chat_kwargs(messages, config),
        )
        yield from self._pieces(stream, chat=True)

    def _stream_complete(self, text: str, config: GenerationConfig) -> Iterator[str]:
        stream = self._call(
            self._client.completions.create, stream=True, **self._completion_kwargs(text, config)
        )
        yield from self._pieces(stream, chat=False)

    def _pieces(self, stream: Any, *, chat: bool) -> Iterator[str]:
        import openai

        try:
            for chunk in stream:
                piece = _chunk_text(chunk, chat)
                if piece:
                    yield piece
        except openai.OpenAIError as exc:
            raise map_error(exc, self.name, self._secrets) from exc

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
            response = await self._acall(
                self._async_client.chat.completions.create, **self._chat_kwargs(payload, config)
            )
        else:
            response = await self._acall(
                self._async_client.completions.create, **self._completion_kwargs(payload, config)
            )
        return self._completion(response, chat=chat)

    async def astream(
        self, prompt: PromptInput, config: GenerationConfig | None = None
    ) -> AsyncIterator[str]:
        """Stream with the async client."""
        import openai

        if self._async_client is None:
            async for piece in super().astream(prompt, config):
                yield piece
            return
        config = config or GenerationConfig()
        chat, payload = self._route_async(prompt, config)
        if chat:
            stream = await self._acall(
                self._async_client.chat.completions.create,
                stream=True,
                **self._chat_kwargs(payload, config),
            )
        else:
            stream = await self._acall(
                self._async_client.completions.create,
                stream=True,
                **self._completion_kwargs(payload, config),
            )
        try:
            async for chunk in stream:
                piece = _chunk_text(chunk, chat)
                if piece:
                    yield piece
        except openai.OpenAIError as exc:
            raise map_error(exc, self.name, self._secrets) from exc

    async def aclose(self) -> None:
        """Close the async client's connections (inside the event loop that used them)."""
        if self._async_client is not None:
            await self._async_client.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    # -- scoring and counting -------------------------------------------------------------------

    def _loglikelihood(self, context: str, continuation: str) -> float:
        """Log-probability of ``continuation`` from the completions endpoint (``echo`` with
        ``logprobs``): the prompt's own tokens are scored, nothing is generated."""
        response = self._call(
            self._client.completions.create,
            model=self.model,
            prompt=context + continuation,
            max_tokens=0,
            echo=True,
            logprobs=0,
        )
        logprobs = response.choices[0].logprobs
        if logprobs is None or logprobs.token_logprobs is None:
            raise BackendError(
                "the server returned no log-probabilities for echo=True", backend=self.name
            )
        total = 0.0
        for offset, value in zip(logprobs.text_offset, logprobs.token_logprobs, strict=True):
            if offset >= len(context):
                if value is None:
                    raise BackendError("a continuation token has no log-probability")
                total += value
        return total

    def count_tokens(self, text: str) -> int:
        """Exact with tiktoken when it is installed and has the model's encoding offline; else
        the base estimate (four characters a token)."""
        try:
            import tiktoken  # type: ignore[import-not-found]

            return len(tiktoken.encoding_for_model(self.model).encode(text))
        except Exception:  # not installed, unknown model, or the encoding cannot be fetched
            return super().count_tokens(text)


def _chunk_text(chunk: Any, chat: bool) -> str:
    """The text a streamed chunk adds (chat: the delta's content; completions: the text)."""
    if not chunk.choices:
        return ""
    choice = chunk.choices[0]
    return str((choice.delta.content if chat else choice.text) or "")


def _option(options: dict[str, Any], key: str, env: str | None = None) -> Any:
    value = options.pop(key, None)
    if value is None and env:
        value = os.environ.get(env) or None
    return value


def from_spec(arg: str, **options: Any) -> OpenAIBackend:
    """``openai:MODEL`` with optional ``api_key``, ``base_url``, ``organization``,
    ``timeout`` (s), ``max_retries``, ``completions`` (bool), ``context_window``."""
    import openai

    if not arg:
        raise ConfigurationError("openai needs a model: openai:gpt-4o-mini")
    api_key = _option(options, "api_key", "OPENAI_API_KEY")
    base_url = _option(options, "base_url", "OPENAI_BASE_URL")
    organization = _option(options, "organization", "OPENAI_ORG_ID")
    common, extra = _common(options)
    if api_key is None:
        if base_url is None:
            raise ConfigurationError(
                "openai: no API key; set OPENAI_API_KEY (or pass api_key=), or point base_url "
                "at an OpenAI-compatible server that needs none"
            )
        api_key = "unused"  # self-hosted servers often need no key; the SDK wants one
    settings = {"api_key": api_key, "base_url": base_url, "organization": organization, **common}
    return OpenAIBackend(
        arg,
        client=openai.OpenAI(**settings),
        async_client=openai.AsyncOpenAI(**settings),
        name=f"openai:{arg}",
        secrets=(api_key,),
        **extra,
    )


def azure_from_spec(arg: str, **options: Any) -> OpenAIBackend:
    """``azure:DEPLOYMENT`` with optional ``endpoint``, ``api_key`` (or
    ``azure_ad_token_provider``), ``api_version``, ``timeout``, ``max_retries``,
    ``completions``, ``context_window``."""
    import openai

    if not arg:
        raise ConfigurationError("azure needs a deployment name: azure:my-gpt4o-deployment")
    endpoint = _option(options, "endpoint", "AZURE_OPENAI_ENDPOINT")
    api_key = _option(options, "api_key", "AZURE_OPENAI_API_KEY")
    provider = options.pop("azure_ad_token_provider", None)
    api_version = _option(options, "api_version", "OPENAI_API_VERSION")
    missing = [
        what
        for what, value in (
            ("AZURE_OPENAI_ENDPOINT (or endpoint=)", endpoint),
            (
                "AZURE_OPENAI_API_KEY (or api_key=, or azure_ad_token_provider=)",
                api_key or provider,
            ),
            ("OPENAI_API_VERSION (or api_version=)", api_version),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(f"azure:{arg} needs " + "; ".join(missing))
    common, extra = _common(options)
    settings: dict[str, Any] = {
        "azure_endpoint": endpoint,
        "api_version": api_version,
        **common,
    }
    if api_key:
        settings["api_key"] = api_key
    else:
        settings["azure_ad_token_provider"] = provider
    return OpenAIBackend(
        arg,
        client=openai.AzureOpenAI(**settings),
        async_client=openai.AsyncAzureOpenAI(**settings),
        name=f"azure:{arg}",
        secrets=(api_key or "",),
        **extra,
    )


def _common(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split options into client settings (timeout, max_retries) and backend settings."""
    client: dict[str, Any] = {}
    backend: dict[str, Any] = {}
    if "timeout" in options:
        client["timeout"] = float(options.pop("timeout"))
    if "max_retries" in options:
        client["max_retries"] = int(options.pop("max_retries"))
    if "completions" in options:
        backend["completions"] = bool(options.pop("completions"))
    if "context_window" in options:
        backend["context_window"] = int(options.pop("context_window"))
    if options:
        raise ConfigurationError(f"unknown option(s): {', '.join(sorted(options))}")
    client.setdefault("timeout", 60.0)
    client.setdefault("max_retries", 3)
    return client, backend
