"""The one interface every backend implements, and the conveniences written once on top of it.

A backend implements a few ``_``-prefixed hooks (``_complete`` for plain text, ``_chat`` for
messages, optionally ``_stream_*``, ``_loglikelihood``, ``_perplexity_stats``,
``_token_logprobs``) and declares what it can do as data in :class:`Capabilities`. The public
methods (``generate``, ``agenerate``, ``stream``, ``loglikelihood``, ``perplexity``,
``perplexity_stats``, ``token_logprobs``) check the capability first, validate the request,
convert chat messages to text (or text to a chat message) when the backend only speaks the other
form, and call the hook.

Every optional ability is declared here, with a default that works on any backend or a
capability flag that says whether it is there, so callers (the cache, scoring, the server, the
command line) never probe a backend with ``getattr``:

=====================  ====================================================================
``generate_batch``     several prompts; a loop over ``generate`` unless ``batching`` is set
``generate_samples``   one prompt sampled under several seeds; a loop unless ``batching``
``score_choices``      every choice after one context; a loop over ``loglikelihood`` unless
                       the backend shares the context's work
``token_logprobs``     each token's log-probability (flag ``token_logprobs``)
``perplexity_stats``   tokens scored and their summed negative log-likelihood (``perplexity``)
``cache_identity``     everything besides the request that decides an answer (the cache key)
``batch_api``          requests in bulk through the provider's batch endpoint (``batch_api``)
``warm_up``            the slow set-up of the first requests done now (nothing by default)
``close``/``aclose``   release connections or memory (nothing to do by default)
=====================  ====================================================================

Tools (``GenerationConfig.tools``): a backend that declares ``tools`` takes them natively (an
API); one with ``token_masks`` gets them emulated here (shown in the chat template's tools slot,
flag ``tool_template``, or the system message; decoding held to a call; the call parsed back:
:mod:`promptkit.backends._tool_calls`); any other raises UnsupportedCapabilityError.

The flag ``tokens`` says a backend is a local model with token-level access (``LocalScoring``:
``generate_tokens`` from token ids, ``token_id_logprobs`` with the top alternatives), which the
server's token-id prompts and top log-probabilities use.

The interface's data (configs, completions, capabilities, scores) is in
:mod:`promptkit.backends._types`, re-exported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

from ..errors import (
    InputValidationError,
    UnsupportedCapabilityError,
)
from . import _tool_calls as _tc
from ._messages import Message, check_messages, messages_to_text, plain_messages
from ._types import (
    BatchAPI,
    Capabilities,
    Completion,
    GenerationConfig,
    PerplexityStats,
    PromptInput,
    TokenLogprob,
    Usage,
    cut_at_stop,
    encode_line,
)

__all__ = [
    "Backend",
    "BatchAPI",
    "Capabilities",
    "Completion",
    "GenerationConfig",
    "Message",
    "PerplexityStats",
    "PromptInput",
    "TokenLogprob",
    "Usage",
    "check_messages",
    "cut_at_stop",
    "encode_line",
    "messages_to_text",
]

R = TypeVar("R")


class Backend:
    """The base class of every backend (see the module docstring for the hooks)."""

    name: str = "backend"
    capabilities: Capabilities = Capabilities()
    context_window: int | None = None  # tokens the model can attend to, when known

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- generation ---------------------------------------------------------------------------

    def generate(self, prompt: PromptInput, config: GenerationConfig | None = None) -> Completion:
        """Generate a completion for a text prompt or a list of chat messages.

        Raises InputValidationError for a malformed prompt, UnsupportedCapabilityError for a
        grammar the backend cannot enforce, and the backend's own errors (BackendError,
        ContextWindowError). With ``config.tools``: UnsupportedCapabilityError naming
        ``tools`` on a backend that can neither call tools natively nor emulate them under
        token masks (:meth:`Capabilities.calls_tools`).
        """
        config = config or GenerationConfig()
        if config.tools and not self.capabilities.tools:
            return self._emulate_tools(prompt, config)
        return self._route(prompt, config, self._complete, self._chat)

    def _emulate_tools(self, prompt: PromptInput, config: GenerationConfig) -> Completion:
        """Tools on a backend with token masks: shown in the chat template's tools slot or the
        system message, decoding held to a call (see :mod:`promptkit.backends._tool_calls`)."""
        if not self.capabilities.calls_tools():
            raise UnsupportedCapabilityError(
                self.name,
                "tools",
                "use a backend that calls tools natively (openai, azure) or one that "
                "constrains decoding to a call (scratch, hf)",
            )
        if config.tool_choice == "none":
            plain = config.replace(tools=(), tool_choice="auto")
            return self._route(prompt, plain, self._complete, self._chat)
        grammar = _tc.emulation_grammar(config.tools, config.tool_choice, config.grammar)
        caps = self.capabilities
        if caps.tool_template and caps.chat and not isinstance(prompt, str):
            sent = config.replace(grammar=grammar)  # the chat template renders config.tools
        else:
            prompt = _tc.with_tools_in_system(prompt, config.tools, config.tool_choice)
            sent = config.replace(grammar=grammar, tools=(), tool_choice="auto")
        completion = self._route(prompt, sent, self._complete, self._chat)
        call = _tc.parse_emulated(completion.text)
        return completion if call is None else dataclasses.replace(completion, tool_calls=(call,))

    def generate_batch(
        self, prompts: Sequence[str], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Generate for several text prompts with one config, in order.

        Backends that declare ``capabilities.batching`` run the prompts together (each gets
        what it would get alone); this default generates one after the other. Raises what
        :meth:`generate` raises, for the first prompt that fails.
        """
        return [self.generate(prompt, config) for prompt in prompts]

    def generate_samples(
        self, prompt: PromptInput, config: GenerationConfig, seeds: Sequence[int]
    ) -> list[Completion]:
        """One sampled completion of ``prompt`` per seed, in order: for each ``s`` what
        ``generate(prompt, config.replace(seed=s))`` gives (pass@k's n samples of a problem).

        Backends that declare ``capabilities.batching`` draw them together; this default
        draws one after the other. Raises what :meth:`generate` raises.
        """
        return [self.generate(prompt, config.replace(seed=seed)) for seed in seeds]

    async def agenerate(
        self, prompt: PromptInput, config: GenerationConfig | None = None
    ) -> Completion:
        """The async twin of :meth:`generate` (a worker thread unless the backend overrides it)."""
        import asyncio

        return await asyncio.to_thread(self.generate, prompt, config)

    async def astream(
        self, prompt: PromptInput, config: GenerationConfig | None = None
    ) -> AsyncIterator[str]:
        """The async twin of :meth:`stream` (a worker thread unless the backend overrides it)."""
        import asyncio

        pieces = self.stream(prompt, config)
        done = object()
        while True:
            piece = await asyncio.to_thread(next, pieces, done)
            if piece is done:
                return
            yield piece  # type: ignore[misc]

    def stream(self, prompt: PromptInput, config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield the completion's text in pieces as it is produced.

        Raises UnsupportedCapabilityError unless the backend declares ``streaming``, and for
        a request with tools (a stream of text cannot carry tool calls: use :meth:`generate`).
        """
        self.require("streaming")
        config = config or GenerationConfig()
        if config.tools:
            raise UnsupportedCapabilityError(
                self.name, "streaming tool calls", "call generate() for a request with tools"
            )
        return self._route(prompt, config, self._stream_complete, self._stream_chat)

    def _route(
        self,
        prompt: PromptInput,
        config: GenerationConfig,
        on_text: Callable[[str, GenerationConfig], R],
        on_chat: Callable[[list[Message], GenerationConfig], R],
    ) -> R:
        """Validate the prompt and send it to the hook for the form the backend speaks.

        Tools go to a native backend's chat hook; tool calls and results in the messages reach
        a backend without a tools slot as plain text (``plain_messages``).
        """
        caps = self.capabilities
        if config.tools and caps.tools:
            if isinstance(prompt, str):
                self._check_text(prompt)
            messages = [Message(role="user", content=prompt)] if isinstance(prompt, str) else prompt
            self._check_grammar(config, chat=True)
            return on_chat(check_messages(messages), config)
        if not isinstance(prompt, str) and not caps.tools and not caps.tool_template:
            prompt = plain_messages(check_messages(prompt))
        if isinstance(prompt, str):
            self._check_text(prompt)
            if self.capabilities.completion:
                self._check_grammar(config, chat=False)
                return on_text(prompt, config)
            self._check_grammar(config, chat=True)
            return on_chat([Message(role="user", content=prompt)], config)
        messages = check_messages(prompt)
        if self.capabilities.chat:
            self._check_grammar(config, chat=True)
            return on_chat(messages, config)
        self._check_grammar(config, chat=False)
        return on_text(messages_to_text(messages), config)

    def _check_grammar(self, config: GenerationConfig, *, chat: bool) -> None:
        """Raise UnsupportedCapabilityError when the backend cannot hold decoding to the
        config's grammar (the rule is :meth:`Capabilities.enforces`)."""
        grammar = config.grammar
        if grammar is not None and not self.capabilities.enforces(grammar, chat=chat):
            hint = (
                "structured output (an object's JSON schema) goes through the chat API"
                if self.capabilities.json_schema
                else "use a backend with token masks (scratch, hf)"
            )
            raise UnsupportedCapabilityError(self.name, "token_masks", hint)

    # -- scoring ------------------------------------------------------------------------------

    def loglikelihood(self, context: str, continuation: str) -> float:
        """Sum of the log-probabilities of ``continuation``'s tokens given ``context``.

        Raises UnsupportedCapabilityError unless the backend declares ``loglikelihood``, and
        InputValidationError for an empty continuation.
        """
        self.require("loglikelihood")
        if not continuation:
            raise InputValidationError("continuation is empty; there is nothing to score")
        return self._loglikelihood(context, continuation)

    def score_choices(self, context: str, choices: Sequence[str]) -> list[tuple[float, int]]:
        """Each choice's summed log-probability as a continuation of ``context``, and its
        length: tokens on backends that count them exactly, characters by default.

        This default scores each choice with :meth:`loglikelihood`; local backends run the
        shared context once. Raises UnsupportedCapabilityError unless the backend declares
        ``loglikelihood``, InputValidationError for no choices or an empty one.
        """
        self.require("loglikelihood")
        check_choices(choices)
        return [(self.loglikelihood(context, choice), len(choice)) for choice in choices]

    def token_logprobs(self, text: str) -> list[TokenLogprob]:
        """Each token of ``text`` with its log-probability given the tokens before it.

        Raises UnsupportedCapabilityError unless the backend declares ``token_logprobs``,
        InputValidationError for an empty text, ContextWindowError for one longer than the
        context window.
        """
        self.require("token_logprobs")
        self._check_text(text)
        return self._token_logprobs(text)

    def perplexity(self, text: str, stride: int | None = None) -> float:
        """Perplexity of ``text`` (sliding window of ``stride`` tokens when it is long);
        infinite when it overflows. Raises what :meth:`perplexity_stats` raises."""
        return self.perplexity_stats(text, stride).perplexity

    def perplexity_stats(self, text: str, stride: int | None = None) -> PerplexityStats:
        """The tokens of ``text`` that were scored and their summed negative log-likelihood.

        Raises UnsupportedCapabilityError unless the backend declares ``perplexity``, and
        InputValidationError for an empty text or a stride that is not positive.
        """
        self.require("perplexity")
        self._check_text(text)
        if stride is not None and (not isinstance(stride, int) or stride <= 0):
            raise InputValidationError(f"stride must be a positive integer, got {stride!r}")
        return self._perplexity_stats(text, stride)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for fitting prompts to ``context_window``.

        This default is an estimate — one token per four characters, rounded up (the usual
        rule of thumb for English with GPT-style BPE tokenizers). Local backends count exactly
        with their own tokenizer.
        """
        return -(-len(text) // 4)

    # -- identity and resources ---------------------------------------------------------------

    def cache_identity(self) -> dict[str, Any]:
        """Everything besides the request that decides this backend's answers, as JSON data:
        the response cache keys on it, so two backends that may answer the same request
        differently must differ here.

        This default is the backend's class and name. A backend whose answers also depend on
        where it sends requests or which weights it runs adds them (never a secret: the
        identity is hashed into cache keys, and a key must not be needed to reuse an answer).
        """
        kind = type(self)
        return {"class": f"{kind.__module__}.{kind.__qualname__}", "name": self.name}

    def batch_api(self) -> BatchAPI:
        """The provider's batch endpoint for this backend's requests. Raises
        UnsupportedCapabilityError unless the backend declares ``batch_api``."""
        raise UnsupportedCapabilityError(
            self.name, "batch_api", "the Batch API is OpenAI's: use an openai:MODEL backend"
        )

    def warm_up(self, announce: Callable[[str], None] | None = None) -> None:
        """Do now the slow set-up that would otherwise hold up the first requests (a scratch
        backend with ``compile=True`` compiles its decoding steps), calling ``announce`` with
        a line saying what before it starts. Nothing to do by default."""

    def close(self) -> None:
        """Release the backend's connections or memory (nothing to do by default)."""

    async def aclose(self) -> None:
        """Release what the async calls hold, inside the event loop that used it (nothing to
        do by default)."""

    def require(self, capability: str) -> None:
        """Raise UnsupportedCapabilityError unless the backend declares ``capability``."""
        if not getattr(self.capabilities, capability, False):
            raise UnsupportedCapabilityError(self.name, capability)

    # -- hooks for subclasses -----------------------------------------------------------------

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        raise UnsupportedCapabilityError(self.name, "text completion")

    def _chat(self, messages: list[Message], config: GenerationConfig) -> Completion:
        raise UnsupportedCapabilityError(self.name, "chat")

    def _stream_complete(self, text: str, config: GenerationConfig) -> Iterator[str]:
        raise UnsupportedCapabilityError(self.name, "streaming")

    def _stream_chat(self, messages: list[Message], config: GenerationConfig) -> Iterator[str]:
        raise UnsupportedCapabilityError(self.name, "streaming")

    def _loglikelihood(self, context: str, continuation: str) -> float:
        raise UnsupportedCapabilityError(self.name, "loglikelihood")

    def _token_logprobs(self, text: str) -> list[TokenLogprob]:
        raise UnsupportedCapabilityError(self.name, "token_logprobs")

    def _perplexity_stats(self, text: str, stride: int | None) -> PerplexityStats:
        raise UnsupportedCapabilityError(self.name, "perplexity")

    @staticmethod
    def _check_text(text: Any) -> None:
        if not isinstance(text, str):
            raise InputValidationError(
                f"a prompt must be a string or a list of messages, got {type(text).__name__}"
            )
        if not text:
            raise InputValidationError("the prompt is empty; give the model some text to continue")


def check_choices(choices: Sequence[Any]) -> None:
    """Raise InputValidationError unless ``choices`` is a non-empty list of non-empty strings."""
    if isinstance(choices, str) or not choices:
        raise InputValidationError("give at least one choice (a list of strings)")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice:
            raise InputValidationError(f"choice {i} is empty or not a string: {choice!r}")
