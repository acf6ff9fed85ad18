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
``score_choices``      every choice after one context; a loop over ``loglikelihood`` unless
                       the backend shares the context's work
``token_logprobs``     each token's log-probability (flag ``token_logprobs``)
``perplexity_stats``   tokens scored and their summed negative log-likelihood (``perplexity``)
``cache_identity``     everything besides the request that decides an answer (the cache key)
``batch_api``          requests in bulk through the provider's batch endpoint (``batch_api``)
``close``/``aclose``   release connections or memory (nothing to do by default)
=====================  ====================================================================

Tools (``GenerationConfig.tools``): a backend that declares ``tools`` takes them natively (an
API); one with ``token_masks`` gets them emulated here (shown in the chat template's tools slot,
flag ``tool_template``, or the system message; decoding held to a call; the call parsed back:
:mod:`promptkit.backends._tool_calls`); any other raises UnsupportedCapabilityError.

The flag ``tokens`` says a backend is a local model with token-level access (``LocalScoring``:
``generate_tokens`` from token ids, ``token_id_logprobs`` with the top alternatives), which the
server's token-id prompts and top log-probabilities use.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar, Union

from .._grammar import Grammar
from ..errors import (
    ConfigurationError,
    InputValidationError,
    PromptkitError,
    UnsupportedCapabilityError,
)
from . import _tool_calls as _tc
from ._messages import Message, check_messages, messages_to_text, plain_messages
from ._tool_calls import FunctionCall, ToolChoice, ToolSpec

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
PromptInput = Union[str, Sequence[Message]]


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: the same fields for every backend.

    Raises :class:`~promptkit.errors.ConfigurationError` when a value is out of range.
    """

    max_tokens: int = 256  # most new tokens to produce
    temperature: float = 0.0  # 0 = greedy; higher = more random
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this mass
    top_k: int | None = None  # keep only the k most likely tokens (None = all)
    stop: tuple[str, ...] = ()  # cut the text at the first of these (the stop is not kept)
    seed: int | None = None  # make sampling repeatable
    # constrain decoding to this grammar (backends with token masks); the grammar decides where
    # the answer ends, so ``stop`` is not applied to constrained output
    grammar: Grammar | None = None
    tools: tuple[ToolSpec, ...] = ()  # tools the model may call (see promptkit.Tool)
    # "auto" (answer or call), "required" (call one), "none" (answer), or a tool's name
    tool_choice: ToolChoice = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "tools", tuple(self.tools))
        problems = _tc.check_tools(self.tools, self.tool_choice) if self.tools else []
        if not self.tools and self.tool_choice != "auto":
            problems.append(f"tool_choice={self.tool_choice!r} needs tools; give some or leave it")
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            problems.append(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            problems.append(f"temperature must be >= 0 (0 means greedy), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            problems.append(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must hold non-empty strings, got {self.stop!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed must be an integer or None, got {self.seed!r}")
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            problems.append(f"grammar must be a promptkit Grammar or None, got {self.grammar!r}")
        if problems:
            raise ConfigurationError("invalid GenerationConfig: " + "; ".join(problems))

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop sequences that apply: none under a grammar, which decides the end itself."""
        return () if self.grammar is not None else self.stop

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Usage:
    """Token counts of one call, or summed over several (``a + b``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class Completion:
    """What a backend produced: the text, token usage, why generation ended, and the tools the
    model called (``tool_calls``: raw, as it wrote them; the text may be empty then)."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: Literal["stop", "length"] = "stop"
    tool_calls: tuple[FunctionCall, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared as data and checked before each call."""

    completion: bool = True  # takes a plain text prompt
    chat: bool = False  # takes a list of chat messages
    streaming: bool = False  # can stream text as it is produced
    loglikelihood: bool = False  # can score a continuation given a context
    perplexity: bool = False  # can compute the perplexity of a text
    token_masks: bool = False  # can constrain decoding with a token mask
    json_schema: bool = False  # can enforce a JSON schema on the output (chat, object schemas)
    batching: bool = False  # generate_batch runs prompts together (else it loops over generate)
    token_logprobs: bool = False  # can give each token's log-probability (token_logprobs)
    tokens: bool = False  # token-level access (a local model): token-id prompts, top logprobs
    concurrent: bool = False  # calls may run at once (an API: each call is its own request)
    batch_api: bool = False  # takes requests in bulk through the provider's batch endpoint
    tools: bool = False  # calls tools natively (the API takes tools, answers with tool calls)
    tool_template: bool = False  # the chat template has a tools slot (else: the system message)

    def calls_tools(self) -> bool:
        """Whether the backend can call tools: natively, or emulated under token masks."""
        return self.tools or self.token_masks

    def enforces(self, grammar: Grammar, *, chat: bool) -> bool:
        """Whether decoding can be held to ``grammar`` on a backend with these capabilities.

        The one rule: any grammar needs token masks, unless it is a JSON schema for an object
        sent as chat to a backend that enforces schemas (an API's structured output, which
        exists only for chat and only for objects).
        """
        if self.token_masks:
            return True
        if not (self.json_schema and chat and grammar.kind == "json_schema"):
            return False
        schema = json.loads(grammar.source)
        return isinstance(schema, dict) and schema.get("type") == "object"


class TokenLogprob(NamedTuple):
    """One token of a scored text."""

    text: str  # the token as text
    logprob: float | None  # its log-probability given the tokens before it (None for the first)
    offset: int  # where it starts in the text, in characters


@dataclass(frozen=True)
class PerplexityStats:
    """Perplexity of a text: ``exp(nll_sum / tokens)`` over the ``tokens`` scored."""

    tokens: int
    nll_sum: float

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        """``exp(mean_nll)``; infinite when that overflows or is not a number."""
        return math.exp(self.mean_nll) if self.mean_nll < 700 else math.inf


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop sequence; returns the text and whether it was cut."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class BatchAPI(abc.ABC):
    """A provider's batch endpoint (:meth:`Backend.batch_api`): requests written as lines,
    sent together, answered later; one batch holds at most ``max_requests`` lines of
    ``max_bytes`` (as :func:`encode_line` writes them)."""

    max_requests: int
    max_bytes: int

    @abc.abstractmethod
    def line(self, custom_id: str, prompt: PromptInput, config: GenerationConfig) -> dict[str, Any]:
        """One request as a line of the batch's file: exactly what ``generate`` would send,
        under ``body``, with its endpoint under ``url`` (a batch serves one endpoint)."""

    @abc.abstractmethod
    def submit(self, lines: Sequence[Mapping[str, Any]], metadata: Mapping[str, str]) -> str:
        """Send the lines as one batch; returns its id."""

    @abc.abstractmethod
    def wait(self, batch_id: str) -> Any:
        """The batch, once it has ended."""

    @abc.abstractmethod
    def answers(self, batch: Any) -> dict[str, Completion | PromptkitError]:
        """Each request's answer (or the error it got) in an ended batch, by custom id."""


def encode_line(line: Mapping[str, Any]) -> bytes:
    """One line of a batch's JSONL file, as it is uploaded."""
    return (json.dumps(line, ensure_ascii=False) + "\n").encode()


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
