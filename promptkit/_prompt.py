"""Typed prompts: :class:`Prompt` renders typed input into text or chat messages and runs it.

A prompt is a task *instruction*, *demonstrations* (:class:`Example`) and a *query* template.
Demonstrations are rendered with the same query template as the real query and their outputs
written the way the model is asked to answer, so zero-, one- and few-shot renderings differ only
in the number of demonstrations.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, overload

from pydantic import BaseModel

from ._batch import arun_each, run_each
from ._conversation import Message as ChatMessage
from ._conversation import ThreadSlot, unplaced_threads
from ._decoding import Constrained
from ._demos import Example, Selection, Strategy, validate_examples
from ._inputs import (
    check_output_inputs,
    check_variables,
    infer_input_type,
    template_context,
)
from ._layout import STYLES, Style, TemplateFormat, Turn, compile_parts
from ._outputs import Lark, Regex
from ._parsing import OutputCheck, output_spec
from ._prompt_loop import PromptLoop
from ._runloop import Attempt, Result
from ._scoring import Classification, classify_labels
from ._tools import ToolOptions, arun_calls, run_calls, tool_set
from .backends._base import GenerationConfig
from .errors import UsageError

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .backends._base import Backend

__all__ = [
    "Attempt",
    "Constrained",
    "Example",
    "Prompt",
    "PromptOptions",
    "Result",
    "Style",
    "TemplateFormat",
]

OutputT = TypeVar("OutputT")


class PromptOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Prompt` besides ``query`` and ``output_type`` (see its
    docstring), named once for its typed overloads."""

    instruction: str
    input_type: type[BaseModel] | None
    examples: Sequence[Example]
    system: str | None
    style: Style
    shots: int | None
    format_instructions: bool
    turns: Sequence[tuple[str, str] | ThreadSlot]
    config: GenerationConfig | None
    name: str | None
    description: str | None
    metadata: Mapping[str, Any] | None
    source: str | None
    first_lines: Mapping[str, int] | None
    check: OutputCheck | None
    template_folder: Path | None
    template_format: TemplateFormat


class Prompt(PromptLoop[OutputT]):
    """A typed prompt template.

    Args:
        query: Jinja2 template of the question, over the input type's fields; None for a
            prompt whose messages end with its turns (a conversation, or a system message).
        instruction: Jinja2 template of the task description (may use the inputs too).
        input_type: pydantic model of the inputs; inferred (every variable required) if omitted.
        output_type: what the answer is parsed and validated into.
        examples: demonstrations, in order of preference.
        system: a system message put before the instruction (chat) or above it (completion).
        style: the preferred rendering, ``"chat"`` messages or one ``"completion"`` string;
            :meth:`run` switches to the form the backend speaks.
        shots: how many examples to show by default (all when None).
        format_instructions: add a sentence saying how to answer (labels, JSON schema, ...).
        turns: fixed ``(role, template)`` messages between the instruction and the examples,
            and :class:`~promptkit._conversation.ThreadSlot` s, where a ``list[pk.Message]``
            input's messages go (the examples then come before the first one). A message-list
            input that no slot places and no template uses goes before the query.
        config: default generation settings for :meth:`run`.
        name, description, metadata: carried along (template files keep unknown keys here).
        source: names the template in error messages (a file path for template files).
        first_lines: the file line where each part starts (``"instruction"``, ``"query"``,
            ``"turn0"``...), so that errors point at the right line of the file.
        template_folder: the folder ``{% extends %}``, ``{% include %}`` and ``{% import %}``
            (or mustache partials) load templates from (a template file's own; none when None).
        template_format: ``"jinja2"``, or ``"mustache"`` (Prompty's other format, rendered by
            chevron; see :mod:`promptkit._mustache`).
        check: ``check(inputs, output)``, a test of a parsed output against the run's validated
            inputs that a type cannot state (``lambda i, o: o < len(i.choices)``): it returns
            True or None to accept, False to refuse, or raises ValueError / AssertionError
            saying why. A refused answer is re-asked like a validation error, with that reason,
            and recorded in ``result.attempts``; the examples' outputs must pass it too.

    Raises TemplateError (bad template syntax or unsafe access, or output bounds rendered
    from inputs the prompt does not have), MissingVariableError (a template uses a name the
    input type lacks), InputValidationError (an example's input or output does not validate,
    or fails ``check``), UsageError (``check`` is not callable).
    """

    # The output type decides the type of ``result.output``: a class gives its instances, no
    # output type gives str, and special forms (Literal[...], Annotated[...]) give Any.
    @overload
    def __init__(
        self: Prompt[OutputT],
        *,
        query: str | None,
        output_type: type[OutputT],
        **options: Unpack[PromptOptions],
    ) -> None: ...

    @overload
    def __init__(
        self: Prompt[str], *, query: str | None, **options: Unpack[PromptOptions]
    ) -> None: ...

    @overload
    def __init__(
        self: Prompt[str],
        *,
        query: str | None,
        output_type: Regex | Lark,
        **options: Unpack[PromptOptions],
    ) -> None: ...

    @overload
    def __init__(
        self: Prompt[Any], *, query: str | None, output_type: Any, **options: Unpack[PromptOptions]
    ) -> None: ...

    def __init__(
        self,
        *,
        query: str | None,
        instruction: str = "",
        input_type: type[BaseModel] | None = None,
        output_type: Any = str,
        examples: Sequence[Example] = (),
        system: str | None = None,
        style: Style = "chat",
        shots: int | None = None,
        format_instructions: bool = True,
        turns: Sequence[tuple[str, str] | ThreadSlot] = (),
        config: GenerationConfig | None = None,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
        first_lines: Mapping[str, int] | None = None,
        check: OutputCheck | None = None,
        template_folder: Path | None = None,
        template_format: TemplateFormat = "jinja2",
    ) -> None:
        if style not in STYLES:
            raise UsageError(f"style must be 'chat' or 'completion', got {style!r}")
        source = source or (f"prompt {name!r}" if name else "<prompt>")
        self.name = name
        self.description = description
        self.style = style
        self.system = system
        self.format_instructions = format_instructions
        self.config = config
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.source = source
        self.template_format: TemplateFormat = template_format
        self.asks_query = query is not None  # False: the messages end with the last turn
        self.instruction, self.query, placed = compile_parts(
            instruction,
            query or "",
            turns,
            source=source,
            first_lines=first_lines or {},
            folder=template_folder,
            template_format=template_format,
        )
        fixed = (t.template for t in placed if isinstance(t, Turn))
        templates = [self.instruction, self.query, *fixed]
        used = frozenset().union(*(t.variables for t in templates))
        slots = [t.name for t in placed if isinstance(t, ThreadSlot)]
        self.input_type = input_type or infer_input_type(used, slots)
        printed = frozenset().union(*(t.printed for t in templates))
        self.turns = (
            *placed,
            *unplaced_threads(self.input_type.model_fields, used, slots, source, printed),
        )
        declared = set(self.input_type.model_fields)
        check_variables(templates, declared, source)
        self.output = output_spec(output_type)
        self.output_type = output_type
        check_output_inputs(self.output, declared, source)
        if check is not None and not callable(check):
            raise UsageError(f"check must be a callable check(inputs, output), got {check!r}")
        self.check = check
        self.examples = tuple(examples)
        if self.examples and not self.asks_query:
            raise UsageError(
                "examples are shown as (query, answer) pairs, but this prompt has no query; "
                "give it a query template or no examples"
            )
        self._example_inputs = self._validated_examples()
        if shots is not None and not 0 <= shots <= len(self.examples):
            raise UsageError(
                f"shots={shots} but the prompt has {len(self.examples)} example(s); "
                f"choose 0..{len(self.examples)}"
            )
        self.shots = shots
        self._demos = None
        self._header_cache = {}

    def __repr__(self) -> str:
        output = getattr(self.output_type, "__name__", repr(self.output_type))
        return (
            f"<Prompt {self.name or 'unnamed'!s}: style={self.style}, "
            f"output={output}, examples={len(self.examples)}>"
        )

    # -- inputs and examples ------------------------------------------------------------------

    def with_examples(self, examples: Sequence[Example]) -> Prompt[OutputT]:
        """A copy of this prompt with other demonstrations (validated), sharing its templates.

        Raises InputValidationError when an example does not match the input or output type,
        UsageError for examples of a prompt without a query.
        """
        if examples and not self.asks_query:
            raise UsageError("this prompt has no query, so it cannot show examples")
        other = copy.copy(self)
        other.examples = tuple(examples)
        other._example_inputs = other._validated_examples()
        if self.shots is not None and self.shots > len(other.examples):
            other.shots = None
        other._demos = None
        other._header_cache = {}
        return other

    def with_check(self, check: OutputCheck | None) -> Prompt[OutputT]:
        """A copy of this prompt whose answers must also pass ``check(inputs, output)`` (see
        the class's ``check``; None removes it), e.g. for a prompt loaded from a file.

        Raises UsageError when ``check`` is not callable, InputValidationError when an
        example's output fails it.
        """
        if check is not None and not callable(check):
            raise UsageError(f"check must be a callable check(inputs, output), got {check!r}")
        other = copy.copy(self)
        other.check = check
        other._example_inputs = other._validated_examples()
        return other

    def _validated_examples(self) -> list[BaseModel]:
        """The examples' inputs, validated (each example's output too, and by ``check``)."""
        return validate_examples(
            self.examples, self.input_type, self.output, self.output_type, self.check
        )

    # -- running ------------------------------------------------------------------------------

    def run(
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
        **tool_options: Unpack[ToolOptions],
    ) -> Result[OutputT]:
        """Render, generate, parse and validate; re-ask with the error on failure.

        ``history`` continues a conversation (``pk.Message`` s, e.g. an earlier
        ``result.messages``): one that starts with a system message is the whole conversation
        so far and only the query follows it; another goes before the query (into the
        prompt's message-list input when it has one: giving that input too is a UsageError).

        Demonstrations: the first ``shots`` of the examples ranked by ``select`` (see
        :class:`~promptkit.Selection`); on backends that count tokens, the least wanted are dropped
        until the prompt plus ``max_tokens`` fits the context window (``result.dropped`` says
        which and why).

        On backends with token masks (scratch, hf) a structured output type also constrains
        decoding, so the first answer is already valid; see :meth:`constraint` for
        ``constrained``.

        Tools (``tool_options``, see :class:`~promptkit._tools.ToolOptions`): ``tools`` may be
        called instead of answering, as ``tool_choice`` allows; the result then has no output
        and holds the validated calls (``result.tool_calls``). With ``run_tools=True`` the
        calls are run and their results sent back as tool messages until the model answers
        (``result.tool_steps``), at most ``max_steps`` rounds.

        Returns a :class:`Result`. Raises OutputValidationError (carrying every attempt) when
        ``max_attempts`` answers all fail, InputValidationError for bad inputs, ConstraintError
        when the output type cannot be a constraint (or ``max_tokens`` cannot hold any valid
        answer), MaxStepsError (holding the steps) when the model calls tools past
        ``max_steps``, UnsupportedCapabilityError for tools on a backend that cannot call them,
        UsageError for invalid tools, and whatever the backend (or a tool) raises.
        """
        tools = tool_set(**tool_options)
        loop = self._loop(
            inputs, backend, shots, max_attempts, config, style, constrained, select, history, tools
        )
        while True:
            request = loop.next_request()
            done = loop.accept(backend.generate(request.prompt, request.config))
            if done is not None:
                return done
            if loop.pending_calls:
                loop.tool_results(run_calls(loop.pending_calls))

    async def arun(
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
        **tool_options: Unpack[ToolOptions],
    ) -> Result[OutputT]:
        """The async twin of :meth:`run` (async tools are awaited)."""
        tools = tool_set(**tool_options)
        loop = self._loop(
            inputs, backend, shots, max_attempts, config, style, constrained, select, history, tools
        )
        while True:
            request = loop.next_request()
            done = loop.accept(await backend.agenerate(request.prompt, request.config))
            if done is not None:
                return done
            if loop.pending_calls:
                loop.tool_results(await arun_calls(loop.pending_calls))

    def classify(
        self,
        inputs: Mapping[str, Any] | BaseModel,
        *,
        backend: Backend,
        shots: int | None = None,
        normalize: bool = False,
        calibrate: bool = False,
        content_free: str = "N/A",
        select: Selection | Strategy | None = None,
    ) -> Classification:
        """Choose the label by likelihood: score each label's verbalisation as a continuation
        of the rendered prompt (completion form) and take the most probable.

        ``normalize`` divides each label's log-probability by its length in tokens;
        ``calibrate`` divides the label probabilities by those given for a content-free input
        (every text field set to ``content_free``) before choosing.

        Raises UsageError unless the output type is a label set (``Literal`` / ``Enum`` /
        ``labels:``), UnsupportedCapabilityError when the backend cannot score, and
        InputValidationError for bad inputs or shots.
        """
        if self.output.kind != "label":
            raise UsageError(
                "classify needs a label output type (Literal[...], an Enum or labels: [...]); "
                f"this prompt's output is {self.output.kind}"
            )
        backend.require("loglikelihood")
        count = self._shots(shots)
        context = template_context(self.validate_inputs(inputs))
        selection = Selection.of(select)
        shown = selection.shown(self._choose(context, count, selection))
        return classify_labels(
            lambda values: self._render_context(values, shown, "completion"),
            context,
            self.output,
            backend=backend,
            normalize=normalize,
            content_free=content_free if calibrate else None,
        )

    def run_batch(
        self,
        inputs: Sequence[Mapping[str, Any] | BaseModel],
        *,
        backend: Backend,
        concurrency: int = 4,
        return_exceptions: bool = False,
        **options: Any,
    ) -> list[Result[OutputT] | Exception]:
        """Run many inputs with at most ``concurrency`` in flight; results keep input order.

        With ``return_exceptions=True`` a failed item's promptkit error takes its place in the
        list instead of being raised.
        """
        return run_each(
            lambda item: self.run(item, backend=backend, **options),
            inputs,
            concurrency=concurrency,
            return_exceptions=return_exceptions,
        )

    async def arun_batch(
        self,
        inputs: Sequence[Mapping[str, Any] | BaseModel],
        *,
        backend: Backend,
        concurrency: int = 4,
        return_exceptions: bool = False,
        **options: Any,
    ) -> list[Result[OutputT] | Exception]:
        """The async twin of :meth:`run_batch`."""
        return await arun_each(
            lambda item: self.arun(item, backend=backend, **options),
            inputs,
            concurrency=concurrency,
            return_exceptions=return_exceptions,
        )
