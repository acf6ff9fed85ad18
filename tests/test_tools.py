"""Tools (function calling): pk.Tool from functions and models, typed and validated calls,
run_tools rounds until an answer, MaxStepsError, and how each kind of backend gets the tools."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

import promptkit as pk
from promptkit.backends import (
    Backend,
    Capabilities,
    Completion,
    FunctionCall,
    GenerationConfig,
    ScriptedBackend,
    ToolSpec,
)
from promptkit.backends._base import check_messages, messages_to_text
from promptkit.errors import (
    ConfigurationError,
    ConstraintError,
    InputValidationError,
    MaxStepsError,
    OutputValidationError,
    UnsupportedCapabilityError,
    UsageError,
)


def get_weather(city: str, days: int = 3) -> str:
    """Get the weather forecast for a city.

    Args:
        city: The city's name,
            in English.
        days (int): How many days ahead.

    Returns:
        The forecast.
    """
    return f"sunny in {city} for {days} days"


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: Annotated[int, Field(ge=0)]


WEATHER = pk.Tool(get_weather)
PERSON = pk.Tool(Person)
PROMPT = pk.Prompt(query="Weather in {{ city }}?")


def call(name: str, arguments: Any, id: str = "call_1") -> FunctionCall:
    return FunctionCall(name=name, arguments=json.dumps(arguments), id=id)


# -- pk.Tool ----------------------------------------------------------------------------------


def test_a_function_tool_has_pydantics_schema_and_its_docstrings_descriptions():
    spec = WEATHER.spec
    assert spec.name == "get_weather"
    assert spec.description == "Get the weather forecast for a city."
    properties = spec.parameters["properties"]
    assert properties["city"] == {
        "description": "The city's name, in English.",
        "title": "City",
        "type": "string",
    }
    assert properties["days"]["default"] == 3
    assert properties["days"]["description"] == "How many days ahead."
    assert spec.parameters["required"] == ["city"]
    assert spec.parameters["additionalProperties"] is False


def test_a_model_tool_uses_the_models_schema_and_docstring():
    assert PERSON.spec.name == "Person"
    assert PERSON.spec.description == "A person mentioned in the text."
    assert PERSON.spec.parameters == Person.model_json_schema()
    assert pk.Tool(Person, name="person", description="x").spec.name == "person"


def untyped(city, days: int) -> str:  # type: ignore[no-untyped-def]
    return city


def star(*cities: str) -> str:
    return ""


@pytest.mark.parametrize(
    "target, message",
    [
        (untyped, "parameter 'city' has no type annotation"),
        (star, "parameter 'cities' is \\*args"),
        (42, "takes a typed function or a pydantic model"),
        (str, "takes a typed function or a pydantic model"),
    ],
)
def test_a_tool_that_cannot_be_described_is_a_usage_error(target, message):
    with pytest.raises(UsageError, match=message):
        pk.Tool(target)


def test_a_tool_name_the_api_would_refuse_is_a_usage_error():
    with pytest.raises(UsageError, match="tool name 'get weather' must be 1 to 64"):
        pk.Tool(get_weather, name="get weather")
    weekly = functools.partial(get_weather, days=7)
    with pytest.raises(UsageError, match="has no __name__; give the tool one"):
        pk.Tool(weekly)
    assert pk.Tool(weekly, name="weekly").spec.parameters["properties"]["days"]["default"] == 7


def test_a_callable_object_is_a_tool_too():
    class Adder:
        def __call__(self, a: int, b: int) -> int:
            return a + b

    tool = pk.Tool(Adder(), name="add")
    assert tool.spec.parameters["required"] == ["a", "b"]
    assert tool(tool.validate('{"a": 1, "b": 2}')) == 3


def test_arguments_that_do_not_validate_say_which_and_why():
    with pytest.raises(pk.errors.OutputParseError, match="get_weather.*days: Input should be"):
        WEATHER.validate('{"city": "Oslo", "days": "many"}')
    with pytest.raises(pk.errors.OutputParseError, match="extra|Extra"):
        WEATHER.validate('{"city": "Oslo", "country": "NO"}')


# -- run(tools=...) on a backend that calls tools natively --------------------------------------


def test_a_call_comes_back_typed_and_validated_with_the_tools_offered():
    backend = ScriptedBackend([call("get_weather", {"city": "Oslo"})], tools=True)
    result = PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER, PERSON])
    assert result.output is None
    (made,) = result.tool_calls
    assert made.name == "get_weather" and made.id == "call_1"
    assert made.arguments == WEATHER.arguments_type(city="Oslo", days=3)
    assert made.run() == "sunny in Oslo for 3 days"
    config = backend.requests[0].config
    assert config.tools == (WEATHER.spec, PERSON.spec) and config.tool_choice == "auto"
    assert result.attempts[0].tool_calls == (made.raw,)
    assert result.messages[-1].tool_calls[0].name == "get_weather"


def test_a_text_answer_is_the_output_when_the_model_may_answer():
    backend = ScriptedBackend(["It is sunny."], tools=True)
    result = PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER])
    assert result.output == "It is sunny." and result.tool_calls == ()


def test_a_model_tool_gives_the_model_instance():
    backend = ScriptedBackend([call("Person", {"name": "Ada", "age": 36})], tools=True)
    result = PROMPT.run({"city": "x"}, backend=backend, tools=[PERSON], tool_choice=PERSON)
    assert result.tool_calls[0].arguments == Person(name="Ada", age=36)
    assert backend.requests[0].config.tool_choice == "Person"


def test_bad_arguments_are_sent_back_as_the_calls_tool_message_and_asked_again():
    backend = ScriptedBackend(
        [
            call("Person", {"name": "Ada", "age": -1}, "c1"),
            call("Person", {"name": "Ada", "age": 1}),
        ],
        tools=True,
    )
    result = PROMPT.run({"city": "x"}, backend=backend, tools=[PERSON])
    assert result.tool_calls[0].arguments == Person(name="Ada", age=1)
    first, accepted = result.attempts
    assert accepted.error is None
    assert "age: Input should be greater than or equal to 0" in (first.error or "")
    assert first.tool_calls[0].arguments == '{"name": "Ada", "age": -1}'  # raw, kept
    *_, said, reply = backend.requests[1].prompt
    assert said["tool_calls"] == [
        {"id": "c1", "name": "Person", "arguments": '{"name": "Ada", "age": -1}'}
    ]
    assert reply["role"] == "tool" and reply["tool_call_id"] == "c1"
    assert reply["content"].startswith("error: the arguments of tool 'Person' do not validate")
    assert len(result.messages) == 2  # the re-ask is in attempts, not the conversation


def test_an_unknown_tool_and_a_missing_required_call_are_re_asked_then_fail_with_attempts():
    backend = ScriptedBackend([call("delete_all", {}), "Just text."], tools=True)
    with pytest.raises(OutputValidationError) as caught:
        PROMPT.run(
            {"city": "x"}, backend=backend, tools=[WEATHER], tool_choice="required", max_attempts=2
        )
    first, second = caught.value.attempts
    assert "called 'delete_all', which is not a tool it may call" in (first.error or "")
    assert "answered instead of calling one of the tools" in (second.error or "")
    assert caught.value.raw_text == "Just text."


def test_a_call_when_tool_choice_is_none_is_refused():
    backend = ScriptedBackend([call("get_weather", {"city": "x"}), "fine"], tools=True)
    result = PROMPT.run({"city": "x"}, backend=backend, tools=[WEATHER], tool_choice="none")
    assert result.output == "fine"
    assert "tool_choice='none'" in (result.attempts[0].error or "")


# -- run_tools=True ----------------------------------------------------------------------------


def test_run_tools_feeds_results_back_as_tool_messages_until_an_answer():
    backend = ScriptedBackend(
        [call("get_weather", {"city": "Oslo", "days": 1}, "c1"), "Sunny tomorrow."], tools=True
    )
    result = PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER], run_tools=True)
    assert result.output == "Sunny tomorrow."
    (step,) = result.tool_steps
    assert step.results == ("sunny in Oslo for 1 days",) and step.calls[0].id == "c1"
    sent = backend.requests[1].prompt
    assert sent[-1] == {"role": "tool", "content": "sunny in Oslo for 1 days", "tool_call_id": "c1"}
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert result.attempts[0].error is None and len(result.attempts) == 2


def test_non_text_results_go_back_as_json():
    def lookup(name: str) -> dict[str, Any]:
        return {"name": name, "age": 36}

    backend = ScriptedBackend([call("lookup", {"name": "Ada"}), "36"], tools=True)
    PROMPT.run({"city": "x"}, backend=backend, tools=[pk.Tool(lookup)], run_tools=True)
    assert json.loads(backend.requests[1].prompt[-1]["content"]) == {"name": "Ada", "age": 36}


def test_running_out_of_steps_is_a_typed_error_holding_the_steps():
    backend = ScriptedBackend([call("get_weather", {"city": "Oslo"}, f"c{i}") for i in range(3)])
    backend.capabilities = Capabilities(chat=True, tools=True)
    with pytest.raises(MaxStepsError, match="max_steps=2") as caught:
        PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER], run_tools=True, max_steps=2)
    error = caught.value
    assert error.max_steps == 2 and len(error.steps) == 2 and len(error.attempts) == 3
    assert [c.id for c in error.pending] == ["c2"]  # asked for, not run
    assert isinstance(error, pk.errors.PromptkitError)


def test_async_tools_are_awaited_by_arun_and_refused_by_run():
    async def slow_weather(city: str) -> str:
        await asyncio.sleep(0)
        return f"rain in {city}"

    tool = pk.Tool(slow_weather)
    backend = ScriptedBackend([call("slow_weather", {"city": "Lima"}), "Rain."], tools=True)
    result = asyncio.run(
        PROMPT.arun({"city": "Lima"}, backend=backend, tools=[tool], run_tools=True)
    )
    assert result.tool_steps[0].results == ("rain in Lima",) and result.output == "Rain."
    backend.enqueue(call("slow_weather", {"city": "Lima"}))
    with pytest.raises(UsageError, match="tool 'slow_weather' is async; run the prompt with arun"):
        PROMPT.run({"city": "Lima"}, backend=backend, tools=[tool], run_tools=True)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tools": [WEATHER], "run_tools": True, "tool_choice": PERSON}, "names no offered tool"),
        ({"tools": [PERSON], "run_tools": True}, "Person has no function"),
        ({"tools": [WEATHER, WEATHER]}, "get_weather repeats"),
        ({"tools": [get_weather]}, "list of pk.Tool"),
        ({"tools": []}, "tools is empty"),
        ({"run_tools": True}, "need tools="),
        ({"tools": [WEATHER], "max_steps": 0}, "max_steps must be a positive integer"),
    ],
)
def test_invalid_tool_options_are_usage_errors_before_any_call(options, message):
    backend = ScriptedBackend([], tools=True)
    with pytest.raises(UsageError, match=message):
        PROMPT.run({"city": "x"}, backend=backend, **options)
    assert backend.requests == []


# -- backends ----------------------------------------------------------------------------------


def test_a_backend_that_cannot_call_tools_names_itself_and_tools():
    backend = ScriptedBackend(["x"], name="plain")
    with pytest.raises(UnsupportedCapabilityError, match="'plain' does not support tools") as e:
        PROMPT.run({"city": "x"}, backend=backend, tools=[WEATHER])
    assert e.value.backend == "plain" and e.value.capability == "tools"


def test_streaming_a_request_with_tools_is_refused():
    config = GenerationConfig(tools=(WEATHER.spec,))
    with pytest.raises(UnsupportedCapabilityError, match="streaming tool calls"):
        ScriptedBackend(["x"], tools=True).stream("hi", config)


def test_config_checks_its_tools():
    with pytest.raises(ConfigurationError, match="tool_choice='required' needs tools"):
        GenerationConfig(tool_choice="required")
    with pytest.raises(ConfigurationError, match="names no offered tool"):
        GenerationConfig(tools=(WEATHER.spec,), tool_choice="other")


class Masked(Backend):
    """A backend with token masks that records what its hooks receive and answers ``reply``."""

    def __init__(self, reply: str, *, chat: bool = True, slot: bool = False):
        self.name = "masked"
        self.capabilities = Capabilities(chat=chat, token_masks=True, tool_template=slot)
        self.reply = reply
        self.seen: list[tuple[Any, GenerationConfig]] = []

    def _chat(self, messages: list[pk.backends.Message], config: GenerationConfig) -> Completion:
        self.seen.append((messages, config))
        return Completion(self.reply)

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        self.seen.append((text, config))
        return Completion(self.reply)


EMULATED = '<tool_call>{"name":"get_weather","arguments":{"city":"Oslo"}}</tool_call>'


def test_emulated_tools_go_in_the_system_message_and_decoding_is_held_to_a_call():
    backend = Masked(EMULATED)
    result = PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER], tool_choice="required")
    assert result.tool_calls[0].arguments == WEATHER.arguments_type(city="Oslo")
    messages, config = backend.seen[0]
    assert messages[0]["role"] == "system"
    assert "You can call these tools" in messages[0]["content"]
    assert '"name": "get_weather"' in messages[0]["content"]
    assert config.tools == () and config.grammar is not None
    assert config.grammar.matches(EMULATED)
    assert not config.grammar.matches("It is sunny.")  # required: a call, never an answer
    assert result.text == EMULATED  # the raw text is kept


def test_emulated_auto_allows_the_answers_grammar_or_a_call():
    backend = Masked(" yes")
    prompt = pk.Prompt(query="Sunny in {{ city }}?", output_type=Literal["yes", "no"])
    result = prompt.run({"city": "Oslo"}, backend=backend, tools=[WEATHER])
    assert result.output == "yes"
    grammar = backend.seen[0][1].grammar
    assert grammar.matches(" no") and grammar.matches(EMULATED)
    assert not grammar.matches("maybe")


def test_emulated_tools_in_the_chat_templates_slot_stay_in_the_config():
    backend = Masked(EMULATED, slot=True)
    PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER])
    messages, config = backend.seen[0]
    assert [m["role"] for m in messages] == ["user"]
    assert config.tools == (WEATHER.spec,)


def test_emulated_tools_on_a_text_model_go_above_the_prompt():
    backend = Masked(EMULATED, chat=False)  # calls again after the result: out of steps
    with pytest.raises(MaxStepsError) as caught:
        PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER], run_tools=True, max_steps=1)
    assert backend.seen[0][0].startswith("You can call these tools")
    text, _ = backend.seen[1]  # the conversation so far, flattened
    assert text.startswith("System: You can call these tools")
    assert f"Assistant: {EMULATED}" in text  # the call and its result, as text
    assert re.search(r"User: Tool result \(call_[0-9a-f]{24}\):\nsunny in Oslo for 3 days", text)
    first_id = re.findall(r"call_[0-9a-f]{24}", text)
    assert first_id and caught.value.pending[0].id not in first_id  # every call its own id


def test_a_lark_answer_cannot_be_an_alternative_to_a_call():
    prompt = pk.Prompt(query="{{ city }}", output_type=pk.Lark('start: "a"'))
    with pytest.raises(ConstraintError, match="tool_choice='required'"):
        prompt.run({"city": "x"}, backend=Masked("a"), tools=[WEATHER])


# -- messages ----------------------------------------------------------------------------------


def test_tool_messages_are_checked():
    ok = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "1", "name": "f", "arguments": "{}"}],
        },
        {"role": "tool", "content": "42", "tool_call_id": "1"},
    ]
    assert check_messages(ok) == ok
    with pytest.raises(InputValidationError, match="message 0: a tool message"):
        check_messages([{"role": "tool", "content": "42"}])
    with pytest.raises(InputValidationError, match="only an assistant message has tool_calls"):
        check_messages([{"role": "user", "content": "", "tool_calls": []}])
    with pytest.raises(InputValidationError, match="each tool call is"):
        check_messages([{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}])
    text = messages_to_text(ok)
    assert '<tool_call>{"name":"f","arguments":{}}</tool_call>' in text


def test_a_conversation_with_tool_rounds_continues_with_history():
    backend = ScriptedBackend(
        [call("get_weather", {"city": "Oslo"}, "c1"), "Sunny.", "Yes."], tools=True
    )
    first = PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER], run_tools=True)
    follow = pk.Prompt(query="{{ question }}")
    follow.run({"question": "Sure?"}, backend=backend, history=first.messages)
    roles = [m["role"] for m in backend.requests[2].prompt]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    with pytest.raises(ValueError, match="tool_call_id"):
        pk.Message(role="tool", content="x")


def test_scripted_replies_with_calls_need_a_request_with_tools():
    backend = ScriptedBackend([call("f", {})], tools=True)
    with pytest.raises(pk.errors.BackendError, match="calls tools, but the request offered none"):
        backend.generate("hi")


def test_tool_specs_are_openai_shaped():
    assert ToolSpec("f", "does f", {"type": "object"}).as_openai() == {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object"}, "description": "does f"},
    }


def test_the_response_cache_keeps_the_calls(tmp_path):
    backend = ScriptedBackend([call("get_weather", {"city": "Oslo"})], tools=True)
    cached = pk.CachedBackend(backend, pk.ResponseCache(tmp_path / "c.sqlite"))
    first = PROMPT.run({"city": "Oslo"}, backend=cached, tools=[WEATHER])
    again = PROMPT.run({"city": "Oslo"}, backend=cached, tools=[WEATHER])  # from the cache
    assert cached.calls == 1
    assert again.tool_calls[0].raw == first.tool_calls[0].raw
    backend.enqueue("fine")
    other = PROMPT.run({"city": "Oslo"}, backend=cached, tools=[PERSON])  # other tools
    assert other.output == "fine" and cached.calls == 2


def test_a_config_with_tools_is_hashable_like_any_config():
    # the server's worker groups requests by config: an unhashable one stopped it
    assert hash(GenerationConfig(tools=(WEATHER.spec,))) == hash(
        GenerationConfig(tools=(pk.Tool(get_weather).spec,))
    )
    assert (
        len({GenerationConfig(tools=(WEATHER.spec,)), GenerationConfig(tools=(PERSON.spec,))}) == 2
    )


def test_a_call_cut_off_at_max_tokens_says_so():
    cut = Completion('<tool_call>{"name":"get_wea', finish_reason="length")
    backend = ScriptedBackend([cut], tools=True)
    with pytest.raises(OutputValidationError, match="stopped at max_tokens before a call to"):
        PROMPT.run(
            {"city": "x"}, backend=backend, tools=[WEATHER], tool_choice="required", max_attempts=1
        )


def test_results_must_match_the_pending_calls():
    from promptkit._runloop import RunLoop
    from promptkit._tools import ToolSet

    loop: RunLoop[str] = RunLoop(
        "hi", "chat", GenerationConfig(), PROMPT.output, 3, tools=ToolSet([WEATHER], run=True)
    )
    with pytest.raises(UsageError, match="0 pending, 1 given"):
        loop.tool_results(["x"])
    assert loop.accept(Completion("", tool_calls=(call("get_weather", {"city": "Oslo"}),))) is None
    with pytest.raises(UsageError, match="1 pending, 2 given"):
        loop.tool_results(["x", "y"])


def test_an_empty_prompt_with_tools_is_refused_like_any_empty_prompt():
    config = GenerationConfig(tools=(WEATHER.spec,))
    with pytest.raises(InputValidationError, match="the prompt is empty"):
        ScriptedBackend(["x"], tools=True).generate("", config)


def test_demonstrations_are_dropped_to_make_room_for_the_tools():
    examples = [pk.Example(input={"city": f"City{i}"}, output="sunny") for i in range(4)]
    prompt = pk.Prompt(query="Weather in {{ city }}?", examples=examples)
    plain = ScriptedBackend(["fine"], tools=True, context_window=230)
    assert (
        prompt.run({"city": "Oslo"}, backend=plain, config=GenerationConfig(max_tokens=50)).dropped
        == ()
    )
    backend = ScriptedBackend(["fine"], tools=True, context_window=230)
    result = prompt.run(
        {"city": "Oslo"}, backend=backend, tools=[WEATHER], config=GenerationConfig(max_tokens=50)
    )
    assert result.dropped and "context window" in result.dropped[0][1]
