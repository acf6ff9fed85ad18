"""Static typing checks, run by mypy in CI (.ci/run): the output type flows to result.output."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from typing_extensions import assert_type

import promptkit as pk
from promptkit.backends import ScriptedBackend


class Person(BaseModel):
    name: str


def check() -> None:
    backend = ScriptedBackend([])
    typed = pk.Prompt(query="{{ text }}", output_type=Person)
    assert_type(typed, pk.Prompt[Person])
    assert_type(typed.run({"text": "x"}, backend=backend).output, Person)
    plain = pk.Prompt(query="{{ text }}")
    assert_type(plain.run({"text": "x"}, backend=backend).output, str)
    number = pk.Prompt(query="{{ text }}", output_type=int)
    assert_type(number.run({"text": "x"}, backend=backend).output, int)
    code = pk.Prompt(query="{{ text }}", output_type=pk.Regex(r"[A-Z]{3}"))
    assert_type(code.run({"text": "x"}, backend=backend).output, str)
    yes_no = pk.Prompt(query="{{ text }}", output_type=pk.Lark('start: "yes" | "no"'))
    assert_type(yes_no, pk.Prompt[str])
    labels = pk.Prompt(query="{{ text }}", output_type=Literal["a", "b"])
    assert_type(labels, pk.Prompt[Any])
    counted = pk.Prompt(query="{{ text }}", output_type=int, check=positive)
    assert_type(counted, pk.Prompt[int])
    labelled = pk.Prompt(query="{{ text }}", check=lambda inputs, out: bool(out.strip()))
    assert_type(labelled, pk.Prompt[str])
    tool = pk.Tool(positive)
    called = typed.run({"text": "x"}, backend=backend, tools=[tool], tool_choice="required")
    assert_type(called.tool_calls, tuple[pk.ToolCall, ...])
    assert_type(called.tool_steps, tuple[pk.ToolStep, ...])


async def streamed() -> None:
    backend = ScriptedBackend([])
    typed = pk.Prompt(query="{{ text }}", output_type=Person)
    for event in typed.stream({"text": "x"}, backend=backend):
        assert_type(event, pk.StreamEvent[Person])
        if event.result is not None:
            assert_type(event.result.output, Person)
    async for later in typed.astream({"text": "x"}, backend=backend):
        assert_type(later, pk.StreamEvent[Person])


def positive(inputs: Any, out: int) -> bool:
    return out > 0


def refused() -> None:
    """Prompt's options are typed through its overloads: a wrong value or an unknown name is
    a type error (an unused ignore below fails mypy, so these lines check it)."""
    pk.Prompt(query="{{ text }}", shots="all")  # type: ignore[call-overload]
    pk.Prompt(query="{{ text }}", output_type=int, stlye="chat")  # type: ignore[call-overload]
    pk.Prompt(query="{{ text }}", output_type=pk.Regex("a"), style="prose")  # type: ignore[call-overload]


def attempts_of(error: pk.errors.OutputValidationError) -> None:
    first = error.attempts[0]
    assert_type(first.text, str)
    assert_type(first.error, str | None)
    assert_type(first.usage.prompt_tokens, int)
    attempt: pk.errors.AttemptRecord = pk.Attempt(
        prompt="x", text="y", error=None, usage=pk.backends.Usage(1, 2), latency_s=0.1
    )
    assert_type(attempt.usage.total_tokens, int)
