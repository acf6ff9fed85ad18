"""The run loop: generate, parse, validate; on failure re-ask with the error; keep every attempt.

:class:`RunLoop` holds the state of one run and knows nothing about sync or async, so
``Prompt.run`` and ``Prompt.arun`` share it: ask it for the next request, hand it the
completion, and it returns a :class:`Result` or the next request, or raises
:class:`~promptkit.errors.OutputValidationError` when attempts run out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._conversation import Message as ChatMessage
from ._parsing import OutputSpec
from .backends._base import Completion, GenerationConfig, Message, PromptInput, Usage
from .errors import OutputParseError, OutputValidationError

__all__ = ["Attempt", "Request", "Result", "RunLoop"]

OutputT = TypeVar("OutputT")

RETRY_TEMPERATURE = 0.7  # completion re-asks sample instead of repeating a greedy answer


@dataclass(frozen=True)
class Attempt:
    """One call to the model: what was sent, what came back, and why it was refused (or None)."""

    prompt: PromptInput
    text: str
    error: str | None
    usage: Usage
    latency_s: float


@dataclass(frozen=True)
class Result(Generic[OutputT]):
    """A validated answer and how it was obtained."""

    output: OutputT  # the validated instance of the output type
    text: str  # raw text of the accepted attempt
    attempts: tuple[Attempt, ...]  # every attempt, the accepted one last
    usage: Usage  # token counts summed over all attempts
    latency_s: float  # wall time of the whole run
    demonstrations: tuple[int, ...] = ()  # indices of the examples shown, in display order
    dropped: tuple[tuple[int, str], ...] = ()  # examples chosen but left out, and why
    constrained: bool = False  # whether decoding was constrained to the output type's grammar
    # the conversation as the model first saw it, then its accepted answer (re-asks are in
    # attempts); a completion prompt is one user message. Continue it with run(history=...).
    messages: tuple[ChatMessage, ...] = ()

    @property
    def examples_used(self) -> int:
        """How many demonstrations the prompt showed."""
        return len(self.demonstrations)


@dataclass(frozen=True)
class Request:
    """What to send next."""

    prompt: PromptInput
    config: GenerationConfig


def _reask_chat(
    prompt: PromptInput,
    text: str,
    error: str,
    config: GenerationConfig,
    spec: OutputSpec,
    inputs: Mapping[str, Any] | None,
) -> Request:
    """Chat: show the model its answer and the error as a follow-up message."""
    if isinstance(prompt, str):
        return _reask_completion(prompt, text, error, config, spec, inputs)
    how = spec.format_instructions(inputs) or "Answer again."
    follow_up = f"Your answer could not be used: {error}\n{how}"
    messages = [
        *prompt,
        Message(role="assistant", content=text),
        Message(role="user", content=follow_up),
    ]
    return Request(messages, config)


def _reask_completion(
    prompt: PromptInput,
    text: str,
    error: str,
    config: GenerationConfig,
    spec: OutputSpec,
    inputs: Mapping[str, Any] | None,
) -> Request:
    """Completion: ask the same prompt again, sampling (a greedy model would repeat itself)."""
    changes: dict[str, Any] = {}
    if config.temperature == 0:
        changes["temperature"] = RETRY_TEMPERATURE
    if config.seed is not None:
        changes["seed"] = config.seed + 1
    return Request(prompt, config.replace(**changes) if changes else config)


ReaskStrategy = Callable[
    [PromptInput, str, str, GenerationConfig, OutputSpec, Mapping[str, Any] | None], Request
]
# What a prompt's check says of a parsed output: why it is refused, or None to accept it.
Check = Callable[[Any], str | None]
REASK: dict[str, ReaskStrategy] = {"chat": _reask_chat, "completion": _reask_completion}


class RunLoop(Generic[OutputT]):
    """The state of one run (see the module docstring)."""

    def __init__(
        self,
        prompt: PromptInput,
        style: str,
        config: GenerationConfig,
        spec: OutputSpec,
        max_attempts: int,
        *,
        demonstrations: tuple[int, ...] = (),
        dropped: tuple[tuple[int, str], ...] = (),
        inputs: Mapping[str, Any] | None = None,
        check: Check | None = None,
    ):
        self._request = Request(prompt, config)
        self._inputs = inputs  # what SpanOf answers and bounds are checked against
        self._check = check
        self._reask = REASK[style]
        self._spec = spec
        self._max_attempts = max_attempts
        self._demonstrations = demonstrations
        self._dropped = dropped
        self._attempts: list[Attempt] = []
        self._started = time.perf_counter()
        self._sent_at = self._started

    @property
    def spec(self) -> OutputSpec:
        """The output type's spec, which answers are parsed with."""
        return self._spec

    @property
    def inputs(self) -> Mapping[str, Any] | None:
        """The run's validated inputs (what SpanOf answers and bounds are checked against)."""
        return self._inputs

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """The attempts so far, the latest last."""
        return tuple(self._attempts)

    def next_request(self) -> Request:
        self._sent_at = time.perf_counter()
        return self._request

    def accept(self, completion: Completion) -> Result[OutputT] | None:
        """Take the backend's completion: a Result when it validates, else None (ask again).

        A parsed output that the prompt's check refuses counts as a failed attempt, its
        reason sent back like a validation error. Raises OutputValidationError with every
        attempt when none are left.
        """
        now = time.perf_counter()
        request = self._request
        try:
            output = self._spec.parse(completion.text, self._inputs)
            refused = self._check(output) if self._check is not None else None
        except OutputParseError as exc:
            refused = str(exc)
        if refused is not None:
            error = refused
            self._attempts.append(
                Attempt(
                    request.prompt, completion.text, error, completion.usage, now - self._sent_at
                )
            )
            if len(self._attempts) >= self._max_attempts:
                raise OutputValidationError(
                    f"no valid output after {len(self._attempts)} attempt(s); last error: {error}",
                    attempts=self._attempts,
                    raw_text=completion.text,
                ) from None
            self._request = self._reask(
                request.prompt, completion.text, error, request.config, self._spec, self._inputs
            )
            return None
        self._attempts.append(
            Attempt(request.prompt, completion.text, None, completion.usage, now - self._sent_at)
        )
        usage = Usage()
        for attempt in self._attempts:
            usage = usage + attempt.usage
        return Result(
            output=output,
            text=completion.text,
            attempts=tuple(self._attempts),
            usage=usage,
            latency_s=now - self._started,
            demonstrations=self._demonstrations,
            dropped=self._dropped,
            constrained=request.config.grammar is not None,
            messages=_conversation(self._attempts[0].prompt, completion.text),
        )


def _conversation(prompt: PromptInput, answer: str) -> tuple[ChatMessage, ...]:
    """The messages of a prompt and its answer, as typed data."""
    sent = [Message(role="user", content=prompt)] if isinstance(prompt, str) else prompt
    return tuple(
        ChatMessage.model_validate(m) for m in [*sent, Message(role="assistant", content=answer)]
    )
