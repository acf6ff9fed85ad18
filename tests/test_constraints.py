"""Output types as grammars (no model needed): mapping, Regex/Lark outputs, short valid endings."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

import promptkit as pk
from promptkit._endings import shortest_ending
from promptkit._grammar import Grammar, grammar_for, span_grammar
from promptkit._parsing import output_spec
from promptkit.errors import ConstraintError, OutputParseError, TemplateError

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


# -- spans: strings copied from an input ---------------------------------------------------


class Sighting(BaseModel):
    name: Annotated[str, pk.SpanOf("text")]
    city: Annotated[str, pk.SpanOf("text")] | None
    count: int = Field(ge=0)
    code: Annotated[str, pk.SpanOf("text"), pk.Regex(r"[A-Z]{2}[0-9]")] | None = None


SIGHTING = 'Ana "the Owl" Lima saw 3 owls in Porto\nnear box QX7, she said.'


@pytest.mark.parametrize(
    "answer",
    [
        '{"name":"Ana \\"the Owl\\" Lima","city":"Porto","count":3,"code":"QX7"}',
        ' {"name":"Ana","city":null,"count":0,"code":null}',
        '{"name":"Porto\\nnear box QX7, she said.","city":"Lima saw 3","count":1,"code":null}',
    ],
)
def test_a_span_grammar_accepts_any_stretch_of_the_input(answer):
    grammar = span_grammar(output_spec(Sighting), {"text": SIGHTING})
    assert grammar is not None and grammar.kind == "lark"
    assert grammar.matches(answer), answer
    value = output_spec(Sighting).parse(answer, {"text": SIGHTING})
    assert value.name in SIGHTING


@pytest.mark.parametrize(
    "answer, why",
    [
        ('{"name":"Ana Lma","city":null,"count":3,"code":null}', "misspelt"),
        ('{"name":"Bea","city":null,"count":3,"code":null}', "not in the text"),
        ('{"name":" Ana","city":null,"count":3,"code":null}', "leading space"),
        ('{"name":"Ana ","city":null,"count":3,"code":null}', "trailing space"),
        ('{"name":"na","city":null,"count":3,"code":null}', "not from a word start"),
        ('{"name":"Ana","city":null,"count":-1,"code":null}', "count below its minimum"),
        ('{"name":"Ana","city":null,"count":3,"code":"owls"}', "span outside the pattern"),
        ('{"name":"Ana", "city":null,"count":3,"code":null}', "free whitespace"),
        ('{"city":null,"name":"Ana","count":3,"code":null}', "keys out of order"),
    ],
)
def test_a_span_grammar_refuses_what_is_not_copied_or_not_valid(answer, why):
    grammar = span_grammar(output_spec(Sighting), {"text": SIGHTING})
    assert grammar is not None
    assert not grammar.matches(answer), why


def test_a_span_output_and_spans_in_nested_records():
    spanned = Annotated[str, pk.SpanOf("passage")]
    grammar = span_grammar(output_spec(spanned), {"passage": "The capital is\nParis.\nEnd"})
    assert grammar is not None
    assert grammar.matches(" Paris") and grammar.matches("capital is\nParis.")
    assert not grammar.matches("Rome") and not grammar.matches("Paris.\n")

    class Nested(BaseModel):
        people: list[Sighting]

    nested = span_grammar(output_spec(Nested), {"text": SIGHTING})  # spans at any depth
    assert nested is not None and nested.matches('{"people":[]}')
    one = '{"name":"Ana","city":null,"count":3,"code":null}'
    assert nested.matches('{"people":[' + one + "]}")
    assert not nested.matches('{"people":[' + one.replace("Ana", "Bea") + "]}")
    assert span_grammar(output_spec(Item), {"text": SIGHTING}) is None  # no spans at all


def test_span_keyword_is_neither_shown_nor_sent_as_schema():
    spec = output_spec(Sighting)
    assert spec.schema["properties"]["name"]["x-span-of"] == "text"
    assert "x-span-of" not in spec.format_instructions()
    grammar = grammar_for(spec)
    assert grammar is not None and "x-span-of" not in grammar.source


def test_spans_are_validated_against_the_inputs_when_known():
    spec = output_spec(Sighting)
    answer = '{"name":"Bea Lima","city":"Porto","count":3}'
    assert spec.parse(answer).name == "Bea Lima"  # no inputs: nothing to compare with
    with pytest.raises(OutputParseError) as caught:
        spec.parse(answer, {"text": SIGHTING})
    assert "name: 'Bea Lima' does not occur in the input 'text'" in str(caught.value)
    assert caught.value.raw_text == answer
    with pytest.raises(OutputParseError, match="does not occur"):
        spec.parse(answer, {"text": None})
    with pytest.raises(TemplateError, match="name of an input field"):
        pk.SpanOf("not a name")


@pytest.mark.parametrize("empty", ["", "  \n ", None, ' . , ; "" \n !'])
def test_an_input_with_nothing_to_copy_leaves_no_span_to_choose(empty):
    with pytest.raises(ConstraintError, match="input 'text', which holds no letter or digit"):
        span_grammar(output_spec(Sighting), {"text": empty})
    with pytest.raises(ConstraintError, match="holds no letter or digit"):
        span_grammar(output_spec(Annotated[str, pk.SpanOf("text")]), {"text": empty})

    class MaybeCity(BaseModel):
        city: Annotated[str, pk.SpanOf("text")] | None

    grammar = span_grammar(output_spec(MaybeCity), {"text": empty})
    assert grammar is not None and grammar.matches('{"city":null}')
    assert not grammar.matches('{"city":""}') and not grammar.matches('{"city":"."}')


@pytest.mark.parametrize(
    "name", [".", ",", '\\"', "", "\\n", ". ,", "\\n\\n", "\\u0007", '\\"\\n,']
)
def test_a_span_grammar_refuses_spans_without_a_letter_or_digit(name):
    text = 'Ana, Bo.\n\n"\u0007" . , x'
    grammar = span_grammar(output_spec(Sighting), {"text": text})
    assert grammar is not None
    answer = '{"name":"' + name + '","city":null,"count":1,"code":null}'
    assert not grammar.matches(answer), answer
    assert grammar.matches('{"name":"Bo.\\n\\n\\"","city":"x","count":1,"code":null}')
    assert grammar.matches('{"name":"\\"\\u0007\\" . , x","city":null,"count":1,"code":null}')
    spanned = output_spec(Annotated[str, pk.SpanOf("text")])
    plain = span_grammar(spanned, {"text": text})
    assert plain is not None and plain.matches("Ana,") and plain.matches(" Bo")
    assert not plain.matches(".") and not plain.matches(". ,") and not plain.matches('"\u0007"')


@pytest.mark.parametrize("name", [".", ",", "", " ", '"', "-", "\n"])
def test_a_span_without_a_letter_or_digit_is_refused_by_validation(name):
    text = 'Ana, Bo.\n\n"\u0007" . , x -'
    answer = json.dumps({"name": name, "city": None, "count": 1})
    for inputs in ({"text": text}, None):  # refused with or without the inputs
        with pytest.raises(OutputParseError, match="holds no letter or digit") as caught:
            output_spec(Sighting).parse(answer, inputs)
        assert "copy a word or name from the input 'text'" in str(caught.value)
        assert caught.value.raw_text == answer


@pytest.mark.parametrize("name", ["Zoë", "٣", "x", "QX7", "Bo."])
def test_spans_of_any_script_or_digit_are_words(name):
    text = "Zoë and ٣ met x at QX7. Bo."
    answer = {"name": name, "city": None, "count": 1, "code": None}
    compact = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
    assert output_spec(Sighting).parse(compact, {"text": text}).name == name
    grammar = span_grammar(output_spec(Sighting), {"text": text})
    assert grammar is not None and grammar.matches(compact)


class _Step(BaseModel):
    name: Annotated[str, pk.SpanOf("text")]
    note: str


class _Walkthrough(BaseModel):
    summary: str
    steps: Annotated[list[_Step], Field(min_length=1, max_length=3)]


def test_spans_inside_arrays_of_objects_are_held_to_the_input():
    """A span nested in a list of records (the code explainer's method names) is decoded from
    the input too, within the list's bounds; before, only top-level spans were, and a nested
    one was refused by validation after the model had written it."""
    grammar = span_grammar(output_spec(_Walkthrough), {"text": "def load(path): return 1"})
    assert grammar is not None and grammar.kind == "lark"
    good = '{"summary":"s","steps":[{"name":"load","note":"n"},{"name":"path","note":"m"}]}'
    assert grammar.matches(good)
    assert not grammar.matches(good.replace('"path"', '"summary"'))  # not in the input
    assert not grammar.matches('{"summary":"s","steps":[]}')  # min_length 1
    four = ",".join(['{"name":"load","note":"n"}'] * 4)
    assert not grammar.matches('{"summary":"s","steps":[' + four + "]}")  # max_length 3
