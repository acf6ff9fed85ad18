"""Output types as grammars (no model needed): mapping, Regex/Lark outputs, short valid endings."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

import promptkit as pk
from promptkit.constraints import Grammar, grammar_for, shortest_ending
from promptkit.errors import ConstraintError, OutputParseError, TemplateError
from promptkit.parsing import output_spec

pytest.importorskip("llguidance")


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Item(BaseModel):
    sku: Annotated[str, pk.Regex(r"[A-Z]{2}-[0-9]{3}")]
    count: int = Field(ge=1, le=9)


@pytest.mark.parametrize(
    "output_type, kind, accepts, refuses",
    [
        (Literal["yes", "no"], "choice", ["yes", " no"], ["maybe", "yes no", "  yes"]),
        (Color, "choice", ["red", " green"], ["blue", "RED"]),
        (int, "json_schema", ["42", " -7"], ["4.5", "forty", "42 "]),
        (float, "json_schema", ["4.5", "1e3"], ["abc", "1.", ""]),
        (bool, "json_schema", ["true", " false"], ["yes", "True"]),
        (list[str], "json_schema", ['["a","b"]', "[]"], ['["a", "b"]', "[1]"]),
        (
            Item,
            "json_schema",
            ['{"sku":"AB-123","count":3}', ' {"sku":"ZZ-000","count":9}'],
            ['{"sku":"AB-12","count":3}', '{"sku":"AB-123","count":10}', '{"sku": "AB-123"}'],
        ),
        (pk.Regex(r"[0-9]{3}-[a-z]+"), "regex", ["123-abc"], ["12-abc", " 123-abc", "123-"]),
        (pk.Lark('start: "on" | "off" NUM\nNUM: /[0-9]+/'), "lark", ["on", "off12"], ["of"]),
    ],
)
def test_output_types_become_grammars(output_type, kind, accepts, refuses):
    grammar = grammar_for(output_spec(output_type))
    assert grammar is not None and grammar.kind == kind
    for text in accepts:
        assert grammar.matches(text), text
    for text in refuses:
        assert not grammar.matches(text), text


def test_free_text_has_no_grammar():
    assert grammar_for(output_spec(str)) is None


def test_json_grammars_are_compact():
    grammar = grammar_for(output_spec(dict[str, int]))
    assert grammar is not None
    assert grammar.matches('{"a":1,"b":2}')
    assert not grammar.matches('{"a": 1}')
    assert not grammar.matches('{"a":1,\n"b":2}')


def test_regex_output_parses_and_reports_mismatches():
    spec = output_spec(pk.Regex(r"[A-Z]{3}"))
    assert spec.parse(" ABC\n") == "ABC"
    with pytest.raises(OutputParseError, match=r"does not match the regular expression \[A-Z\]"):
        spec.parse("abcd")
    assert "regular expression [A-Z]{3}" in spec.format_instructions()
    with pytest.raises(TemplateError, match="invalid regular expression"):
        pk.Regex("(unclosed")


def test_regex_inside_a_model_is_a_schema_pattern_and_a_validator():
    schema = Item.model_json_schema()
    assert schema["properties"]["sku"]["pattern"] == "^(?:[A-Z]{2}-[0-9]{3})$"
    assert Item.model_validate({"sku": "AB-123", "count": 2}).sku == "AB-123"
    with pytest.raises(OutputParseError, match="sku: text does not match"):
        output_spec(Item).parse('{"sku":"nope","count":2}')


def test_lark_output_parses():
    spec = output_spec(pk.Lark('start: "on" | "off"'))
    assert spec.parse("off") == "off"
    with pytest.raises(OutputParseError, match="Lark grammar"):
        spec.parse("maybe")


@pytest.mark.parametrize(
    "grammar, prefix",
    [
        (Grammar("regex", "a*b"), ""),
        (Grammar("regex", "(ab)+c"), "aba"),
        (Grammar.json_schema({"type": "string", "minLength": 5}), '"x'),
        (Grammar.json_schema({"type": "integer", "minimum": 18, "maximum": 30}), "2"),
        (Grammar.json_schema({"type": "number", "minimum": 0.5, "maximum": 0.7}), "0."),
        (Grammar.json_schema(Item.model_json_schema()), '{"sku":"A'),
        (
            Grammar.json_schema(
                {
                    "type": "array",
                    "minItems": 2,
                    "items": {
                        "type": "object",
                        "properties": {"x": {"type": "array", "items": {"type": "string"}}},
                        "required": ["x"],
                    },
                }
            ),
            '[{"x":["open',
        ),
        (Grammar.choice(("alpha", "beta")), " be"),
        (Grammar("lark", 'start: "(" start ")" | "x"'), "((("),
    ],
)
def test_short_valid_endings(grammar, prefix):
    matcher = grammar.byte_matcher()
    assert matcher.consume_tokens(list(prefix.encode()))
    ending = shortest_ending(matcher, 200)
    assert ending is not None
    assert grammar.matches(prefix + ending.decode()), prefix + ending.decode()
    assert len(ending) <= 40
    assert not matcher.is_accepting() or ending == b""  # the matcher was left as it was


def test_constraint_errors_name_the_feature():
    lookahead = Grammar.json_schema({"type": "string", "pattern": "(?=a)b"})
    with pytest.raises(ConstraintError) as caught:
        lookahead.compiled()
    assert "look-around" in (caught.value.feature or "")
    with pytest.raises(ConstraintError, match="unknown name"):
        Grammar("lark", "start: nothing_here").compiled()


def test_choice_labels_are_escaped():
    grammar = Grammar.choice(('say "hi"', "back\\slash"))
    assert grammar.matches('say "hi"') and grammar.matches("back\\slash")
    assert json.loads(grammar.source) == ['say "hi"', "back\\slash"]


def test_regex_and_lark_outputs_round_trip_through_files(tmp_path):
    for output_type in (pk.Regex(r"[0-9]{4}"), pk.Lark('start: "a" | "b"')):
        prompt = pk.Prompt(query="Q: {{ q }}", output_type=output_type, name="t")
        path = tmp_path / "t.prompty"
        pk.save_prompt(prompt, path)
        loaded = pk.load_prompt(path)
        assert loaded.output.text_constraint == output_type
    bad = tmp_path / "bad.prompty"
    bad.write_text("---\noutput:\n  regex: 5\n---\n{{ q }}\n")
    with pytest.raises(TemplateError, match="output.regex must be a string"):
        pk.load_prompt(bad)
