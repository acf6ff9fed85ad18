"""The data of the backend interface (:mod:`promptkit.backends._base`): how to generate
(:class:`GenerationConfig`), what came back (:class:`Completion`, :class:`Usage`), what a
backend can do (:class:`Capabilities`), scores (:class:`TokenLogprob`,
:class:`PerplexityStats`) and a provider's batch endpoint (:class:`BatchAPI`)."""

from __future__ import annotations

import abc
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Union

from .._grammar import Grammar
from ..errors import ConfigurationError, PromptkitError
from . import _tool_calls as _tc
from ._messages import Message
from ._tool_calls import FunctionCall, ToolChoice, ToolSpec

__all__ = [
    "BatchAPI",
    "Capabilities",
    "Completion",
    "GenerationConfig",
    "PerplexityStats",
    "PromptInput",
    "TokenLogprob",
    "Usage",
    "cut_at_stop",
    "encode_line",
]

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
    # calls may run at once (an API: each call is its own request; scratch: concurrent calls
    # share forward passes)
    concurrent: bool = False
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
