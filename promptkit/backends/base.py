"""The one interface every backend implements, and the conveniences written once on top of it.

A backend implements a few ``_``-prefixed hooks (``_complete`` for plain text, ``_chat`` for
messages, optionally ``_stream_*``, ``_loglikelihood``, ``_perplexity``) and declares what it can
do as data in :class:`Capabilities`. The public methods (``generate``, ``agenerate``, ``stream``,
``loglikelihood``, ``perplexity``) check the capability first, validate the request, convert chat
messages to text (or text to a chat message) when the backend only speaks the other form, and
call the hook.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeVar, Union

from ..errors import ConfigurationError, InputValidationError, UnsupportedCapabilityError
from ..grammar import Grammar

__all__ = [
    "Backend",
    "Capabilities",
    "Completion",
    "GenerationConfig",
    "Message",
    "PromptInput",
    "Usage",
    "cut_at_stop",
    "messages_to_text",
]

R = TypeVar("R")
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class Message(TypedDict):
    """One chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""

    role: str
    content: str


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

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        problems = []
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
    """What a backend produced: the text, token usage, and why generation ended."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: Literal["stop", "length"] = "stop"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared as data and checked before each call."""

    completion: bool = True  # takes a plain text prompt
    chat: bool = False  # takes a list of chat messages
    streaming: bool = False  # can stream text as it is produced
    loglikelihood: bool = False  # can score a continuation given a context
    perplexity: bool = False  # can compute the perplexity of a text
    token_masks: bool = False  # can constrain decoding with a token mask
    json_schema: bool = False  # can enforce a JSON schema on the output


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop sequence; returns the text and whether it was cut."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def messages_to_text(messages: Sequence[Message]) -> str:
    """Flatten chat messages into one prompt for a model that only completes text.

    Each message becomes ``"Role: content"``, separated by blank lines, ending with
    ``"Assistant:"`` so that the model writes the next assistant turn.
    """
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    parts.append("Assistant:")
    return "\n\n".join(parts)


def check_messages(messages: Sequence[Any]) -> list[Message]:
    """Validate a list of chat messages; raises InputValidationError naming the bad one."""
    if not isinstance(messages, (list, tuple)):
        raise InputValidationError(
            f"a prompt must be a string or a list of messages, got {type(messages).__name__}"
        )
    if not messages:
        raise InputValidationError("the prompt has no messages; pass at least one user message")
    checked: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) != {"role", "content"}:
            raise InputValidationError(
                f"message {i} must be a mapping with exactly the keys 'role' and 'content', "
                f"got {m!r}"
            )
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            raise InputValidationError(
                f"message {i} needs a role in {ROLES} and string content, got role "
                f"{m['role']!r} and content of type {type(m['content']).__name__}"
            )
        checked.append(Message(role=m["role"], content=m["content"]))
    return checked


class Backend:
    """The base class of every backend (see the module docstring for the hooks)."""

    name: str = "backend"
    capabilities: Capabilities = Capabilities()
    context_window: int | None = None  # tokens the model can attend to, when known

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- public API ---------------------------------------------------------------------------

    def generate(self, prompt: PromptInput, config: GenerationConfig | None = None) -> Completion:
        """Generate a completion for a text prompt or a list of chat messages."""
        return self._route(prompt, config or GenerationConfig(), self._complete, self._chat)

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
        """Yield the completion's text in pieces as it is produced."""
        self.require("streaming")
        config = config or GenerationConfig()
        return self._route(prompt, config, self._stream_complete, self._stream_chat)

    def _route(
        self,
        prompt: PromptInput,
        config: GenerationConfig,
        on_text: Callable[[str, GenerationConfig], R],
        on_chat: Callable[[list[Message], GenerationConfig], R],
    ) -> R:
        """Validate the prompt and send it to the hook for the form the backend speaks."""
        grammar = config.grammar
        if grammar is not None and not (
            grammar.kind == "json_schema" and self.capabilities.json_schema
        ):
            self.require("token_masks")
        if isinstance(prompt, str):
            self._check_text(prompt)
            if self.capabilities.completion:
                return on_text(prompt, config)
            return on_chat([Message(role="user", content=prompt)], config)
        messages = check_messages(prompt)
        if self.capabilities.chat:
            return on_chat(messages, config)
        return on_text(messages_to_text(messages), config)

    def loglikelihood(self, context: str, continuation: str) -> float:
        """Sum of the log-probabilities of ``continuation``'s tokens given ``context``."""
        self.require("loglikelihood")
        if not continuation:
            raise InputValidationError("continuation is empty; there is nothing to score")
        return self._loglikelihood(context, continuation)

    def perplexity(self, text: str, stride: int | None = None) -> float:
        """Perplexity of ``text`` (sliding window of ``stride`` tokens when it is long)."""
        self.require("perplexity")
        self._check_text(text)
        if stride is not None and stride <= 0:
            raise InputValidationError(f"stride must be a positive integer, got {stride}")
        value = self._perplexity(text, stride)
        return math.inf if math.isnan(value) else value

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for fitting prompts to ``context_window``.

        This default is an estimate — one token per four characters, rounded up (the usual
        rule of thumb for English with GPT-style BPE tokenizers). Local backends count exactly
        with their own tokenizer.
        """
        return -(-len(text) // 4)

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

    def _perplexity(self, text: str, stride: int | None) -> float:
        raise UnsupportedCapabilityError(self.name, "perplexity")

    @staticmethod
    def _check_text(text: Any) -> None:
        if not isinstance(text, str):
            raise InputValidationError(
                f"a prompt must be a string or a list of messages, got {type(text).__name__}"
            )
        if not text:
            raise InputValidationError("the prompt is empty; give the model some text to continue")
