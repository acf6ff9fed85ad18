"""Streaming on local backends (constrained decoding keeps every prefix parseable) and through
``promptkit serve``'s streamed ``response_format`` (random weights, no internet)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field
from pydantic_core import from_json
from servers import serve_in_thread

import promptkit as pk
from promptkit.backends import GenerationConfig
from promptkit.backends._openai_spec import from_spec

pytest.importorskip("llguidance")

TEXT = "Ada Lovelace met Babbage in London"


class Meeting(BaseModel):
    who: Annotated[str, pk.SpanOf("text")]
    where: Annotated[str, pk.SpanOf("text")] | None = None
    year: int = Field(ge=1800, le=1900)
    topics: list[str] = Field(max_length=2)


class Pet(BaseModel):
    name: str = Field(max_length=12)
    legs: int = Field(ge=0, le=8)


def json_prefix_parses(text: str) -> bool:
    """Whether pydantic-core reads ``text`` as the start of a JSON document."""
    try:
        from_json(text, allow_partial=True)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def local(hf_folder):
    return pk.get_backend(f"scratch:{hf_folder}", device="cpu")


@pytest.fixture(scope="module", params=["scratch", "hf"])
def either(request: pytest.FixtureRequest, hf_folder):
    """Each local backend (promptkit's own decoder, transformers)."""
    return pk.get_backend(f"{request.param}:{hf_folder}", device="cpu")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2])
def test_constrained_records_stream_through_parseable_prefixes(either, seed):
    prompt = pk.Prompt(query="{{ text }}", output_type=Meeting, format_instructions=False)
    config = GenerationConfig(max_tokens=60, temperature=1.0, seed=seed)
    events = list(prompt.stream({"text": TEXT}, backend=either, config=config, max_attempts=1))
    result = events[-1].result
    assert result is not None and result.constrained and len(result.attempts) == 1
    assert all(json_prefix_parses(e.text) for e in events if e.text.strip())
    partials = [e.partial for e in events[:-1] if e.partial is not None]
    assert partials and all(p.who is None or p.who in TEXT for p in partials)
    assert partials[-1].model_dump() == result.output.model_dump()
    assert result.output.who in TEXT


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("output_type", "name"),
    [(Meeting, "record"), (list[Pet], "list"), (Literal["yes", "no way"], "label"), (int, "int")],
)
def test_local_streams_end_with_what_run_returns(either, output_type, name):
    prompt = pk.Prompt(query="{{ text }}", output_type=output_type, format_instructions=False)
    config = GenerationConfig(max_tokens=60)
    events = list(prompt.stream({"text": TEXT}, backend=either, config=config, max_attempts=1))
    ran = prompt.run({"text": TEXT}, backend=either, config=config, max_attempts=1)
    result = events[-1].result
    assert result is not None and result.output == ran.output == events[-1].partial
    assert result.text == ran.text == "".join(e.delta for e in events)
    assert result.usage == ran.usage  # the local stream's own counts


# -- through promptkit serve --------------------------------------------------------------


@pytest.fixture(scope="module")
def url(local):
    from promptkit.server import create_app

    with serve_in_thread(create_app(local, model_name="tiny")) as base:
        yield base


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [3, 4])
def test_served_json_schema_streams_parse_at_every_prefix(url, seed):
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        chunks = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "A pet:"}],
            max_tokens=40,
            temperature=1.0,
            seed=seed,
            stream=True,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "Pet", "schema": Pet.model_json_schema(), "strict": True},
            },
        )
        text = ""
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                assert json_prefix_parses(text), text
    Pet.model_validate_json(text)


@pytest.mark.timeout(120)
def test_prompt_streams_through_the_server_like_it_runs(url):
    remote = from_spec("tiny", base_url=f"{url}/v1", api_key="unused", max_retries=0)
    prompt = pk.Prompt(query="Describe a pet: {{ text }}", output_type=Pet)
    config = GenerationConfig(max_tokens=40)
    try:
        events = list(prompt.stream({"text": "a cat"}, backend=remote, config=config))
        ran = prompt.run({"text": "a cat"}, backend=remote, config=config)

        async def collect():
            events = prompt.astream({"text": "a cat"}, backend=remote, config=config)
            streamed = [e async for e in events]
            await remote.aclose()
            return streamed

        async_events = asyncio.run(collect())
    finally:
        remote.close()
    result = events[-1].result
    assert result is not None and result.constrained and len(result.attempts) == 1
    assert events[-1].partial == ran.output and isinstance(ran.output, Pet)
    assert all(json_prefix_parses(e.text) for e in events if e.text.strip())
    assert [e.delta for e in async_events] == [e.delta for e in events]
    assert async_events[-1].partial == ran.output
