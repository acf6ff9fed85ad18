"""The run loop: generate, parse, validate; on failure re-ask with the error; keep every attempt.

:class:`RunLoop` holds the state of one run and knows nothing about sync or async, so
``Prompt.run`` and ``Prompt.arun`` share it: ask it for the next request, hand it the
completion, and it returns a :class:`Result` or the next request, or raises
:class:`~promptkit.errors.OutputValidationError` when attempts run out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._conversation import Message as ChatMessage
from ._parsing import OutputSpec
from ._tools import ToolCall, ToolSet, ToolStep, result_text, tool_messages
from .backends._base import Completion, GenerationConfig, Message, PromptInput, Usage
from .backends._tool_calls import FunctionCall
from .errors import MaxStepsError, OutputParseError, OutputValidationError, UsageError

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
    tool_calls: tuple[FunctionCall, ...] = ()  # the tools it called, raw (the text may be "")


@dataclass(frozen=True)
class Result(Generic[OutputT]):
    """A validated answer and how it was obtained."""

    # the validated instance of the output type; None when the run ended with tool calls
    output: OutputT
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
    # the calls the model made instead of answering (run with tools=, run_tools=False)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_steps: tuple[ToolStep, ...] = ()  # the rounds of tool calls run (run_tools=True)

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
    """The state of one run (see the module docstring).

    With ``tools`` (a :class:`~promptkit._tools.ToolSet`) each request offers them; an answer
    that calls them is validated into :class:`ToolCall` s (bad calls are re-asked like bad
    answers). Without ``run_tools`` the calls end the run; with it they wait in
    :attr:`pending_calls` until :meth:`tool_results` hands back what they returned, which goes
    to the model as tool messages, round after round, until it answers. A ``tool_choice`` that
    forces a call applies to the first round; later rounds are ``"auto"`` (else the model could
    never answer).
    """

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
        tools: ToolSet | None = None,
    ):
        if tools is not None:
            config = config.replace(tools=tools.specs, tool_choice=tools.choice)
        self._request = Request(prompt, config)
        self._conversation = prompt  # what the model saw, with tool rounds but no re-asks
        self._inputs = inputs  # what SpanOf answers and bounds are checked against
        self._check = check
        self._reask = REASK[style]
        self._spec = spec
        self._max_attempts = max_attempts
        self._demonstrations = demonstrations
        self._dropped = dropped
        self._attempts: list[Attempt] = []
        self._failures = 0  # failed attempts since the last accepted one
        self._tools = tools
        self._steps: list[ToolStep] = []
        self._called: Completion | None = None  # the completion whose calls are pending
        self.pending_calls: tuple[ToolCall, ...] = ()  # calls to run (run_tools=True)
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
        """Take the backend's completion: a Result when it validates (or, without
        ``run_tools``, calls tools), else None: ask again, or run :attr:`pending_calls` first.

        A parsed output that the prompt's check refuses counts as a failed attempt, its
        reason sent back like a validation error. Raises OutputValidationError with every
        attempt when none are left, MaxStepsError when the model calls tools again after
        ``max_steps`` rounds.
        """
        now = time.perf_counter()
        request = self._request
        calls: tuple[ToolCall, ...] = ()
        try:
            if self._tools is not None:
                calls = self._tools.calls(completion, request.config.tool_choice)
            if not calls:
                output = self._spec.parse(completion.text, self._inputs)
                refused = self._check(output) if self._check is not None else None
        except OutputParseError as exc:
            refused = str(exc)
        if calls:
            refused = None
        attempt = Attempt(
            request.prompt,
            completion.text,
            refused,
            completion.usage,
            now - self._sent_at,
            completion.tool_calls,
        )
        self._attempts.append(attempt)
        if refused is not None:
            self._refuse(request, completion, refused)
            return None
        self._failures = 0
        if calls and self._tools is not None and self._tools.run:
            if len(self._steps) >= self._tools.max_steps:
                raise MaxStepsError(
                    f"the model still called tools after max_steps={self._tools.max_steps} "
                    "round(s); raise max_steps, or look at the steps taken (error.steps)",
                    max_steps=self._tools.max_steps,
                    steps=self._steps,
                    pending=calls,
                    attempts=self._attempts,
                )
            self.pending_calls, self._called = calls, completion
            return None
        usage = Usage()
        for each in self._attempts:
            usage = usage + each.usage
        said = Message(role="assistant", content=completion.text)
        if completion.tool_calls:
            said["tool_calls"] = [call.as_data() for call in completion.tool_calls]
        return Result(
            output=None if calls else output,  # type: ignore[arg-type]
            text=completion.text,
            attempts=tuple(self._attempts),
            usage=usage,
            latency_s=now - self._started,
            demonstrations=self._demonstrations,
            dropped=self._dropped,
            constrained=request.config.grammar is not None,
            messages=_conversation(self._conversation, said),
            tool_calls=calls,
            tool_steps=tuple(self._steps),
        )

    def _refuse(self, request: Request, completion: Completion, error: str) -> None:
        """Count a failed attempt: raise when none are left, else set up the re-ask."""
        self._failures += 1
        if self._failures >= self._max_attempts:
            raise OutputValidationError(
                f"no valid output after {len(self._attempts)} attempt(s); last error: {error}",
                attempts=self._attempts,
                raw_text=completion.text,
            ) from None
        if completion.tool_calls:  # each call answered with the error, as the APIs expect
            replies = [(call.id, f"error: {error}") for call in completion.tool_calls]
            messages = [*_as_messages(request.prompt), *tool_messages(completion, replies)]
            self._request = Request(messages, request.config)
        else:
            self._request = self._reask(
                request.prompt, completion.text, error, request.config, self._spec, self._inputs
            )

    def tool_results(self, results: Sequence[Any]) -> None:
        """Hand back what the :attr:`pending_calls` returned (in order): they go to the model
        as tool messages and the next request asks it to go on.

        Raises UsageError when no calls are pending, for a number of results that is not
        theirs, or for a result that cannot be sent as JSON."""
        calls, completion = self.pending_calls, self._called
        if completion is None or len(results) != len(calls):
            raise UsageError(
                f"tool_results takes one result per pending call: {len(calls)} pending, "
                f"{len(results)} given"
            )
        texts = tuple(result_text(call, value) for call, value in zip(calls, results, strict=True))
        self._steps.append(ToolStep(calls, tuple(results), texts))
        replies = [(call.id, text) for call, text in zip(calls, texts, strict=True)]
        round_ = tool_messages(completion, replies)
        self._conversation = [*_as_messages(self._conversation), *round_]
        # a forced choice applies to the first round: after it the model may answer
        config = self._request.config.replace(tool_choice="auto")
        self._request = Request(self._conversation, config)
        self.pending_calls, self._called = (), None


def _as_messages(prompt: PromptInput) -> list[Message]:
    """A prompt as chat messages (a text prompt is one user message)."""
    return [Message(role="user", content=prompt)] if isinstance(prompt, str) else list(prompt)


def _conversation(prompt: PromptInput, answer: Message) -> tuple[ChatMessage, ...]:
    """The messages of a prompt and its answer, as typed data."""
    return tuple(ChatMessage.model_validate(m) for m in [*_as_messages(prompt), answer])
