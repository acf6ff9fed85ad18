"""How a :class:`~promptkit.Prompt` renders: its inputs validated into template variables, the
demonstrations chosen and rendered, and the parts laid out (see :mod:`promptkit._layout`) as
one completion string or chat messages. :class:`PromptRendering` is Prompt's base class: this
half of it needs no backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ._conversation import Message as ChatMessage
from ._conversation import ThreadSlot, thread_messages
from ._demos import Example, Selection, Strategy
from ._inputs import template_context, validate_inputs
from ._layout import Style, Turn, continue_conversation, lay_out, render_turns
from ._parsing import OutputSpec
from ._templating import CompiledTemplate
from .backends._base import Message, PromptInput
from .errors import InputValidationError

__all__ = ["PromptRendering"]


class PromptRendering:
    """The rendering half of :class:`~promptkit.Prompt` (its base class): validating inputs,
    choosing and rendering demonstrations, laying out the parts. Prompt's constructor sets
    the attributes declared here."""

    instruction: CompiledTemplate
    query: CompiledTemplate
    asks_query: bool  # False: the messages end with the last turn
    turns: tuple[Turn | ThreadSlot, ...]
    system: str | None
    format_instructions: bool
    style: Style
    shots: int | None
    input_type: type[BaseModel]
    output: OutputSpec
    examples: tuple[Example, ...]
    _example_inputs: list[BaseModel]
    _demos: list[tuple[str, str]] | None
    _header_cache: dict[bool, str]

    def validate_inputs(self, inputs: Mapping[str, Any] | BaseModel) -> BaseModel:
        """Validate inputs against the input type; raises InputValidationError naming fields."""
        return validate_inputs(self.input_type, inputs)

    def render(
        self,
        inputs: Mapping[str, Any] | BaseModel,
        shots: int | None = None,
        *,
        style: Style | None = None,
        select: Selection | Strategy | None = None,
    ) -> PromptInput:
        """Render to one string (completion style) or a list of chat messages (chat style).

        ``shots`` demonstrations are shown, chosen by ``select`` (default: the examples' own
        order; see :mod:`promptkit._demos`).

        Raises InputValidationError for bad inputs or shots, TemplateError if rendering fails.
        """
        context = template_context(self.validate_inputs(inputs))
        selection = Selection.of(select)
        chosen = self._choose(context, self._shots(shots), selection)
        return self._render_context(context, selection.shown(chosen), style or self.style)

    def _choose(self, context: dict[str, Any], count: int, selection: Selection) -> list[int]:
        """Indices of the ``count`` most wanted examples for this input, most wanted first."""
        return selection.choose(
            count, lambda: self.query.render(context).strip(), self._demonstrations
        )

    def _shots(self, shots: int | None) -> int:
        if shots is None:
            return len(self.examples) if self.shots is None else self.shots
        if not isinstance(shots, int) or not 0 <= shots <= len(self.examples):
            raise InputValidationError(
                f"shots={shots!r} but the prompt has {len(self.examples)} example(s); "
                f"choose 0..{len(self.examples)}"
            )
        return shots

    def _render_context(
        self,
        context: dict[str, Any],
        shown: Sequence[int],
        style: Style,
        history: Sequence[ChatMessage] = (),
    ) -> PromptInput:
        """Render with the examples ``shown`` (indices, in display order). A ``history`` that
        starts with a system message is the whole conversation so far: only the query follows
        it; another goes after the turns and demonstrations, before the query."""
        asked = (
            [Message(role="user", content=self.query.render(context).strip())]
            if self.asks_query
            else []
        )
        if history and history[0].role == "system":
            return continue_conversation(history, asked, style)
        header = self._header(context, completion=style == "completion")
        turns, before_demos = render_turns(self.turns, context)
        every = self._demonstrations()
        demos = [every[i] for i in shown]
        rest = [*turns[before_demos:], *thread_messages(history)]
        return lay_out(header, turns[:before_demos], demos, rest, asked, style)

    def _header(self, context: dict[str, Any], *, completion: bool) -> str:
        cacheable = self.instruction.constant and not self.output.bounded
        if cacheable and completion in self._header_cache:
            return self._header_cache[completion]
        parts = [
            self.system or "",
            self.instruction.render(context).strip(),
            self.output.format_instructions(context) if self.format_instructions else "",
        ]
        header = "\n\n".join(p.strip() for p in parts if p.strip())
        if cacheable:
            self._header_cache[completion] = header
        return header

    def _demonstrations(self) -> list[tuple[str, str]]:
        """Each example as (rendered query, answer text), computed once."""
        if self._demos is None:
            demos = []
            for validated, example in zip(self._example_inputs, self.examples, strict=True):
                context = template_context(validated)
                answer = self.output.validate(example.output, context)
                demos.append((self.query.render(context).strip(), self.output.serialize(answer)))
            self._demos = demos
        return self._demos
