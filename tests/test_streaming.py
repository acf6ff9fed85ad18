"""prompt.stream / prompt.astream: partial outputs as the text arrives, re-asks included."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

import promptkit as pk
from promptkit._parsing import output_spec
from promptkit._partial import PartialOutput, partial_model
from promptkit.backends import ScriptedBackend
from promptkit.backends._base import Backend, Capabilities, Completion, Usage
from promptkit.errors import (
    InputValidationError,
    OutputValidationError,
    UnsupportedCapabilityError,
)


class Person(BaseModel):
    name: Annotated[str, pk.SpanOf("text")]
    age: int = Field(ge=0)
    code: Annotated[str, pk.Regex(r"[A-Z]{3}")] = "AAA"
    tags: list[str] = []


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


TEXT = "Ada Lovelace was born in London"
PERSON = '{"name": "Ada Lovelace", "age": 36, "code": "ADA", "tags": ["math", "poetry"]}'


def events_of(prompt: pk.Prompt, reply: str | list[str], **options) -> list[pk.StreamEvent]:
    replies = [reply] if isinstance(reply, str) else reply
    return list(prompt.stream({"text": TEXT}, backend=ScriptedBackend(replies), **options))


def run_of(prompt: pk.Prompt, reply: str | list[str], **options) -> pk.Result:
    replies = [reply] if isinstance(reply, str) else reply
    return prompt.run({"text": TEXT}, backend=ScriptedBackend(replies), **options)


def same_result(streamed: pk.Result, ran: pk.Result) -> None:
    """Everything but the timings is what run returns."""
    timeless = [dataclasses.replace(a, latency_s=0.0) for a in streamed.attempts]
    assert timeless == [dataclasses.replace(a, latency_s=0.0) for a in ran.attempts]
    assert dataclasses.replace(streamed, latency_s=0.0, attempts=()) == dataclasses.replace(
        ran, latency_s=0.0, attempts=()
    )


@pytest.mark.parametrize(
    ("output_type", "reply"),
    [
        (Person, PERSON),
        (Person, f"Here it is:\n```json\n{PERSON}\n```"),
        (str, "  Ada Lovelace wrote the first program.  "),
        (list[str], '["math", "poetry", "engines"]'),
        (list[Person], f'[{PERSON}, {{"name": "London", "age": 1}}]'),
        (Literal["positive", "negative"], "Negative. The review hates it."),
        (Mood, "sad"),
        (int, "The answer is 1843"),
        (bool, "yes, it is"),
        (pk.Regex(r"[A-Z]{3}-[0-9]+"), "ADA-1815"),
    ],
)
def test_the_last_event_is_what_run_returns(output_type, reply):
    prompt = pk.Prompt(query="{{ text }}", output_type=output_type)
    events = events_of(prompt, reply)
    ran = run_of(prompt, reply)
    last = events[-1]
    assert last.done and last.result is not None and last.delta == ""
    assert last.partial == ran.output and type(last.partial) is type(ran.output)
    same_result(last.result, ran)
    assert "".join(e.delta for e in events) == reply == last.text
    assert [e.done for e in events] == [False] * (len(events) - 1) + [True]
    assert all(e.attempt == 1 and e.error is None for e in events)
    assert all(e.text == reply[: len(e.text)] for e in events)


def test_a_record_fills_in_field_by_field():
    prompt = pk.Prompt(query="{{ text }}", output_type=Person)
    events = events_of(prompt, PERSON)
    partials = [e.partial for e in events[:-1]]
    assert all(type(p).__name__ == "PartialPerson" for p in partials)
    names = [p.name for p in partials]
    assert names[:2] == [None, "Ada"] and names[-1] == "Ada Lovelace"  # a string grows
    ages = [p.age for p in partials]
    assert ages.index(36) > names.index("Ada Lovelace")  # fields arrive in the order written
    assert partials[-1].tags == ["math", "poetry"]
    assert partials[-1].model_dump() == events[-1].partial.model_dump()


def test_half_written_values_that_do_not_validate_keep_the_last_partial():
    spec = output_spec(Person)
    partial = PartialOutput(spec, {"text": TEXT})
    before = partial.update('{"name": "Ada", "co')
    assert before.name == "Ada" and before.code is None
    assert partial.update('{"name": "Ada", "code": "AD') is before  # "AD" fails the regex
    assert partial.update('{"name": "Ada", "code": "ADA"').code == "ADA"
    # a span not copied from the input never shows, even half written
    other = PartialOutput(spec, {"text": TEXT})
    assert other.update('{"name": "Bob') is None


def test_a_list_grows_item_by_item():
    prompt = pk.Prompt(query="{{ text }}", output_type=list[str])
    events = events_of(prompt, '["alpha beta", "gamma delta", "epsilon"]')
    seen = [e.partial for e in events]
    assert seen[0] == [] and ["alpha"] not in seen  # an unfinished item is left out
    assert ["alpha beta"] in seen and ["alpha beta", "gamma delta"] in seen
    growing = [len(p) for p in seen]
    assert growing == sorted(growing)


def test_labels_and_numbers_are_none_until_the_text_says_one():
    labels = pk.Prompt(query="{{ text }}", output_type=Literal["very negative", "positive"])
    events = events_of(labels, "very negative.")
    assert [e.partial for e in events] == [None, "very negative", "very negative"]
    number = pk.Prompt(query="{{ text }}", output_type=int)
    assert [e.partial for e in events_of(number, "It is 12")] == [None, None, 12, 12]


def test_free_text_is_the_accumulated_string():
    prompt = pk.Prompt(query="{{ text }}")
    events = events_of(prompt, "One two three")
    assert [e.partial for e in events] == ["One", "One two", "One two three", "One two three"]
    assert [e.delta for e in events] == ["One", " two", " three", ""]


def test_a_reask_streams_as_the_next_attempt_and_the_partial_starts_again():
    prompt = pk.Prompt(query="{{ text }}", output_type=Person)
    bad = '{"name": "Ada", "age": -1}'
    backend = ScriptedBackend([bad, PERSON])
    events = list(prompt.stream({"text": TEXT}, backend=backend))
    first = [e for e in events if e.attempt == 1]
    second = [e for e in events if e.attempt == 2]
    assert len(first) + len(second) == len(events) and events[-1].done
    closing = first[-1]
    assert closing.delta == "" and closing.text == bad and not closing.done
    assert closing.error is not None and "age" in closing.error and "greater than" in closing.error
    assert first[-2].partial.name == "Ada"
    assert second[0].partial is not first[-2].partial and second[0].partial.name is None
    assert "".join(e.delta for e in second) == PERSON
    result = events[-1].result
    assert result is not None and [a.error is None for a in result.attempts] == [False, True]
    assert "age" in backend.requests[1].prompt[-1]["content"]  # the error went back
    same_result(result, run_of(prompt, [bad, PERSON]))


def test_no_valid_answer_raises_with_every_attempt_after_streaming_them():
    prompt = pk.Prompt(query="{{ text }}", output_type=int)
    seen: list[pk.StreamEvent] = []
    with pytest.raises(OutputValidationError, match="no valid output after 2 attempt") as caught:
        for event in prompt.stream(
            {"text": TEXT}, backend=ScriptedBackend(["none", "nothing"]), max_attempts=2
        ):
            seen.append(event)
    assert [a.text for a in caught.value.attempts] == ["none", "nothing"]
    assert caught.value.raw_text == "nothing"
    assert [(e.attempt, e.delta) for e in seen] == [(1, "none"), (1, ""), (2, "nothing")]
    assert seen[1].error is not None and "no number" in seen[1].error


class NoStreams(Backend):
    name = "plain-api"
    capabilities = Capabilities(streaming=False)

    def _complete(self, text, config):
        return Completion("1", Usage(1, 1))


def test_a_backend_that_cannot_stream_is_refused_by_name_before_iterating():
    prompt = pk.Prompt(query="{{ text }}", output_type=int)
    with pytest.raises(UnsupportedCapabilityError) as caught:
        prompt.stream({"text": TEXT}, backend=NoStreams())
    assert "plain-api" in str(caught.value) and "streaming" in str(caught.value)
    with pytest.raises(UnsupportedCapabilityError, match="plain-api.*streaming"):
        prompt.astream({"text": TEXT}, backend=NoStreams())


def test_bad_inputs_are_refused_when_stream_is_called():
    prompt = pk.Prompt(query="{{ text }}", output_type=int)
    with pytest.raises(InputValidationError, match="text"):
        prompt.stream({}, backend=ScriptedBackend(["1"]))


class Counting(Backend):
    """Streams "1 " forever (until closed); records that its stream was closed."""

    name = "counting"
    capabilities = Capabilities(streaming=True)

    def __init__(self) -> None:
        self.closed = 0

    def _stream_complete(self, text, config):
        try:
            while True:
                yield "1 "
        finally:
            self.closed += 1


@pytest.mark.timeout(10)
def test_leaving_a_stream_early_closes_the_backends_stream():
    prompt = pk.Prompt(query="{{ text }}", style="completion")
    backend = Counting()
    events = prompt.stream({"text": TEXT}, backend=backend)
    assert next(events).partial == "1"
    events.close()
    assert backend.closed == 1


def test_astream_gives_the_same_events_as_stream():
    prompt = pk.Prompt(query="{{ text }}", output_type=Person)
    replies = ['{"name": "Bob", "age": 1}', PERSON]

    async def collect() -> list[pk.StreamEvent]:
        backend = ScriptedBackend(replies)
        return [e async for e in prompt.astream({"text": TEXT}, backend=backend)]

    streamed = asyncio.run(collect())
    synced = events_of(prompt, replies)
    assert [(e.delta, e.partial, e.attempt, e.text, e.error) for e in streamed[:-1]] == [
        (e.delta, e.partial, e.attempt, e.text, e.error) for e in synced[:-1]
    ]
    assert streamed[-1].partial == synced[-1].partial
    assert streamed[-1].result is not None and synced[-1].result is not None
    assert streamed[-1].result.output == synced[-1].result.output
    assert "does not occur in the input" in (streamed[len(replies[0].split())].error or "")


def test_usage_is_counted_when_a_stream_returns_only_text():
    prompt = pk.Prompt(query="{{ text }}", style="completion")
    backend = Counting()

    class Short(Counting):
        def _stream_complete(self, text, config):
            yield "abcd" * 3

    events = list(prompt.stream({"text": TEXT}, backend=Short()))
    result = events[-1].result
    assert result is not None and result.output == "abcd" * 3
    prompt_text = prompt.render({"text": TEXT})
    assert result.usage == Usage(backend.count_tokens(prompt_text), 3)


def test_partial_models_keep_constraints_and_nest():
    class Team(BaseModel):
        lead: Person
        members: list[Person]
        deputy: Person | None = None

    partial = partial_model(Team)
    assert partial.model_validate({}).lead is None
    team = partial.model_validate({"members": [{"name": "Ada"}], "deputy": {"name": "Bo"}})
    assert team.members[0].name == "Ada" and team.members[0].age is None
    assert team.deputy is not None and team.deputy.name == "Bo" and team.deputy.age is None
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        partial.model_validate({"lead": {"age": -1}})
