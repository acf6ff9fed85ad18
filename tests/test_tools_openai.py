"""Tools on the OpenAI API and Azure: native ``tools`` / ``tool_choice`` in the request, the
answer's ``tool_calls`` typed and validated, results sent back as ``tool`` messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import promptkit as pk
from promptkit.backends._openai_spec import azure_from_spec, from_spec

openai = pytest.importorskip("openai")
fastapi = pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servers import serve_in_thread  # noqa: E402

KEY = "sk-live-abcdefghijklmnop123456"


def get_weather(city: str, days: int = 3) -> str:
    """Get the weather forecast for a city."""
    return f"sunny in {city} for {days} days"


WEATHER = pk.Tool(get_weather)
PROMPT = pk.Prompt(query="Weather in {{ city }}?")


def reply(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'},
        }
    ],
}
ANSWER = {"role": "assistant", "content": "Sunny."}


def fake_api(replies: list[dict[str, Any]], seen: list[dict[str, Any]]) -> Any:
    """A chat endpoint (OpenAI's path and Azure's) that records each body and answers in turn."""
    app = fastapi.FastAPI()

    async def chat(request: fastapi.Request) -> Any:
        seen.append(await request.json())
        return replies[len(seen) - 1]

    app.post("/v1/chat/completions")(chat)
    app.post("/openai/deployments/{deployment}/chat/completions")(chat)
    return app


def test_openai_gets_native_tools_and_its_calls_come_back_typed():
    seen: list[dict[str, Any]] = []
    with serve_in_thread(fake_api([reply(CALL, "tool_calls"), reply(ANSWER)], seen)) as url:
        backend = from_spec("gpt-4o-mini", base_url=f"{url}/v1", api_key=KEY)
        assert backend.capabilities.tools
        result = PROMPT.run(
            {"city": "Oslo"}, backend=backend, tools=[WEATHER], tool_choice="required"
        )
        (call,) = result.tool_calls
        assert call.arguments == WEATHER.arguments_type(city="Oslo", days=2)
        assert call.id == "call_abc" and result.output is None
        body = seen[0]
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Get the weather forecast for a city.",
                    "parameters": WEATHER.arguments_type.model_json_schema(),
                },
            }
        ]
        assert body["tool_choice"] == "required"
        backend.close()


def test_azure_runs_tools_and_sends_results_back_as_tool_messages():
    seen: list[dict[str, Any]] = []
    with serve_in_thread(fake_api([reply(CALL, "tool_calls"), reply(ANSWER)], seen)) as url:
        backend = azure_from_spec("gpt4o", endpoint=url, api_key=KEY, api_version="2024-10-21")
        result = PROMPT.run(
            {"city": "Oslo"},
            backend=backend,
            tools=[WEATHER],
            tool_choice=WEATHER,
            run_tools=True,
        )
        assert result.output == "Sunny."
        assert seen[0]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert seen[1]["tool_choice"] == "auto"  # the forced call was the first round's
        said, answered = seen[1]["messages"][-2:]
        assert said["tool_calls"] == CALL["tool_calls"]
        assert answered == {
            "role": "tool",
            "content": "sunny in Oslo for 2 days",
            "tool_call_id": "call_abc",
        }
        backend.close()


def test_a_call_of_the_wrong_shape_is_a_bad_response():
    broken = {**CALL, "tool_calls": [{"id": 7, "type": "function", "function": {"name": "f"}}]}
    seen: list[dict[str, Any]] = []
    with serve_in_thread(fake_api([reply(broken)], seen)) as url:
        backend = from_spec("gpt-4o-mini", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(pk.errors.BackendError) as caught:
            PROMPT.run({"city": "Oslo"}, backend=backend, tools=[WEATHER])
        assert caught.value.kind == "bad_response"
        assert "does not have the expected shape" in str(caught.value)
        assert '"id": 7' in str(caught.value)  # what came back is quoted
        backend.close()


def test_the_async_client_carries_tools_too():
    seen: list[dict[str, Any]] = []
    with serve_in_thread(fake_api([reply(CALL, "tool_calls")], seen)) as url:
        backend = from_spec("gpt-4o-mini", base_url=f"{url}/v1", api_key=KEY)

        async def run() -> Any:
            try:
                return await PROMPT.arun({"city": "Oslo"}, backend=backend, tools=[WEATHER])
            finally:
                await backend.aclose()

        result = asyncio.run(run())
        assert result.tool_calls[0].arguments == WEATHER.arguments_type(city="Oslo", days=2)
        assert seen[0]["tool_choice"] == "auto" and seen[0]["tools"][0]["type"] == "function"
        backend.close()
