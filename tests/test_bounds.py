"""Output bounds that come from the inputs (templates in an output schema) and Prompt(check=...)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

import promptkit as pk
from promptkit._schema import type_from_schema
from promptkit.backends import ScriptedBackend
from promptkit.errors import (
    InputValidationError,
    MissingVariableError,
    OutputValidationError,
    TemplateError,
    UsageError,
)

QUESTION = {"context": "It rained.", "question": "What got wet?"}


def choices(*answers: str) -> dict[str, Any]:
    return {**QUESTION, "answers": list(answers)}


# -- the bundled multiple_choice: an index below the number of answers ----------------------


def test_multiple_choice_reasks_an_index_past_the_last_answer():
    prompt = pk.load_prompt("multiple_choice")
    backend = ScriptedBackend(["3222", "2"])
    result = prompt.run(choices("the road", "the sun", "the sky"), backend=backend)
    assert result.output == 2
    first, accepted = result.attempts
    assert first.text == "3222" and accepted.error is None
    assert (
        first.error
        == "the answer does not validate: answer: Input should be less than or equal to 2"
    )
    follow_up = backend.requests[1].prompt[-1]["content"]
    assert "Input should be less than or equal to 2" in follow_up


@pytest.mark.parametrize("count", [1, 2, 5])
def test_the_bound_is_rendered_for_each_call(count):
    prompt = pk.load_prompt("multiple_choice")
    inputs = choices(*(f"answer {i}" for i in range(count)))
    assert prompt.run(inputs, backend=ScriptedBackend([str(count - 1)])).output == count - 1
    with pytest.raises(OutputValidationError, match=f"less than or equal to {count - 1}") as info:
        prompt.run(inputs, backend=ScriptedBackend([str(count)]), max_attempts=1)
    assert info.value.attempts[0].text == str(count)
    assert prompt.output.parse(str(count)) == count  # outside a run: no inputs, no bound


def test_the_grammar_enforces_the_rendered_bound():
    pytest.importorskip("llguidance")
    from promptkit._grammar import grammar_for

    prompt = pk.load_prompt("multiple_choice")
    for count in (2, 4):
        grammar = grammar_for(prompt.output, choices(*("x" * i for i in range(1, count + 1))))
        assert grammar is not None
        assert [grammar.matches(str(i)) for i in range(count + 2)] == [True] * count + [False] * 2
        assert grammar.matches(f" {count - 1}") and not grammar.matches("-1")
    unbounded = grammar_for(prompt.output)  # without inputs the bound is left to validation
    assert unbounded is not None and unbounded.matches("3222")
    assert "x-from-inputs" not in unbounded.source


OBJECT_FILE = """---
inputs:
  items: {type: array}
  most: {type: integer}
output:
  schema:
    type: object
    properties:
      picks:
        type: array
        items: {type: string}
        minItems: 1
        maxItems: "{{ most }}"
      best:
        type: integer
        exclusiveMaximum: "{{ items|length }}"
    required: [picks, best]
---
Pick from {{ items|join(", ") }}.
"""


def test_format_instructions_and_validation_of_an_object_use_each_calls_bounds(tmp_path: Path):
    path = tmp_path / "pick.prompty"
    path.write_text(OBJECT_FILE)
    prompt = pk.load_prompt(path)
    two = prompt.render({"items": ["a", "b", "c"], "most": 2})
    five = prompt.render({"items": ["a", "b"], "most": 5})
    assert isinstance(two, str) and isinstance(five, str)
    assert '"maxItems":2' in two and '"exclusiveMaximum":3' in two
    assert '"maxItems":5' in five and '"exclusiveMaximum":2' in five
    assert "x-from-inputs" not in two + five
    backend = ScriptedBackend(
        [
            '{"picks": ["a", "b", "c"], "best": 0}',
            '{"picks": ["a"], "best": 3}',
            '{"picks": ["a"], "best": 2}',
        ]
    )
    result = prompt.run({"items": ["a", "b", "c"], "most": 2}, backend=backend)
    assert result.output.best == 2
    errors = [attempt.error for attempt in result.attempts]
    assert errors[0] == "the answer does not validate: picks: Input should have at most 2 items"
    assert errors[1] == "the answer does not validate: best: Input should be less than 3"


def test_the_grammar_of_an_object_enforces_each_calls_bounds(tmp_path: Path):
    pytest.importorskip("llguidance")
    from promptkit._grammar import grammar_for

    path = tmp_path / "pick.prompty"
    path.write_text(OBJECT_FILE)
    prompt = pk.load_prompt(path)
    grammar = grammar_for(prompt.output, {"items": ["a", "b", "c"], "most": 2})
    assert grammar is not None and grammar.matches('{"picks":["a","b"],"best":2}')
    assert not grammar.matches('{"picks":["a","b","c"],"best":0}')  # maxItems 2
    assert not grammar.matches('{"picks":["a"],"best":3}')  # exclusiveMaximum 3
    wider = grammar_for(prompt.output, {"items": ["a", "b", "c", "d"], "most": 3})
    assert wider is not None and wider.matches('{"picks":["a","b","c"],"best":3}')


def test_a_types_own_schema_rebuilds_the_same_bounds(tmp_path: Path):
    prompt = pk.load_prompt("multiple_choice")
    rebuilt = TypeAdapter(type_from_schema(prompt.output.schema))
    inputs = {"inputs": {"answers": ["a", "b"]}}
    assert rebuilt.validate_python(1, context=inputs) == 1
    with pytest.raises(ValueError, match="less than or equal to 1"):
        rebuilt.validate_python(2, context=inputs)
    saved = pk.save_prompt(prompt, tmp_path / "mc.prompty")
    again = pk.load_prompt(saved)
    with pytest.raises(OutputValidationError, match="less than or equal to 1"):
        again.run(choices("a", "b"), backend=ScriptedBackend(["2"]), max_attempts=1)


# -- a bad bound is a clear TemplateError when the file loads ------------------------------

MC_FILE = """---
inputs:
  answers: {type: array}
  label: {type: string}
output:
  type: integer
  maximum: BOUND
---
{{ label }}: {% for a in answers %}{{ a }} {% endfor %}
"""


@pytest.mark.parametrize(
    "bound, says",
    [
        ('"{{ answers|length - }}"', "the output schema's maximum '{{ answers|length - }}' fails"),
        ('"{{ answers|length"', "the output schema's maximum '{{ answers|length' fails"),
        (
            '"{{ choices|length - 1 }}"',
            "the output schema's bounds use 'choices', which is not an input",
        ),
        ('"many"', "the output schema's maximum 'many' rendered 'many', not a finite number"),
        ('"{{ 1 / 0 }}"', "ZeroDivisionError"),
        ("true", "the output schema's maximum at 'Output' must be a number or a template"),
        ("[1, 2]", "must be a number or a template over the inputs"),
    ],
)
def test_a_bad_bound_is_a_template_error_at_load(tmp_path: Path, bound, says):
    path = tmp_path / "bad.prompty"
    path.write_text(MC_FILE.replace("BOUND", bound))
    with pytest.raises(TemplateError) as info:
        pk.load_prompt(path)
    assert says in str(info.value)
    assert str(path) in str(info.value)


def test_a_bound_for_the_wrong_type_or_given_twice_is_refused():
    with pytest.raises(TemplateError, match="keyword maxLength at 'Output'"):
        type_from_schema({"type": "integer", "x-from-inputs": {"maxLength": "{{ n }}"}})
    with pytest.raises(TemplateError, match="maximum at 'Output' is given twice"):
        type_from_schema({"type": "integer", "maximum": 3, "x-from-inputs": {"maximum": "{{ n }}"}})
    with pytest.raises(TemplateError, match="must map bound keywords to templates"):
        type_from_schema({"type": "integer", "x-from-inputs": "{{ n }}"})


def test_a_bound_that_renders_no_number_fails_before_any_model_call(tmp_path: Path):
    path = tmp_path / "label.prompty"
    path.write_text(MC_FILE.replace("BOUND", '"{{ label }}"'))
    prompt = pk.load_prompt(path)
    backend = ScriptedBackend(["1"])
    with pytest.raises(TemplateError, match="maximum '{{ label }}' rendered 'Pick', not a finite"):
        prompt.run({"answers": ["a"], "label": "Pick"}, backend=backend)
    assert backend.requests == []
    assert isinstance(TemplateError("x"), UsageError)
    lengths = type_from_schema({"type": "string", "maxLength": "{{ n }}"})
    with pytest.raises(TemplateError, match="not a whole number >= 0"):
        TypeAdapter(lengths).validate_python("abc", context={"inputs": {"n": "-1"}})
    huge = TypeAdapter(type_from_schema({"type": "number", "maximum": "{{ n }}"}))
    assert huge.validate_python(5, context={"inputs": {"n": 10**400}}) == 5
    for bad in ("inf", "nan", "1e999"):
        with pytest.raises(TemplateError, match="not a finite number"):
            huge.validate_python(5, context={"inputs": {"n": bad}})
    with pytest.raises(MissingVariableError, match="'n'"):
        TypeAdapter(lengths).validate_python("abc", context={"inputs": {}})


# -- Prompt(check=...): what a type cannot say, in Python ----------------------------------


class Question(BaseModel):
    question: str
    choices: list[str]


def index_prompt(**options: Any) -> pk.Prompt[int]:
    return pk.Prompt(
        query="{{ question }} {{ choices }}", input_type=Question, output_type=int, **options
    )


INPUTS = {"question": "Which?", "choices": ["a", "b", "c"]}


def test_a_failed_check_is_reasked_with_its_reason_and_kept_in_the_attempts():
    prompt = index_prompt(check=lambda inputs, index: index < len(inputs.choices))
    backend = ScriptedBackend(["5", "2"])
    result = prompt.run(INPUTS, backend=backend)
    assert result.output == 2
    assert [a.text for a in result.attempts] == ["5", "2"]
    reason = result.attempts[0].error
    assert reason is not None and "failed the prompt's check" in reason and "<lambda>" in reason
    assert reason in backend.requests[1].prompt[-1]["content"]


def below_the_number_of_choices(inputs: Question, index: int) -> None:
    if index >= len(inputs.choices):
        raise ValueError(f"{index} is not an index of the {len(inputs.choices)} choices")


def test_a_check_that_raises_gives_its_message_and_attempts_run_out():
    prompt = index_prompt(check=below_the_number_of_choices)
    with pytest.raises(OutputValidationError) as info:
        prompt.run(INPUTS, backend=ScriptedBackend(["3", "4"]), max_attempts=2)
    assert [a.error for a in info.value.attempts] == [
        "3 is not an index of the 3 choices",
        "4 is not an index of the 3 choices",
    ]
    assert info.value.raw_text == "4"
    assert "last error: 4 is not an index of the 3 choices" in str(info.value)


def test_arun_checks_too():
    prompt = index_prompt(check=below_the_number_of_choices)
    result = asyncio.run(prompt.arun(INPUTS, backend=ScriptedBackend(["7", "0"])))
    assert result.output == 0 and result.attempts[0].error == "7 is not an index of the 3 choices"


def test_examples_must_pass_the_check():
    bad = pk.Example(input=INPUTS, output=3)
    with pytest.raises(InputValidationError, match="example 0 output 3 fails the check: 3 is not"):
        index_prompt(check=below_the_number_of_choices, examples=[bad])
    loaded = pk.load_prompt("multiple_choice")
    assert loaded.check is None
    checked = loaded.with_check(lambda inputs, index: index != 1)
    with pytest.raises(OutputValidationError, match="failed the prompt's check"):
        checked.run(choices("a", "b"), backend=ScriptedBackend(["1"]), max_attempts=1)
    assert loaded.run(choices("a", "b"), backend=ScriptedBackend(["1"])).output == 1
    with pytest.raises(InputValidationError, match="example 0 output 0 fails the check"):
        loaded.with_check(lambda inputs, index: index > 0)


@pytest.mark.parametrize("check", ["index < 3", 42])
def test_a_check_must_be_callable(check):
    with pytest.raises(UsageError, match="check must be a callable check\\(inputs, output\\)"):
        index_prompt(check=check)


def test_a_check_must_say_true_false_or_none():
    prompt = index_prompt(check=lambda inputs, index: "looks wrong")
    with pytest.raises(UsageError, match="returned str; it must return True, False or None"):
        prompt.run(INPUTS, backend=ScriptedBackend(["1"]))
