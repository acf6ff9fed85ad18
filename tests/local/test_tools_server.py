"""promptkit serve with tools: ``tools`` and ``tool_choice`` (auto, required, none, a named
function) answered with OpenAI ``tool_calls`` from a model with random weights, against the
official openai client and LangChain's ``bind_tools`` / ``with_structured_output``."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel
from servers import serve_in_thread

import promptkit as pk

from .conftest import make_hf_gpt2

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from promptkit.server import create_app  # noqa: E402

HI = [{"role": "user", "content": "What is the weather in Oslo?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get today's weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Oslo", "Lima"]},
                "unit": {"enum": ["C", "F"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CONVERT = {
    "type": "function",
    "function": {
        "name": "convert",
        "parameters": {
            "type": "object",
            "properties": {"amount": {"enum": [1, 2, 3]}},
            "required": ["amount"],
        },
    },
}

BROKEN = {  # a schema llguidance cannot compile
    "type": "function",
    "function": {
        "name": "f",
        "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}},
    },
}


class Forecast(BaseModel):
    """Today's forecast."""

    city: Literal["Oslo", "Lima"]
    sunny: bool


def get_weather(city: Literal["Oslo", "Lima"], unit: Literal["C", "F"]) -> str:
    """Get today's weather in a city."""
    return f"12 {unit} in {city}"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    folder = make_hf_gpt2(
        tmp_path_factory.mktemp("serve-tools"), mini_tokenizer=True, n_positions=1024
    )
    backend = pk.get_backend(f"scratch:{folder}", device="cpu")
    with serve_in_thread(create_app(backend, model_name="tiny")) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        yield client


def ask(client, **options):
    return client.chat.completions.create(
        model="tiny", messages=HI, max_tokens=60, temperature=0, **options
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "choice, allowed",
    [
        ("required", {"get_weather", "convert"}),
        ({"type": "function", "function": {"name": "convert"}}, {"convert"}),
    ],
)
def test_a_forced_call_comes_back_as_openai_tool_calls(client, choice, allowed):
    answer = ask(client, tools=[WEATHER, CONVERT], tool_choice=choice)
    choice0 = answer.choices[0]
    assert choice0.finish_reason == "tool_calls" and choice0.message.content is None
    (call,) = choice0.message.tool_calls
    assert call.type == "function" and call.function.name in allowed
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert arguments["city"] in ("Oslo", "Lima") and arguments["unit"] in ("C", "F")
    else:
        assert arguments["amount"] in (1, 2, 3)
    assert call.id.startswith("call_")


@pytest.mark.timeout(120)
def test_auto_answers_or_calls_and_none_answers(client):
    auto = ask(client, tools=[WEATHER], tool_choice="auto").choices[0]
    if auto.message.tool_calls:
        assert json.loads(auto.message.tool_calls[0].function.arguments)["city"] in ("Oslo", "Lima")
    else:
        assert isinstance(auto.message.content, str)
    none = ask(client, tools=[WEATHER], tool_choice="none").choices[0]
    assert none.message.tool_calls is None and isinstance(none.message.content, str)


@pytest.mark.timeout(120)
def test_tool_results_are_taken_back_as_tool_messages(client):
    first = ask(client, tools=[WEATHER], tool_choice="required").choices[0].message
    call = first.tool_calls[0]
    messages = [
        *HI,
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "12 C, sunny"},
    ]
    answer = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=5, tools=[WEATHER], tool_choice="none"
    )
    assert isinstance(answer.choices[0].message.content, str)


@pytest.mark.parametrize(
    "extra, param, says",
    [
        ({"tools": [{"type": "function"}]}, "tools", "tools[0] must be"),
        ({"tools": [WEATHER], "tool_choice": {"type": "x"}}, "tool_choice", "tool_choice must be"),
        ({"tools": [WEATHER], "tool_choice": "other"}, None, "names no offered tool"),
        ({"tool_choice": "required"}, None, "needs tools"),
        ({"functions": [WEATHER["function"]]}, "functions", "offer the functions as tools"),
        ({"tools": [WEATHER], "stream": True}, "stream", "not supported with tools"),
        ({"tools": [BROKEN], "tool_choice": "required"}, None, "cannot compile"),
    ],
)
def test_tools_of_the_wrong_shape_are_400s_that_say_why(client, extra, param, says):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, **extra)
    assert says in refused.value.body["message"]
    assert refused.value.body.get("param") == param


@pytest.mark.timeout(120)
def test_langchain_bind_tools_gets_valid_calls(url):
    langchain_openai = pytest.importorskip(
        "langchain_openai", reason="LangChain is an optional client (pip install langchain-openai)"
    )
    from langchain_core.messages import HumanMessage, ToolMessage

    model = langchain_openai.ChatOpenAI(
        base_url=f"{url}/v1", api_key="x", model="tiny", max_retries=0, temperature=0, max_tokens=60
    )
    bound = model.bind_tools([get_weather], tool_choice="get_weather")
    said = bound.invoke("What is the weather in Oslo?")
    (call,) = said.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"]["city"] in ("Oslo", "Lima") and call["args"]["unit"] in ("C", "F")
    result = ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])
    follow = model.bind_tools([get_weather], tool_choice="none").invoke(
        [HumanMessage("What is the weather in Oslo?"), said, result]
    )
    assert isinstance(follow.content, str) and not follow.tool_calls


@pytest.mark.timeout(120)
def test_langchain_structured_output_by_function_calling(url):
    langchain_openai = pytest.importorskip(
        "langchain_openai", reason="LangChain is an optional client (pip install langchain-openai)"
    )
    model = langchain_openai.ChatOpenAI(
        base_url=f"{url}/v1", api_key="x", model="tiny", max_retries=0, temperature=0, max_tokens=60
    )
    structured = model.with_structured_output(Forecast, method="function_calling")
    forecast = structured.invoke("Is it sunny in Lima?")
    assert isinstance(forecast, Forecast)
