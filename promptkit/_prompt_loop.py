"""How a :class:`~promptkit.Prompt` runs: the run loop of one input (its style for the
backend, demonstrations fitted to the context window, the constraint on decoding), the first
request, and streaming. :class:`PromptLoop` is Prompt's base class; :meth:`Prompt.run` and
:meth:`Prompt.arun` drive the loop built here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from ._conversation import Message as ChatMessage
from ._conversation import ThreadSlot, with_history
from ._decoding import Constrained, decoding_grammar
from ._demos import Selection, Strategy, fit_to_window
from ._grammar import Grammar
from ._inputs import template_context
from ._layout import Style
from ._parsing import OutputCheck, run_check
from ._rendering import PromptRendering
from ._runloop import RunLoop
from ._streaming import StreamEvent, astream_run, stream_run
from ._tools import ToolSet
from .backends._base import GenerationConfig, PromptInput
from .errors import UsageError

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = ["PromptLoop"]

OutputT = TypeVar("OutputT")


class PromptLoop(PromptRendering, Generic[OutputT]):
    """The running half of :class:`~promptkit.Prompt` (its base class, above the rendering
    half): building the run loop of one input, and streaming it. Prompt's constructor sets
    the attributes declared here."""

    config: GenerationConfig | None
    check: OutputCheck | None

    def _loop(
        self,
        inputs: Mapping[str, Any] | BaseModel,
        backend: Backend,
        shots: int | None,
        max_attempts: int,
        config: GenerationConfig | None,
        style: Style | None,
        constrained: Constrained,
        select: Selection | Strategy | None = None,
        history: Sequence[ChatMessage | Mapping[str, Any]] | None = None,
        tools: ToolSet | None = None,
    ) -> RunLoop[OutputT]:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise UsageError(f"max_attempts must be a positive integer, got {max_attempts!r}")
        threads = [t.name for t in self.turns if isinstance(t, ThreadSlot)]
        inputs, earlier = with_history(inputs, history, threads)
        chosen = style or self.style
        if chosen == "chat" and not backend.capabilities.chat:
            chosen = "completion"
        elif chosen == "completion" and not backend.capabilities.completion:
            chosen = "chat"
        count = self._shots(shots)
        validated = self.validate_inputs(inputs)
        context = template_context(validated)
        if self.output.bounded:
            self.output.schema_for(context)  # a bound that cannot render fails before any call
        selection = Selection.of(select)
        config = config or self.config or GenerationConfig()
        if chosen == "completion" and count and not config.stop:
            config = config.replace(stop=("\n\n",))  # the demonstrations' separator
        grammar = self.constraint(backend, constrained, inputs=context, chat=chosen == "chat")
        if grammar is not None:
            config = config.replace(grammar=grammar)
        rendered, shown, dropped = fit_to_window(
            lambda kept: self._render_context(context, selection.shown(kept), chosen, earlier),
            self._choose(context, count, selection),
            backend,
            config.max_tokens + (tools.reserved_tokens(backend) if tools else 0),
        )
        return RunLoop(
            rendered,
            chosen,
            config,
            self.output,
            max_attempts,
            demonstrations=tuple(selection.shown(shown)),
            dropped=tuple(dropped),
            inputs=context,
            check=None if self.check is None else partial(run_check, self.check, validated),
            tools=tools,
        )

    def constraint(
        self,
        backend: Backend,
        constrained: Constrained = None,
        *,
        inputs: Mapping[str, Any] | None = None,
        chat: bool = True,
    ) -> Grammar | None:
        """The grammar that decoding on ``backend`` is constrained to, or None.

        ``inputs`` (a run's, validated) restrict the output's SpanOf strings to the text of
        the inputs they are copied from, on backends with token masks, and render the bounds
        that come from the inputs (without them, such bounds are left to validation). ``chat``
        says whether the prompt goes to the backend as chat messages (an API's structured output
        exists only for chat: :meth:`~promptkit.backends.Capabilities.enforces` is the rule).

        ``constrained``: None (the default) constrains structured output types (labels, JSON,
        numbers, regexes, grammars) on backends with token masks, and object output types on
        backends with structured output (the OpenAI API's ``response_format``); True also
        requires such a backend (UnsupportedCapabilityError otherwise); False never
        constrains; ``"fallback"`` is None that falls back to parse-and-re-ask when llguidance
        cannot compile the output type (instead of raising ConstraintError).
        """
        return decoding_grammar(
            self.output, backend, constrained, inputs=inputs, chat=chat, owner=self
        )

    def start(
        self,
        inputs: Mapping[str, Any] | BaseModel,
        *,
        backend: Backend,
        shots: int | None = None,
        max_attempts: int = 3,
        config: GenerationConfig | None = None,
        select: Selection | Strategy | None = None,
    ) -> RunLoop[OutputT]:
        """The run loop :meth:`run` drives, for callers that send the requests themselves (a
        batch API): take each request from ``next_request``, give it each completion with
        ``accept``. Raises what :meth:`run` raises before calling the backend."""
        return self._loop(inputs, backend, shots, max_attempts, config, None, None, select)

    def first_request(
        self,
        inputs: Mapping[str, Any] | BaseModel,
        *,
        backend: Backend,
        shots: int | None = None,
        config: GenerationConfig | None = None,
        style: Style | None = None,
        select: Selection | Strategy | None = None,
    ) -> PromptInput:
        """The prompt :meth:`run` sends to ``backend`` first, with the same arguments: its
        style for that backend, its demonstrations fitted to the context window (what
        fine-tuning trains on). Raises what :meth:`run` raises before calling the backend."""
        loop = self._loop(inputs, backend, shots, 1, config, style, False, select)
        return loop.next_request().prompt

    def stream(
        self,
        inputs: Mapping[str, Any] | BaseModel,
        *,
        backend: Backend,
        shots: int | None = None,
        max_attempts: int = 3,
        config: GenerationConfig | None = None,
        style: Style | None = None,
        constrained: Constrained = None,
        select: Selection | Strategy | None = None,
        history: Sequence[ChatMessage | Mapping[str, Any]] | None = None,
    ) -> Iterator[StreamEvent[OutputT]]:
        """:meth:`run`, streamed: :class:`~promptkit.StreamEvent` s with each piece of text
        (``.delta``) and the output so far (``.partial``); the last event's ``.result`` is
        what :meth:`run` returns. A re-ask streams as the next ``.attempt``.

        Raises UnsupportedCapabilityError (naming the backend and ``streaming``) when the
        backend cannot stream, and what :meth:`run` raises before its first call here; the
        rest (OutputValidationError, the backend's errors) while iterating.
        """
        backend.require("streaming")
        loop = self._loop(
            inputs, backend, shots, max_attempts, config, style, constrained, select, history
        )
        return stream_run(loop, backend)

    def astream(
        self,
        inputs: Mapping[str, Any] | BaseModel,
        *,
        backend: Backend,
        shots: int | None = None,
        max_attempts: int = 3,
        config: GenerationConfig | None = None,
        style: Style | None = None,
        constrained: Constrained = None,
        select: Selection | Strategy | None = None,
        history: Sequence[ChatMessage | Mapping[str, Any]] | None = None,
    ) -> AsyncIterator[StreamEvent[OutputT]]:
        """The async twin of :meth:`stream` (``async for event in prompt.astream(...)``)."""
        backend.require("streaming")
        loop = self._loop(
            inputs, backend, shots, max_attempts, config, style, constrained, select, history
        )
        return astream_run(loop, backend)
