"""Function calling at the backend level: the tools a request offers and the calls a model makes.

A request offers tools through :class:`~promptkit.backends.GenerationConfig` (``tools``: a
:class:`ToolSpec` each, ``tool_choice``); an answer that calls them carries
:class:`FunctionCall` s in ``Completion.tool_calls``. Backends whose API calls tools natively
(the OpenAI API, Azure) declare the ``tools`` capability and pass them through. Backends with
token masks (scratch, hf) get them *emulated*, once for all of them (``Backend.generate``,
with the pieces here):

* the tools are shown to the model in its chat template's ``tools`` slot when it has one
  (capability ``tool_template``), else in the system message (:func:`tools_system_text`);
* decoding is constrained to one call written ``<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>``: a tool's name from the list and its arguments by its JSON schema, so even a
  model with random weights makes a valid call; with ``tool_choice="auto"`` the grammar allows
  the answer instead (the output type's grammar, or free text);
* the text is parsed back into a :class:`FunctionCall` (:func:`parse_emulated`).

Conversations that carry calls and their results (assistant messages with ``tool_calls``,
``tool`` messages) go to a model without a tools slot as plain text
(:func:`~promptkit.backends._messages.plain_messages`).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from .._grammar import Grammar
from ..errors import ConstraintError
from ._messages import CALL_CLOSE, CALL_OPEN, Message, ToolCallData

__all__ = [
    "CHOICE_KEYWORDS",
    "FunctionCall",
    "ToolChoice",
    "ToolSpec",
    "check_tools",
    "emulation_grammar",
    "parse_emulated",
    "template_messages",
    "template_tools",
    "tools_system_text",
    "with_tools_in_system",
]

# "auto" (the model answers or calls), "required" (it must call one), "none" (it must answer),
# or the name of the one tool it must call.
ToolChoice = Union[Literal["auto", "required", "none"], str]
CHOICE_KEYWORDS = ("auto", "required", "none")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the OpenAI API accepts as a function name


@dataclass(frozen=True)
class ToolSpec:
    """One tool offered to the model: its name, what it is for, and its arguments' JSON schema
    (an object). :class:`promptkit.Tool` builds one from a function or a pydantic model."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})

    def __hash__(self) -> int:
        """Hashable like the rest of a GenerationConfig (which groups requests by config)."""
        schema = json.dumps(self.parameters, sort_keys=True, default=str)
        return hash((self.name, self.description, schema))

    def as_openai(self) -> dict[str, Any]:
        """The tool as the OpenAI API (and chat templates' ``tools`` slot) write it."""
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class FunctionCall:
    """One call a model made: the tool's name, its arguments as the JSON text the model wrote
    (raw: :class:`promptkit.ToolCall` holds them validated), and the call's id."""

    name: str
    arguments: str
    id: str

    def as_data(self) -> ToolCallData:
        return ToolCallData(id=self.id, name=self.name, arguments=self.arguments)


def check_tools(tools: Sequence[ToolSpec], choice: ToolChoice) -> list[str]:
    """Problems with a request's tools and tool_choice, as sentences (none when valid)."""
    problems = []
    names = [t.name for t in tools if isinstance(t, ToolSpec)]
    if len(names) != len(tools):
        problems.append("tools must hold ToolSpec entries (build them with pk.Tool)")
    for name in names:
        if not _NAME.match(name):
            problems.append(
                f"tool name {name!r} must be 1 to 64 letters, digits, '_' or '-' (the OpenAI rule)"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"tool names must be unique, {', '.join(duplicates)} repeats")
    if not isinstance(choice, str):
        problems.append(
            f"tool_choice must be 'auto', 'required', 'none' or a tool's name, got {choice!r}"
        )
    elif choice not in CHOICE_KEYWORDS and choice not in names:
        problems.append(
            f"tool_choice {choice!r} names no offered tool; choose one of {names} or "
            "'auto', 'required', 'none'"
        )
    elif choice == "required" and not tools:
        problems.append("tool_choice='required' needs at least one tool")
    return problems


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": dict(tool.parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def emulation_grammar(
    tools: Sequence[ToolSpec], choice: ToolChoice, answer: Grammar | None
) -> Grammar | None:
    """The grammar of one emulated call (``<tool_call>`` JSON ``</tool_call>``) to the tools
    ``choice`` allows; with ``"auto"``, or an answer: ``answer``'s grammar (free text when
    None). None for ``"none"`` (the answer's grammar applies alone then: the caller keeps it).

    Raises ConstraintError for an answer grammar that cannot be an alternative to a call (a
    Lark grammar: give it as tool_choice='required' or without tools).
    """
    offered = [t for t in tools if choice in ("auto", "required") or t.name == choice]
    schemas = [_call_schema(t) for t in offered]
    schema: dict[str, Any] = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    schema = {**schema, "x-guidance": {"whitespace_flexible": False}}
    rules = [f'call: "{CALL_OPEN}" %json {json.dumps(schema, ensure_ascii=False)} "{CALL_CLOSE}"']
    if choice != "auto":
        return Grammar("lark", "start: call\n" + "\n".join(rules) + "\n")
    rules.append(f"answer: {_answer_rule(answer)}")
    return Grammar("lark", "start: call | answer\n" + "\n".join(rules) + "\n")


def _answer_rule(answer: Grammar | None) -> str:
    """The Lark rule body of an answer that may stand instead of a call."""
    if answer is None:
        return "/(?s:.*)/"
    space = '" "? ' if answer.leading_space else ""
    if answer.kind == "json_schema":
        schema = {**json.loads(answer.source), "x-guidance": {"whitespace_flexible": False}}
        return f"{space}%json {json.dumps(schema, ensure_ascii=False)}"
    if answer.kind == "choice":
        return (
            space + "(" + " | ".join(json.dumps(label) for label in json.loads(answer.source)) + ")"
        )
    if answer.kind == "regex":
        return space + "/" + answer.source.replace("/", "\\/") + "/"
    raise ConstraintError(
        "a Lark output type cannot be an alternative to a tool call on a backend that emulates "
        "tools; run with tool_choice='required' (a call) or without tools (an answer)",
        feature="lark answer with tool_choice='auto'",
    )


def parse_emulated(text: str) -> FunctionCall | None:
    """The call in an emulated answer (``<tool_call>`` JSON ``</tool_call>``), or None when the
    text is an answer. The call gets a fresh id (``call_`` and 24 hex digits, as the APIs'
    are unique), so that rounds of calls in one conversation never share one."""
    stripped = text.strip()
    if not (stripped.startswith(CALL_OPEN) and stripped.endswith(CALL_CLOSE)):
        return None
    body = stripped[len(CALL_OPEN) : -len(CALL_CLOSE)]
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", {})
    return FunctionCall(
        name=data["name"],
        arguments=json.dumps(arguments, ensure_ascii=False),
        id=f"call_{secrets.token_hex(12)}",
    )


def tools_system_text(tools: Sequence[ToolSpec], choice: ToolChoice) -> str:
    """What a model without a tools slot is told about the tools (in the system message)."""
    listed = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    if choice == "auto":
        rule = "Answer directly, or call one tool"
    elif choice == "required":
        rule = "Call one tool"
    else:
        rule = f"Call the tool {choice}"
    return (
        f"You can call these tools:\n{listed}\n{rule} by writing "
        f'{CALL_OPEN}{{"name":<tool name>,"arguments":<arguments as JSON>}}{CALL_CLOSE}'
    )


def with_tools_in_system(
    prompt: str | Sequence[Message], tools: Sequence[ToolSpec], choice: ToolChoice
) -> str | list[Message]:
    """``prompt`` with the tools described in its system message (one added when it has none;
    a text prompt gets the description above it)."""
    text = tools_system_text(tools, choice)
    if isinstance(prompt, str):
        return f"{text}\n\n{prompt}"
    messages = list(prompt)
    if messages and messages[0]["role"] == "system":
        first = Message(role="system", content=f"{messages[0]['content']}\n\n{text}")
        return [first, *messages[1:]]
    return [Message(role="system", content=text), *messages]


def template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as chat templates with a tools slot read them (transformers' convention): an
    assistant's calls as ``{"type": "function", "function": {"name", "arguments": {...}}}``."""
    shaped: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            item["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": _arguments(c["arguments"])},
                }
                for c in m["tool_calls"]
            ]
        if "tool_call_id" in m:
            item["tool_call_id"] = m["tool_call_id"]
        shaped.append(item)
    return shaped


def template_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """The tools as chat templates' ``tools`` variable holds them."""
    return [t.as_openai() for t in tools]


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
