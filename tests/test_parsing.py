from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

import promptkit as pk
from promptkit import parse_output
from promptkit._parsing import extract_json
from promptkit.errors import OutputParseError, PromptkitError


class Person(BaseModel):
    name: str
    age: int


class Nested(BaseModel):
    people: list[Person]
    note: str | None = None


class Colour(enum.Enum):
    RED = "red"
    DARK_BLUE = "dark blue"


Sentiment = Literal["positive", "negative"]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "age": 36}',
        'Sure! Here it is: {"name": "Ada", "age": 36} Hope that helps {really}.',
        'Here:\n```json\n{"name": "Ada", "age": 36}\n```\nThe age is an estimate.',
        '```\n{"name": "Ada",\n "age": 36}\n```',
        'Not this {broken json, but this {"name": "Ada", "age": 36}',
        '[1, 2] then {"name": "Ada", "age": 36}',
    ],
)
def test_json_is_found_in_prose_and_fences(text):
    assert parse_output(text, Person) == Person(name="Ada", age=36)


def test_validation_errors_name_the_field_and_keep_the_text():
    text = '{"name": "Ada", "age": "old"}'
    with pytest.raises(OutputParseError) as info:
        parse_output(text, Person)
    assert "age" in str(info.value) and info.value.raw_text == text


def test_missing_json_is_a_clear_error():
    with pytest.raises(OutputParseError, match="no JSON object found"):
        parse_output("I don't know", Person)


def test_nested_models_and_lists():
    text = 'Result: {"people": [{"name": "A", "age": 1}, {"name": "B", "age": 2}]}'
    assert parse_output(text, Nested).people[1].name == "B"
    assert parse_output('["a", "b"]', list[str]) == ["a", "b"]
    assert parse_output('The list: ["a", "b"].', list[str]) == ["a", "b"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("positive", "positive"),
        ("  Positive \n", "positive"),
        ("NEGATIVE.", "negative"),
        ('"negative"', "negative"),
        ("Positive. The review praises the cast.", "positive"),
        ("**negative**", "negative"),
    ],
)
def test_labels_match_case_and_whitespace_insensitively(text, expected):
    assert parse_output(text, Sentiment) == expected


def test_unknown_label_lists_the_allowed_ones():
    with pytest.raises(OutputParseError, match="allowed labels: positive, negative"):
        parse_output("neutral", Sentiment)
    with pytest.raises(OutputParseError):
        parse_output("positively great", Sentiment)


def test_enum_labels_and_multiword_labels():
    assert parse_output("Dark   Blue", Colour) is Colour.DARK_BLUE
    assert parse_output("red", Colour) is Colour.RED


@pytest.mark.parametrize(
    "text, tp, expected",
    [
        ("42", int, 42),
        ("The answer is 2.", int, 2),
        (" -7 ", int, -7),
        ("3.5", float, 3.5),
        ("about 1e3 units", float, 1000.0),
        ("yes", bool, True),
        ("False.", bool, False),
        ("  hello world \n", str, "hello world"),
    ],
)
def test_scalars(text, tp, expected):
    assert parse_output(text, tp) == expected


def test_scalar_constraints_are_validated():
    with pytest.raises(OutputParseError, match="greater than or equal to 0"):
        parse_output("-1", Annotated[int, Field(ge=0)])
    with pytest.raises(OutputParseError):
        parse_output("2.5", int)
    with pytest.raises(OutputParseError, match="no number"):
        parse_output("none", int)
    with pytest.raises(OutputParseError, match="true/false"):
        parse_output("perhaps", bool)


def test_extract_json():
    assert extract_json('x {"a": [1, {"b": 2}]} y') == {"a": [1, {"b": 2}]}
    with pytest.raises(OutputParseError):
        extract_json("no json here")


OUTPUT_TYPES: list[Any] = [
    Person,
    Nested,
    Sentiment,
    Colour,
    int,
    float,
    bool,
    str,
    list[str],
    Annotated[int, Field(ge=0, le=10)],
    dict[str, int],
    pk.Regex(r"[0-9]+"),
]

# What Python's own readers refuse with RecursionError or ValueError("Exceeds the limit (4300
# digits)"): nesting deeper than any answer, integers longer than Python converts from text.
HOSTILE = [
    "[" * 100_000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    "[" * 300 + "]" * 300,
    "9" * 5000,
    "-" + "9" * 5000,
    "0." + "9" * 5000,
    '{"age": ' + "9" * 5000 + "}",
    '{"name": "Ada", "age": ' + "9" * 5000 + "}",
    '```json\n{"people": [' + "9" * 5000 + "]}\n```",
    "The answer: [" + "9" * 5000 + "]",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("output_type", OUTPUT_TYPES, ids=repr)
def test_deep_nesting_and_long_integers_are_output_parse_errors(output_type):
    for text in HOSTILE:
        try:
            parse_output(text, output_type)
        except OutputParseError as exc:
            assert exc.raw_text == text


@pytest.mark.parametrize(
    "text, output_type, says",
    [
        ("9" * 5000, int, "has 5000 digits, too many to read"),
        ('{"age": ' + "9" * 5000 + "}", Person, "cannot be read: number out of range"),
        ('{"a":' * 3000 + "1" + "}" * 3000, dict[str, int], "nested too deeply to read"),
        ("[" * 300 + "]" * 300, Person, "cannot be read: recursion limit exceeded"),
    ],
    ids=["long-integer", "long-integer-in-object", "deep-stdlib-limit", "deep-pydantic-limit"],
)
def test_unreadable_json_says_why(text, output_type, says):
    with pytest.raises(OutputParseError, match=says) as info:
        parse_output(text, output_type)
    assert info.value.raw_text == text


@pytest.mark.timeout(60)
def test_an_unreadable_answer_is_reasked_and_kept():
    from promptkit.backends import ScriptedBackend

    prompt = pk.Prompt(query="Who? {{ text }}", output_type=Person)
    hostile = '{"name": "Ada", "age": ' + "9" * 5000 + "}"
    backend = ScriptedBackend(["[" * 100_000, hostile, '{"name": "Ada", "age": 36}'])
    result = prompt.run({"text": "Ada, 36"}, backend=backend)
    assert result.output == Person(name="Ada", age=36)
    deep, long = result.attempts[:2]
    assert deep.text == "[" * 100_000 and "nested too deeply to read" in (deep.error or "")
    assert long.text == hostile and "number out of range" in (long.error or "")


def test_long_but_readable_integers_still_parse():
    assert parse_output("9" * 4000, int) == int("9" * 4000)
    assert parse_output('{"name": "Ada", "age": ' + "9" * 4000 + "}", Person).age > 0


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(),
        st.text(alphabet='{}[]",:0123456789 truefalsnul\n`json-.eE', max_size=60),
        st.builds(lambda a, b: f"{a}```json\n{b}\n```", st.text(max_size=20), st.text(max_size=40)),
        st.builds(lambda a, b: a + b, st.text(max_size=20), st.sampled_from(HOSTILE)),
        st.builds(
            lambda opener, depth, digits: opener * depth + "9" * digits,
            st.sampled_from(["[", '{"a":', '{"age": ', "[1, "]),
            st.integers(0, 1100),
            st.integers(1, 6000),
        ),
    ),
    output_type=st.sampled_from(OUTPUT_TYPES),
)
def test_arbitrary_text_raises_only_promptkit_errors(text, output_type):
    try:
        parse_output(text, output_type)
    except PromptkitError as exc:
        assert isinstance(exc, OutputParseError)
        assert exc.raw_text == text


def test_labels_keep_the_order_each_type_declares_them_in():
    # Literal["yes", "no"] == Literal["no", "yes"]: the cache of specs must not hand one the
    # other's order (the format instructions list the labels in it).
    from promptkit._parsing import output_spec

    assert output_spec(Literal["yes", "no"]).labels == ("yes", "no")
    assert output_spec(Literal["no", "yes"]).labels == ("no", "yes")
    assert output_spec(list[Literal["no", "yes"]]) is output_spec(list[Literal["no", "yes"]])
