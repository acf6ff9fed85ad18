"""The openai:/azure: backends' mapping of parameters and errors, against a fake local server."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pydantic import BaseModel

import promptkit as pk
from promptkit._grammar import Grammar
from promptkit.backends import GenerationConfig
from promptkit.backends._openai import (
    MIN_SECRET_LENGTH,
    request_params,
    response_format,
    scrub,
)
from promptkit.backends._openai_spec import from_spec
from promptkit.errors import BackendError, ConfigurationError, ContextWindowError

openai = pytest.importorskip("openai")
fastapi = pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servers import serve_in_thread  # noqa: E402

KEY = "sk-live-abcdefghijklmnop123456"


def fake_api(behaviour: dict[str, Any]) -> Any:
    """A server whose chat endpoint answers as ``behaviour`` says and counts its calls."""
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI()
    behaviour.setdefault("calls", 0)

    @app.post("/v1/chat/completions")
    async def chat() -> Any:
        behaviour["calls"] += 1
        if behaviour.get("sleep"):
            time.sleep(behaviour["sleep"])
        status, body = behaviour["status"], behaviour.get("body", {})
        headers = behaviour.get("headers", {})
        return JSONResponse(body, status_code=status, headers=headers)

    return app


def error(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "x", "param": None, "code": code}}


def ok_reply(finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


@pytest.mark.parametrize(
    "status, body, kind, retryable, calls",
    [
        (429, error("Rate limit reached"), "rate_limit", True, 3),
        (500, error("boom"), "server", True, 3),
        (403, error("no access"), "permission", False, 1),
        (404, error("The model does not exist"), "not_found", False, 1),
        (400, error("bad", "content_filter"), "content_filter", False, 1),
        (401, error(f"Incorrect API key provided: {KEY}"), "authentication", False, 1),
    ],
)
def test_errors_are_mapped_and_retried_by_the_sdk(status, body, kind, retryable, calls):
    behaviour = {"status": status, "body": body, "headers": {"retry-after": "0"}}
    with serve_in_thread(fake_api(behaviour)) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=2)
        with pytest.raises(BackendError) as caught:
            backend.generate([{"role": "user", "content": "x"}], GenerationConfig(max_tokens=2))
        backend.close()
    assert (caught.value.kind, caught.value.retryable) == (kind, retryable)
    assert behaviour["calls"] == calls  # 429 and 5xx: retried (Retry-After honoured)
    assert isinstance(caught.value.__cause__, openai.APIStatusError)
    for text in (str(caught.value), str(caught.value.__cause__), repr(backend)):
        assert KEY not in text and "abcdefghij" not in text


def test_context_length_and_content_filtered_answers():
    behaviour = {"status": 400, "body": error("too long", "context_length_exceeded")}
    with serve_in_thread(fake_api(behaviour)) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(ContextWindowError):
            backend.generate([{"role": "user", "content": "x"}])
        behaviour.update(status=200, body=ok_reply("content_filter"))
        with pytest.raises(BackendError) as caught:
            backend.generate([{"role": "user", "content": "x"}])
        assert caught.value.kind == "content_filter"
        behaviour.update(body=ok_reply())
        completion = backend.generate([{"role": "user", "content": "x"}])
        assert completion.text == "hi" and completion.usage.total_tokens == 4
        backend.close()


def test_timeouts_are_retryable_errors():
    behaviour = {"status": 200, "body": ok_reply(), "sleep": 1.0}
    with serve_in_thread(fake_api(behaviour)) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=0.2)
        with pytest.raises(BackendError) as caught:
            backend.generate([{"role": "user", "content": "x"}])
        backend.close()
    assert caught.value.kind == "timeout" and caught.value.retryable


def test_parameters_are_mapped_in_one_place():
    config = GenerationConfig(max_tokens=7, temperature=0.3, stop=("a", "b"), seed=1)
    assert request_params("gpt-4o-mini", config, chat=True) == {
        "max_tokens": 7,
        "temperature": 0.3,
        "top_p": 1.0,
        "stop": ["a", "b"],
        "seed": 1,
    }
    reasoning = request_params("o3-mini", config, chat=True)
    assert reasoning["max_completion_tokens"] == 7 and "temperature" not in reasoning
    with pytest.raises(ConfigurationError, match="top_k"):
        request_params("gpt-4o", GenerationConfig(top_k=5), chat=True)
    with pytest.raises(ConfigurationError, match="at most 4 stop"):
        request_params("gpt-4o", GenerationConfig(stop=tuple("abcde")), chat=True)


class Strict(BaseModel):
    name: str
    age: int


class Loose(BaseModel):
    name: str
    nickname: str | None = None


def test_structured_output_is_strict_when_the_schema_allows():
    strict = response_format(Grammar.json_schema(Strict.model_json_schema()))
    assert strict["type"] == "json_schema" and strict["json_schema"]["strict"] is True
    assert strict["json_schema"]["schema"]["additionalProperties"] is False
    assert response_format(Grammar.json_schema(Loose.model_json_schema())) == {
        "type": "json_object"
    }


def test_configuration_from_the_environment(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        pk.get_backend("openai:gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    backend = pk.get_backend("openai:gpt-4o-mini")
    assert backend.context_window == 128_000 and backend.capabilities.chat
    assert not backend.capabilities.completion and not backend.capabilities.loglikelihood
    assert KEY not in repr(backend)
    with pytest.raises(pk.errors.UnsupportedCapabilityError):
        backend.loglikelihood("a", "b")
    assert backend.count_tokens("x" * 40) >= 1
    with pytest.raises(ConfigurationError, match="unknown option"):
        pk.get_backend("openai:gpt-4o-mini", temperature=0)
    backend.close()


@pytest.mark.parametrize(
    "spec, options, message",
    [
        ("openai:m", {"temperature": 0}, "for openai: temperature; it takes api_key, base_url"),
        ("azure:d", {"seed": 1}, "for azure: seed; it takes api_key, api_version"),
        ("openai:m", {"timeout": "30"}, "openai: timeout must be a number of seconds above 0"),
        ("openai:m", {"timeout": 0}, "timeout must be a number of seconds above 0, got 0"),
        ("openai:m", {"timeout": float("nan")}, "timeout must be a number of seconds above 0"),
        ("openai:m", {"max_retries": -1}, "max_retries must be a whole number >= 0, got -1"),
        ("openai:m", {"max_retries": True}, "max_retries must be a whole number >= 0"),
        ("openai:m", {"completions": "no"}, "openai: completions must be true or false"),
        ("azure:d", {"context_window": 0}, "azure: context_window must be a whole number >= 1"),
        ("openai:m", {"base_url": 8080}, "openai: base_url must be text, got int"),
        ("azure:d", {"azure_ad_token_provider": KEY}, "must be a function returning a token"),
    ],
)
def test_options_of_the_wrong_kind_are_configuration_errors(monkeypatch, spec, options, message):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.invalid")
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-06-01")
    with pytest.raises(ConfigurationError) as caught:
        pk.get_backend(spec, **options)
    assert message in str(caught.value) and KEY not in str(caught.value)


def test_an_api_key_of_the_wrong_kind_is_not_repeated():
    secret = int("314159265358979")  # a key pasted as a number: still a secret
    with pytest.raises(ConfigurationError, match="openai: api_key must be text, got int") as caught:
        pk.get_backend("openai:m", api_key=secret)
    assert str(secret) not in str(caught.value)


def test_a_429_with_retry_after_then_success_is_retried():
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI()
    seen = {"calls": 0, "times": []}

    @app.post("/v1/chat/completions")
    async def chat() -> Any:
        seen["calls"] += 1
        seen["times"].append(time.monotonic())
        if seen["calls"] == 1:
            return JSONResponse(error("slow down"), status_code=429, headers={"retry-after": "1"})
        return JSONResponse(ok_reply())

    with serve_in_thread(app) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=2)
        assert backend.generate([{"role": "user", "content": "x"}]).text == "hi"
        backend.close()
    assert seen["calls"] == 2
    assert seen["times"][1] - seen["times"][0] >= 0.9  # waited as Retry-After said


def test_malformed_json_and_dropped_connections_are_typed_errors():
    import socket
    import threading

    from fastapi.responses import Response

    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> Any:
        return Response("this is { not json", media_type="application/json")

    with serve_in_thread(app) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(BackendError) as caught:
            backend.generate([{"role": "user", "content": "x"}])
        backend.close()
    assert caught.value.kind == "bad_response" and "base URL" in str(caught.value)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def drop() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            connection.recv(65536)
            connection.close()  # hang up without answering

    threading.Thread(target=drop, daemon=True).start()
    port = listener.getsockname()[1]
    backend = from_spec("m", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=1)
    began = time.monotonic()
    with pytest.raises(BackendError) as dropped:
        backend.generate([{"role": "user", "content": "x"}])
    backend.close()
    listener.close()
    assert dropped.value.kind == "connection" and dropped.value.retryable
    assert len(accepted) == 2 and time.monotonic() - began < 30
    assert KEY not in str(dropped.value)


PROMPTY = """---
name: configured
model:
  api: chat
  configuration:
    type: {kind}
{settings}
---
user:
{{{{ q }}}}
"""


def test_templates_choose_their_backend_from_model_configuration(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from promptkit._prompty import backend_from_prompt
    from promptkit.cli import cli

    monkeypatch.setenv("MY_ENDPOINT", "https://example.invalid")
    monkeypatch.setenv("MY_KEY", KEY)
    azure = tmp_path / "azure.prompty"
    azure.write_text(
        PROMPTY.format(
            kind="azure_openai",
            settings="    azure_deployment: gpt4o\n    azure_endpoint: ${env:MY_ENDPOINT}\n"
            "    api_version: 2024-06-01\n    api_key: ${env:MY_KEY}",
        )
    )
    prompt = pk.load_prompt(azure)
    assert prompt.metadata["model"]["configuration"]["api_key"] == "${env:MY_KEY}"  # not read
    backend = backend_from_prompt(prompt)
    assert backend is not None and backend.name == "azure:gpt4o" and KEY not in repr(backend)
    backend.close()  # type: ignore[attr-defined]
    plain = tmp_path / "openai.prompty"
    plain.write_text(
        PROMPTY.format(kind="openai", settings="    name: gpt-4o-mini\n    api_key: ${env:MY_KEY}")
    )
    chosen = backend_from_prompt(pk.load_prompt(plain))
    assert chosen is not None and chosen.name == "openai:gpt-4o-mini"
    chosen.close()  # type: ignore[attr-defined]
    assert backend_from_prompt(pk.load_prompt("sentiment")) is None
    odd = tmp_path / "odd.prompty"
    odd.write_text(PROMPTY.format(kind="serverless", settings="    name: x"))
    with pytest.raises(ConfigurationError, match="serverless"):
        backend_from_prompt(pk.load_prompt(odd))
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ConfigurationError, match="MY_KEY"):
        backend_from_prompt(pk.load_prompt(azure))
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    import promptkit.models

    monkeypatch.setattr(promptkit.models, "MINI", tmp_path / "no-shipped-model")
    missing = CliRunner().invoke(cli, ["run", "sentiment", "--sample"])
    assert missing.exit_code == 2 and "no backend" in missing.output


def chat_server(reply: Any, *, stream_lines: list[str] | None = None) -> Any:
    """A server whose chat endpoint answers 200 with ``reply`` (any JSON), or streams
    ``stream_lines`` as server-sent events when the request asks to stream."""
    from fastapi.responses import JSONResponse, StreamingResponse

    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request) -> Any:
        if (await request.json()).get("stream"):
            body = "".join(f"data: {line}\n\n" for line in stream_lines or []) + "data: [DONE]\n\n"
            return StreamingResponse(iter([body]), media_type="text/event-stream")
        return JSONResponse(reply)

    return app


@pytest.mark.parametrize(
    "reply, detail",
    [
        ({"id": "c", "object": "chat.completion", "choices": None}, "no choices"),
        ({"id": "c", "object": "chat.completion", "choices": []}, "no choices"),
        ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "no message"),
        ({"choices": [{"message": {"role": "assistant", "content": 42}}]}, "not a string"),
        (["not", "an", "object"], "expected shape"),
    ],
)
def test_a_200_of_the_wrong_shape_is_a_bad_response(reply, detail):
    with serve_in_thread(chat_server(reply)) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(BackendError) as caught:
            backend.generate([{"role": "user", "content": "x"}])
        backend.close()
    message = str(caught.value)
    assert caught.value.kind == "bad_response" and not caught.value.retryable
    assert detail in message and "base URL" in message and KEY not in message


def test_a_streamed_chunk_of_the_wrong_shape_is_a_bad_response():
    chunk = '{"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": 5}]}'
    with serve_in_thread(chat_server({}, stream_lines=[chunk])) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(BackendError) as caught:
            list(backend.stream([{"role": "user", "content": "x"}]))
        backend.close()
    assert caught.value.kind == "bad_response" and "streamed chunk" in str(caught.value)


def test_a_long_malformed_response_is_quoted_in_part_and_says_so():
    reply = {"choices": None, "padding": "y" * 5000}
    with serve_in_thread(chat_server(reply)) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(BackendError, match=r"the first 1000 of \d+ characters"):
            backend.generate([{"role": "user", "content": "x"}])
        backend.close()


def test_errors_are_converted_the_same_on_every_path_and_the_sdk_error_is_left_alone():
    import asyncio

    behaviour = {"status": 401, "body": error(f"Incorrect API key provided: {KEY}")}
    messages = [{"role": "user", "content": "x"}]

    async def asynchronous(backend: Any) -> list[BaseException]:
        caught: list[BaseException] = []
        try:
            await backend.agenerate(messages)
        except BackendError as exc:
            caught.append(exc)
        try:
            async for _ in backend.astream(messages):
                pass
        except BackendError as exc:
            caught.append(exc)
        await backend.aclose()
        return caught

    with serve_in_thread(fake_api(behaviour)) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        caught: list[BaseException] = []
        for call in (lambda: backend.generate(messages), lambda: list(backend.stream(messages))):
            with pytest.raises(BackendError) as info:
                call()
            caught.append(info.value)
        caught += asyncio.run(asynchronous(backend))
        backend.close()
    assert len(caught) == 4
    for exc in caught:
        assert isinstance(exc, BackendError) and exc.kind == "authentication"
        cause = exc.__cause__
        assert isinstance(cause, openai.AuthenticationError) and cause.status_code == 401
        for text in (str(exc), str(cause), cause.message, json.dumps(cause.body)):
            assert KEY not in text and "***" in text
        original = exc.__context__  # the SDK's own exception, as the SDK raised it
        assert isinstance(original, openai.AuthenticationError) and original is not cause
        assert KEY in str(original) and KEY in original.args[0]


def test_a_short_placeholder_key_is_not_scrubbed_from_messages():
    behaviour = {"status": 400, "body": error("max_tokens is too large: x exceeds the limit")}
    with serve_in_thread(fake_api(behaviour)) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(BackendError) as caught:
            backend.generate([{"role": "user", "content": "x"}])
        backend.close()
    assert "max_tokens is too large: x exceeds the limit" in str(caught.value)
    assert scrub("abcdefg and abcdefgh", ["abcdefg"]) == "abcdefg and abcdefgh"
    assert scrub("key abcdefgh here", ["abcdefgh"]) == "key *** here"
    assert MIN_SECRET_LENGTH == 8


def test_the_key_is_held_by_the_sdk_client_only():
    backend = from_spec("m", base_url="http://127.0.0.1:9/v1", api_key=KEY)
    assert backend._client.api_key == KEY  # the SDK must hold it to send it
    for name, value in vars(backend).items():
        if name not in ("_client", "_async_client"):
            assert KEY not in repr(value), name
    assert KEY not in repr(backend) and KEY not in json.dumps(backend.cache_identity())
    backend.close()


def test_missing_token_counts_keep_the_answer_and_are_logged(caplog):
    reply = ok_reply()
    reply["usage"] = {"prompt_tokens": None, "completion_tokens": "many"}
    with serve_in_thread(chat_server(reply)) as url:
        backend = from_spec("m", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        completion = backend.generate([{"role": "user", "content": "x"}])
        backend.close()
    assert completion.text == "hi" and completion.usage.total_tokens == 0
    assert "usage holds no token counts" in caplog.text
