from __future__ import annotations

import asyncio
import threading
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel

import promptkit as pk
from promptkit.backends import GenerationConfig, ScriptedBackend
from promptkit.errors import BackendError, InputValidationError, OutputValidationError, UsageError


class Person(BaseModel):
    name: str
    age: int


def extractor(**overrides):
    options = dict(instruction="Extract the person.", query="Text: {{ text }}", output_type=Person)
    options.update(overrides)
    return pk.Prompt(**options)


def test_first_valid_answer_is_returned_with_its_attempt():
    backend = ScriptedBackend(['{"name": "Ada", "age": 36}'])
    result = extractor().run({"text": "Ada is 36"}, backend=backend)
    assert result.output == Person(name="Ada", age=36)
    assert result.text == '{"name": "Ada", "age": 36}'
    assert len(result.attempts) == 1 and result.attempts[0].error is None
    assert result.attempts[0].prompt == backend.requests[0].prompt
    assert result.usage.completion_tokens == 4 and result.usage.prompt_tokens > 0
    assert result.latency_s >= 0 and result.examples_used == 0


def test_chat_reask_sends_the_error_back_as_a_follow_up_message():
    backend = ScriptedBackend(
        ["I think Ada, 36", '{"name": "Ada", "age": "36 years"}', '{"name": "Ada", "age": 36}']
    )
    result = extractor().run({"text": "Ada is 36"}, backend=backend)
    assert result.output.age == 36 and len(result.attempts) == 3
    assert [a.error is None for a in result.attempts] == [False, False, True]
    second = backend.requests[1].prompt
    assert second[-2] == {"role": "assistant", "content": "I think Ada, 36"}
    assert second[-1]["role"] == "user" and "no JSON object found" in second[-1]["content"]
    third = backend.requests[2].prompt
    assert "age: Input should be a valid integer" in third[-1]["content"]
    assert result.usage == sum((a.usage for a in result.attempts), pk.backends.Usage())


def test_completion_reask_retries_with_a_raised_temperature_and_new_seed():
    backend = ScriptedBackend(["nope", '{"name": "Bo", "age": 1}'], chat=False)
    config = GenerationConfig(max_tokens=20, temperature=0, seed=5)
    result = extractor().run({"text": "x"}, backend=backend, config=config)
    assert result.output.name == "Bo"
    first, second = backend.requests
    assert isinstance(first.prompt, str) and first.prompt == second.prompt
    assert first.config.temperature == 0 and second.config.temperature == 0.7
    assert second.config.seed == 6


def test_out_of_attempts_raises_with_every_attempt_and_the_last_text():
    backend = ScriptedBackend(["one", "two"])
    with pytest.raises(OutputValidationError) as info:
        extractor().run({"text": "x"}, backend=backend, max_attempts=2)
    error = info.value
    assert [a.text for a in error.attempts] == ["one", "two"]
    assert all(a.error for a in error.attempts)
    assert error.raw_text == "two" and "after 2 attempt(s)" in str(error)


def test_run_uses_the_form_the_backend_speaks():
    prompt = extractor(style="chat")
    backend = ScriptedBackend(['{"name": "A", "age": 1}'], chat=False)
    prompt.run({"text": "x"}, backend=backend)
    assert backend.requests[0].prompt == prompt.render({"text": "x"}, style="completion")


def test_completion_runs_with_demonstrations_stop_at_the_separator():
    prompt = pk.Prompt(
        query="Q: {{ q }}\nA:",
        output_type=Literal["yes", "no"],
        style="completion",
        examples=[pk.Example(input={"q": "Is ice cold?"}, output="yes")],
    )
    backend = ScriptedBackend(["no\n\nQ: Is fire cold?\nA: no"])
    result = prompt.run({"q": "Is the sun cold?"}, backend=backend)
    assert result.output == "no" and backend.requests[0].config.stop == ("\n\n",)
    assert result.examples_used == 1


def test_prompt_config_is_the_default_and_run_config_wins():
    prompt = extractor(config=GenerationConfig(max_tokens=7))
    backend = ScriptedBackend(['{"name": "A", "age": 1}'] * 2)
    prompt.run({"text": "x"}, backend=backend)
    prompt.run({"text": "x"}, backend=backend, config=GenerationConfig(max_tokens=9))
    assert [r.config.max_tokens for r in backend.requests] == [7, 9]


def test_bad_arguments_are_usage_errors():
    backend = ScriptedBackend([])
    with pytest.raises(UsageError, match="max_attempts"):
        extractor().run({"text": "x"}, backend=backend, max_attempts=0)
    with pytest.raises(InputValidationError):
        extractor().run({}, backend=backend)
    assert backend.requests == []


def test_backend_errors_propagate_unchanged():
    backend = ScriptedBackend([BackendError("overloaded", backend="x", retryable=True)])
    with pytest.raises(BackendError) as info:
        extractor().run({"text": "x"}, backend=backend)
    assert info.value.retryable


def test_arun_matches_run():
    backend = ScriptedBackend(["bad", '{"name": "Ada", "age": 36}'])
    result = asyncio.run(extractor().arun({"text": "x"}, backend=backend))
    assert result.output.name == "Ada" and len(result.attempts) == 2


def test_run_batch_keeps_order_and_bounds_concurrency():
    active, peak, lock = 0, 0, threading.Lock()
    gate = threading.Barrier(2, timeout=5)

    def reply(request):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        gate.wait()  # two requests must be in flight at once
        with lock:
            active -= 1
        text = request.prompt[-1]["content"].removeprefix("Text: ")
        return f'{{"name": "{text}", "age": 1}}'

    backend = ScriptedBackend([reply] * 6)
    results = extractor().run_batch(
        [{"text": f"p{i}"} for i in range(6)], backend=backend, concurrency=2
    )
    assert [r.output.name for r in results] == [f"p{i}" for i in range(6)]
    assert peak == 2


def test_run_batch_can_return_errors_in_place():
    backend = ScriptedBackend(['{"name": "A", "age": 1}', "junk"])
    prompt = extractor()
    results = prompt.run_batch(
        [{"text": "a"}, {"text": "b"}],
        backend=backend,
        concurrency=1,
        return_exceptions=True,
        max_attempts=1,
    )
    assert results[0].output.name == "A"
    assert isinstance(results[1], OutputValidationError)
    with pytest.raises(UsageError):
        prompt.run_batch([], backend=backend, concurrency=0)


def test_arun_batch_bounds_concurrency():
    peak = active = 0

    class SlowBackend(ScriptedBackend):
        async def agenerate(self, prompt, config=None):
            nonlocal peak, active
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            return self.generate(prompt, config)

    backend = SlowBackend(['{"name": "A", "age": 1}'] * 5)
    results = asyncio.run(
        extractor().arun_batch([{"text": "x"}] * 5, backend=backend, concurrency=3)
    )
    assert len(results) == 5 and peak == 3


class Pick(BaseModel):
    model_config = {"extra": "forbid"}
    index: int


def test_typed_prompt_with_pydantic_instance_input():
    class In(BaseModel):
        text: str

    prompt = pk.Prompt(query="{{ text }}", input_type=In, output_type=Pick)
    result = prompt.run(In(text="hi"), backend=ScriptedBackend(['{"index": 2}']))
    assert result.output == Pick(index=2)


class Quoted(BaseModel):
    name: Annotated[str, pk.SpanOf("text")]
    age: int


def test_an_answer_not_copied_from_the_input_is_re_asked_with_the_reason():
    backend = ScriptedBackend(['{"name": "Ada Lovelace", "age": 36}', '{"name": "Ada", "age": 36}'])
    prompt = extractor(output_type=Quoted)
    result = prompt.run({"text": "Ada is 36"}, backend=backend)
    assert result.output == Quoted(name="Ada", age=36)
    first = result.attempts[0].error or ""
    assert "name: 'Ada Lovelace' does not occur in the input 'text'" in first
    assert first in backend.requests[1].prompt[-1]["content"]


def test_spans_must_name_an_input_and_examples_must_copy_from_theirs():
    with pytest.raises(pk.errors.TemplateError, match="'text', which is not an input; inputs: q"):
        pk.Prompt(query="{{ q }}", output_type=Quoted)
    good = pk.Example(input={"text": "Bo, 5"}, output={"name": "Bo", "age": 5})
    assert extractor(output_type=Quoted, examples=[good]).examples == (good,)
    bad = pk.Example(input={"text": "Bo, 5"}, output={"name": "Bob", "age": 5})
    with pytest.raises(InputValidationError, match="(?s)example 1 output .*'Bob' does not occur"):
        extractor(output_type=Quoted, examples=[good, bad])
