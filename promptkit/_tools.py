"""Tools (function calling): :class:`Tool` from a typed function or a pydantic model, the typed
:class:`ToolCall` s a run returns, and the :class:`ToolStep` s of a run that calls them.

A tool's arguments are a pydantic model: the model class itself, or one pydantic builds from a
function's signature (its annotations and defaults; parameter descriptions from the docstring's
``Args:`` section). The JSON schema the model sees is that model's, written by pydantic.

:class:`ToolSet` is what a run offers (the tools, ``tool_choice``, whether to run the calls and
for how many rounds): it turns a completion's raw calls into validated :class:`ToolCall` s, or
an :class:`~promptkit.errors.OutputParseError` saying what to fix, which the run loop re-asks.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .backends._base import Backend, Completion
from .backends._messages import Message
from .backends._tool_calls import (
    CHOICE_KEYWORDS,
    FunctionCall,
    ToolChoice,
    ToolSpec,
    check_tools,
    tools_system_text,
)
from .errors import OutputParseError, UsageError

__all__ = [
    "Tool",
    "ToolCall",
    "ToolOptions",
    "ToolSet",
    "ToolStep",
    "arun_calls",
    "result_text",
    "run_calls",
    "tool_messages",
    "tool_set",
]

_HEADER = re.compile(r"^[A-Z]\w*( \w+)?:$")  # a docstring section: "Args:", "Returns:"...
_ARGS_SECTIONS = ("Args", "Arguments", "Parameters", "Params")
_ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """A docstring's description (the text before its first section) and its ``Args:``
    entries (Google style: ``name (type): text``, continued on deeper-indented lines)."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if indent == 0 and _HEADER.match(stripped):
            section, entry_indent, current = stripped[:-1].strip(), None, None
            continue
        if section is None:
            summary.append(line)
        elif section in _ARGS_SECTIONS and stripped:
            entry_indent = indent if entry_indent is None else entry_indent
            entry = _ENTRY.match(stripped)
            if indent == entry_indent and entry:
                current = entry.group(1).lstrip("*")
                params[current] = entry.group(3).strip()
            elif current is not None:
                params[current] = f"{params[current]} {stripped}".strip()
    return "\n".join(summary).strip(), params


def _arguments_model(
    function: Callable[..., Any], name: str, docs: dict[str, str]
) -> type[BaseModel]:
    """The pydantic model of a function's parameters (extra arguments forbidden).

    Raises UsageError for a parameter without a type annotation or a ``*args``/``**kwargs``
    one (the model could not be told what to pass)."""
    signature = inspect.signature(function)  # a partial's: the parameters it leaves
    annotated: Any = function.func if isinstance(function, functools.partial) else function
    if not (inspect.isfunction(annotated) or inspect.ismethod(annotated)):
        annotated = type(annotated).__call__  # a callable object
    try:
        hints = typing.get_type_hints(annotated, include_extras=True)
    except (NameError, TypeError) as exc:
        raise UsageError(f"tool {name!r}: cannot resolve its parameter types ({exc})") from None
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UsageError(
                f"tool {name!r}: parameter {param.name!r} is *args/**kwargs; a tool's "
                "parameters must be named and typed, so the model knows what to pass"
            )
        if param.name not in hints:
            raise UsageError(
                f"tool {name!r}: parameter {param.name!r} has no type annotation; annotate it "
                "(e.g. city: str) so the model knows what to pass"
            )
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], Field(default, description=docs.get(param.name)))
    model: type[BaseModel] = create_model(
        f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


class Tool:
    """A tool the model may call: a typed Python function (``pk.Tool(get_weather)``) or a
    pydantic model (``pk.Tool(Weather)``: its fields are the arguments; there is nothing to run,
    the validated call is the result).

    ``name`` defaults to the function's or model's name, ``description`` to its docstring's
    description (a function's ``Args:`` entries describe its parameters). ``spec`` is what the
    model sees: the name, the description and the arguments' JSON schema, by pydantic.

    Raises UsageError for something that is neither, a name the OpenAI API would refuse
    (1-64 letters, digits, ``_`` or ``-``), or a function parameter without a type annotation.
    """

    def __init__(
        self,
        target: Callable[..., Any] | type[BaseModel],
        *,
        name: str | None = None,
        description: str | None = None,
    ):
        self.function: Callable[..., Any] | None
        if isinstance(target, type) and issubclass(target, BaseModel):
            own_doc = target.__doc__ if "__doc__" in vars(target) else None
            summary, _ = _docstring(own_doc or "")
            self.name = name or target.__name__
            self.function = None
            self.arguments_type: type[BaseModel] = target
        elif callable(target) and not isinstance(target, type):
            summary, docs = _docstring(inspect.getdoc(target) or "")
            self.name = name or str(getattr(target, "__name__", ""))
            if not self.name:
                raise UsageError(
                    f"{target!r} has no __name__; give the tool one: pk.Tool(fn, name=...)"
                )
            self.function = target
            self.arguments_type = _arguments_model(target, self.name, docs)
        else:
            raise UsageError(
                f"pk.Tool takes a typed function or a pydantic model class, got {target!r}"
            )
        self.description = summary if description is None else description
        problems = [p for p in check_tools([self.spec], "auto") if "tool name" in p]
        if problems:
            raise UsageError(problems[0])

    def __repr__(self) -> str:
        kind = "function" if self.function is not None else "model"
        return f"<Tool {self.name!r} ({kind})>"

    @property
    def spec(self) -> ToolSpec:
        """The tool as a request offers it (name, description, arguments' JSON schema)."""
        schema = self.arguments_type.model_json_schema()
        return ToolSpec(self.name, self.description, schema)

    def validate(self, arguments: str) -> BaseModel:
        """The call's arguments (JSON text) validated into the arguments model.

        Raises OutputParseError saying what is wrong (the run loop sends it back to the model).
        """
        try:
            return self.arguments_type.model_validate_json(arguments or "{}")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            raise OutputParseError(
                f"the arguments of tool {self.name!r} do not validate: {problems}",
                raw_text=arguments,
            ) from None

    def __call__(self, arguments: BaseModel) -> Any:
        """Run the function with validated arguments (its exceptions propagate).

        Raises UsageError for a tool made from a model (nothing to run)."""
        if self.function is None:
            raise UsageError(
                f"tool {self.name!r} is a pydantic model, so there is nothing to run; give "
                "pk.Tool a function to use it with run_tools=True"
            )
        values = {field: getattr(arguments, field) for field in type(arguments).model_fields}
        return self.function(**values)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: the tool's ``name``, its ``arguments`` validated into the tool's
    arguments model, the call's ``id``, the :class:`Tool` itself, and ``raw`` (the call as the
    model wrote it)."""

    name: str
    arguments: BaseModel
    id: str
    tool: Tool
    raw: FunctionCall

    def run(self) -> Any:
        """Run the tool with these arguments (see :meth:`Tool.__call__`)."""
        return self.tool(self.arguments)


@dataclass(frozen=True)
class ToolStep:
    """One round of a run with ``run_tools=True``: the calls the model made, what each tool
    returned, and the text each result went back to the model as."""

    calls: tuple[ToolCall, ...]
    results: tuple[Any, ...]
    texts: tuple[str, ...]


def result_text(call: ToolCall, value: Any) -> str:
    """A tool's return value as the text of its tool message: a string as it is, anything else
    as JSON. Raises UsageError for a value that cannot be JSON."""
    if isinstance(value, str):
        return value
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError as exc:
        raise UsageError(
            f"tool {call.name!r} returned a {type(value).__name__}, which cannot be sent to the "
            f"model as JSON ({exc}); return a string, a pydantic model or JSON data"
        ) from None


def tool_messages(completion: Completion, replies: Sequence[tuple[str, str]]) -> list[Message]:
    """The assistant's message with its calls, then one tool message per ``(call id, text)``."""
    said = Message(role="assistant", content=completion.text)
    said["tool_calls"] = [call.as_data() for call in completion.tool_calls]
    answers = []
    for call_id, text in replies:
        answer = Message(role="tool", content=text)
        answer["tool_call_id"] = call_id
        answers.append(answer)
    return [said, *answers]


class ToolSet:
    """The tools a run offers and how (see the module docstring).

    Raises UsageError for tools that are not :class:`Tool` s, repeated names, a ``tool_choice``
    that names no tool, ``run_tools`` with a tool that has nothing to run, or a ``max_steps``
    that is not a positive integer.
    """

    def __init__(
        self,
        tools: Sequence[Tool],
        choice: ToolChoice | Tool = "auto",
        *,
        run: bool = False,
        max_steps: int = 10,
    ):
        if isinstance(tools, Tool) or not all(isinstance(t, Tool) for t in tools):
            raise UsageError("tools must be a list of pk.Tool (wrap functions: pk.Tool(fn))")
        self.choice: ToolChoice = choice.name if isinstance(choice, Tool) else choice
        self.tools = {t.name: t for t in tools}
        problems = check_tools([t.spec for t in tools], self.choice) if tools else []
        if not tools:
            problems.append("tools is empty; give at least one pk.Tool (or leave tools out)")
        if problems:
            raise UsageError("invalid tools: " + "; ".join(problems))
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise UsageError(f"max_steps must be a positive integer, got {max_steps!r}")
        if run:
            models = [t.name for t in tools if t.function is None]
            if models:
                raise UsageError(
                    f"run_tools=True runs the tools, but {', '.join(models)} has no function "
                    "(made from a pydantic model); give functions, or run_tools=False"
                )
        self.run = run
        self.max_steps = max_steps
        self.specs = tuple(t.spec for t in tools)

    def reserved_tokens(self, backend: Backend) -> int:
        """Tokens the tools take in a prompt to ``backend`` (their description, as a model
        without a tools slot sees it; APIs count tool definitions as prompt tokens too), so
        that demonstrations are dropped to make room for them."""
        return backend.count_tokens(tools_system_text(self.specs, self.choice))

    def calls(self, completion: Completion, choice: ToolChoice) -> tuple[ToolCall, ...]:
        """The completion's calls, validated against ``choice`` (the run's ``tool_choice``, or
        ``"auto"`` after a round of calls); () when it answered instead (and may).

        Raises OutputParseError for an unknown tool, arguments that do not validate, a call
        when ``tool_choice="none"``, a call to another tool than the one named, or an answer
        when a call is required.
        """
        raw = completion.tool_calls
        if not raw:
            if choice not in ("auto", "none"):
                wanted = "one of the tools" if choice == "required" else choice
                cut = completion.finish_reason == "length"
                raise OutputParseError(
                    f"the answer stopped at max_tokens before a call to {wanted} was complete; "
                    "raise max_tokens"
                    if cut
                    else f"the model answered instead of calling {wanted}; call it",
                    raw_text=completion.text,
                )
            return ()
        if choice == "none":
            raise OutputParseError(
                "the model called a tool, but tool_choice='none'; answer instead",
                raw_text=completion.text,
            )
        calls = []
        for call in raw:
            tool = self.tools.get(call.name)
            if tool is None or choice not in (*CHOICE_KEYWORDS, call.name):
                allowed = list(self.tools) if choice in CHOICE_KEYWORDS else [choice]
                raise OutputParseError(
                    f"the model called {call.name!r}, which is not a tool it may call; "
                    f"call one of {allowed}",
                    raw_text=json.dumps({"name": call.name, "arguments": call.arguments}),
                )
            calls.append(ToolCall(call.name, tool.validate(call.arguments), call.id, tool, call))
        return tuple(calls)


class ToolOptions(TypedDict, total=False):
    """The tool keywords of ``Prompt.run`` / ``arun`` (and ``run_batch``)."""

    tools: Sequence[Tool] | None  # the tools the model may call
    # "auto" (answer or call), "required" (call one), "none" (answer), or the tool to call
    tool_choice: ToolChoice | Tool
    run_tools: bool  # run the calls and send back their results until the model answers
    max_steps: int  # the most rounds of calls with run_tools (MaxStepsError past them)


def tool_set(
    tools: Sequence[Tool] | None = None,
    tool_choice: ToolChoice | Tool = "auto",
    run_tools: bool = False,
    max_steps: int = 10,
) -> ToolSet | None:
    """A run's :class:`ToolSet`, or None for a run without tools (which takes no tool options:
    UsageError for ``run_tools`` or a ``tool_choice`` without them)."""
    if tools is None:
        if run_tools or tool_choice != "auto":
            raise UsageError("run_tools and tool_choice need tools=[pk.Tool(...), ...]")
        return None
    return ToolSet(tools, tool_choice, run=run_tools, max_steps=max_steps)


def run_calls(calls: Sequence[ToolCall]) -> list[Any]:
    """Run the calls in order; their results. Raises UsageError for an async tool (which
    needs ``arun``), and whatever a tool raises."""
    results = []
    for call in calls:
        value = call.run()
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise UsageError(f"tool {call.name!r} is async; run the prompt with arun()")
        results.append(value)
    return results


async def arun_calls(calls: Sequence[ToolCall]) -> list[Any]:
    """Run the calls in order, awaiting async tools; their results."""
    results = []
    for call in calls:
        value = call.run()
        results.append(await value if inspect.isawaitable(value) else value)
    return results
