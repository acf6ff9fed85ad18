from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

import promptkit as pk
from promptkit.errors import ConfigurationError, MissingVariableError, TemplateError

DATA = Path(__file__).parent / "data" / "prompty"


def test_real_prompty_file_loads_and_renders_its_sample():
    prompt = pk.load_prompt(DATA / "basic.prompty")
    assert prompt.name == "Basic Prompt" and prompt.style == "chat"
    assert set(prompt.input_type.model_fields) == {"firstName", "lastName", "context", "question"}
    assert prompt.config == pk.backends.GenerationConfig(max_tokens=128, temperature=0.2)
    messages = prompt.render(prompt.metadata["sample"])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith("You are an AI assistant")
    assert "You are helping Jane Doe to find answers" in messages[0]["content"]
    assert messages[1]["content"] == "What kind of clothing do you recommend?"
    assert prompt.metadata["authors"] == ["example-author"]


def test_model_configuration_keeps_env_references_unresolved(monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-secret-value")
    prompt = pk.load_prompt(DATA / "basic.prompty")
    configuration = prompt.metadata["model"]["configuration"]
    assert configuration["api_key"] == "${env:AZURE_OPENAI_API_KEY}"
    assert "sk-secret-value" not in repr(prompt) + json.dumps(prompt.metadata)


def test_prompty_without_inputs_infers_them_from_the_sample_file():
    prompt = pk.load_prompt(DATA / "chat.prompty")
    sample = prompt.metadata["sample"]
    assert sample["customer"]["firstName"] == "John"
    assert set(prompt.input_type.model_fields) == {"customer", "question", "chat_history"}
    messages = prompt.render(sample)
    # Prompty's history loop becomes the conversation's own messages, before the query
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert "The customer's name is John Smith and is 35 years old." in system
    assert "name: TrailMaster X4 Tent" in system
    assert "Hello John" not in system
    assert messages[2]["content"] == "Hello John! How can I help?"
    assert prompt.metadata["tags"] == ["chat", "retail"] and prompt.metadata["version"] == "1.0.2"


def test_plain_body_is_a_completion_template_with_typed_defaults():
    prompt = pk.load_prompt(DATA / "completion.prompty")
    assert prompt.style == "completion"
    assert prompt.render({}) == "Write a 2-line poem about the sea.\nPoem:"
    assert prompt.render({"topic": "rain", "lines": 4}).startswith("Write a 4-line poem about rain")
    assert prompt.config.stop == ("\n",)


def test_env_and_file_substitution(write, monkeypatch):
    monkeypatch.setenv("PK_TEST_LABEL", "positive")
    monkeypatch.delenv("PK_TEST_UNSET", raising=False)
    write(
        "schema.json",
        json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
    )
    path = write(
        "t.prompty",
        """---
name: subst
description: ${env:PK_TEST_UNSET:fallback text}
inputs:
  text: {type: string, default: "${env:PK_TEST_LABEL}"}
output:
  schema: ${file:schema.json}
---
{{ text }}
""",
    )
    # Environment references outside model: are read only for the names the caller allows.
    prompt = pk.load_prompt(path, allow_env=["PK_TEST_UNSET", "PK_TEST_LABEL"])
    assert prompt.description == "fallback text"
    assert prompt.render({}) == [{"role": "user", "content": "positive"}] or prompt.render(
        {}
    ).endswith("positive")
    assert prompt.output.parse('{"n": 3}').n == 3
    path.write_text(path.read_text().replace("PK_TEST_UNSET:fallback text", "PK_TEST_UNSET"))
    with pytest.raises(ConfigurationError, match="PK_TEST_UNSET"):
        pk.load_prompt(path, allow_env=["PK_TEST_UNSET", "PK_TEST_LABEL"])


def test_promptkit_keys_labels_examples_and_shots(write):
    path = write(
        "s.prompty",
        """---
name: s
model: {api: chat}
inputs:
  text: {type: string}
output:
  labels: ["yes", "no"]
examples:
  - {input: {text: a}, output: "yes"}
  - {input: {text: b}, output: "no"}
shots: 1
format_instructions: false
---
system:
Is it a?

user:
{{ text }}
""",
    )
    prompt = pk.load_prompt(path)
    assert prompt.output.labels == ("yes", "no")
    assert prompt.render({"text": "c"}) == [
        {"role": "system", "content": "Is it a?"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "c"},
    ]


def test_unknown_keys_are_kept_and_ignored(write):
    path = write("u.prompty", "---\nname: u\nfuture_key: {a: 1}\nsample: {x: 1}\n---\n{{ x }}\n")
    prompt = pk.load_prompt(path)
    assert prompt.metadata["future_key"] == {"a": 1}
    assert (
        prompt.render({"x": 5}) == [{"role": "user", "content": "5"}]
        or prompt.render({"x": 5}) == "5"
    )


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("---\nname: x\n", 1, "never closed"),
        ("---\nname: x\ninputs: [a\n---\nhi\n", 4, "invalid YAML"),
        ("---\nname: x\ninputs:\n  a: {type: wizard}\n---\n{{ a }}\n", 4, "unknown type"),
        ("---\ninputs:\n  a: {type: string}\n---\nuser:\n{{ a }}\n\n{{ b }}\n", 8, "'b'"),
        ("---\noutput: {labels: [yes, no]}\n---\nhi\n", 2, "YAML reads as booleans"),
        ("---\nname: x\n---\nuser:\nhi\nassistant:\nprefill\n", 6, "end with a 'user:'"),
        ("---\ntemplate: handlebars\n---\nhi\n", 2, "'handlebars' is not supported"),
        ("---\noutput: {type: wizard}\n---\nhi\n", 2, "output needs"),
        (
            "---\noutput: {schema: {type: object, properties: {a: {type: string}}, allOf: []}}\n"
            "---\nhi\n",
            2,
            "allOf",
        ),
        ("---\nname: x\n---\nuser:\n{% if %}\n", 5, "Expected an expression"),
        ("---\nname: x\n---\nfunction:\nhi\n", 4, "not supported"),
    ],
)
def test_malformed_files_report_file_and_line(write, text, line, match):
    path = write("bad.prompty", text)
    with pytest.raises(TemplateError, match=match) as info:
        pk.load_prompt(path)
    assert info.value.line == line
    assert str(path) in str(info.value)


def test_undeclared_variable_is_a_missing_variable_error(write):
    path = write("m.prompty", "---\ninputs: {a: {type: string}}\n---\n{{ a }} {{ b }}\n")
    with pytest.raises(MissingVariableError) as info:
        pk.load_prompt(path)
    assert info.value.names == ("b",) and info.value.line == 4


def test_unknown_file_lists_bundled_templates():
    with pytest.raises(TemplateError, match="bundled: .*sentiment"):
        pk.load_prompt("no/such/file.prompty")


def test_bundled_template_by_name():
    assert pk.load_prompt("sentiment").output.labels == ("positive", "negative")


class Person(BaseModel):
    name: str
    age: int | None = None


def _python_prompts():
    class In(BaseModel):
        text: str
        mode: Literal["a", "b"] = "a"
        n: int = 2

    yield pk.Prompt(
        instruction="Extract {{ mode }}.",
        query="T: {{ text }} {{ n }}",
        input_type=In,
        output_type=Person,
        system="Be {{ careful }}.",
        examples=[pk.Example(input={"text": "Al, 3"}, output={"name": "Al", "age": 3})],
        name="py",
    )
    yield pk.Prompt(
        query="Q: {{ q }}\nA:",
        output_type=Literal["x", "y"],
        style="completion",
        examples=[pk.Example(input={"q": "1"}, output="x")],
        shots=1,
        config=pk.backends.GenerationConfig(max_tokens=3, stop=["\n"]),
        format_instructions=False,
    )
    yield pk.Prompt(query="{{ q }}", output_type=int, turns=[("user", "hi"), ("assistant", "yo")])


@pytest.mark.parametrize(
    "prompt",
    [
        *_python_prompts(),
        *map(pk.load_prompt, [*pk.bundled_templates().values(), *DATA.glob("*.prompty")]),
    ],
    ids=lambda p: p.name or "prompt",
)
def test_save_then_load_round_trips(prompt, tmp_path):
    saved = pk.save_prompt(prompt, tmp_path / "out.prompty")
    again = pk.load_prompt(saved)
    sample = prompt.metadata.get("sample") or _fill(prompt)
    for style in ("chat", "completion"):
        for shots in range(len(prompt.examples) + 1):
            assert again.render(sample, shots=shots, style=style) == prompt.render(
                sample, shots=shots, style=style
            )
    assert again.output.schema == prompt.output.schema
    assert again.config == prompt.config and again.shots == prompt.shots
    assert again.style == prompt.style
    assert again.metadata == {**prompt.metadata, "model": again.metadata["model"]}
    assert pk.save_prompt(again, tmp_path / "twice.prompty").read_text() == saved.read_text()


def _fill(prompt):
    return {
        name: ("1" if info.annotation is str else 1)
        for name, info in prompt.input_type.model_fields.items()
        if info.is_required()
    }


def test_windows_line_endings_and_byte_order_mark(tmp_path):
    text = "---\nname: w\ninputs: {q: {type: string}}\n---\nsystem:\nBe brief.\n\nuser:\n{{ q }}\n"
    path = tmp_path / "w.prompty"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert pk.load_prompt(path).render({"q": "Hi"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    from promptkit._check import check_template

    assert check_template(path) == []


def test_prompty_2_property_lists_for_inputs_and_outputs(write):
    path = write(
        "v2.prompty",
        """---
name: v2
inputs:
  - name: question
    kind: string
    description: What to answer.
  - name: tone
    kind: string
    default: friendly
outputs:
  - name: answer
    kind: string
  - name: confidence
    kind: number
    example: 0.9
---
system:
Answer in a {{ tone }} tone.

user:
{{ question }}
""",
    )
    prompt = pk.load_prompt(path)
    assert prompt.input_type.model_fields["question"].description == "What to answer."
    assert prompt.render({"question": "Why?"})[0]["content"].startswith("Answer in a friendly")
    output = prompt.output.parse('{"answer": "Because.", "confidence": 0.5}')
    assert output.answer == "Because." and output.confidence == 0.5
    with pytest.raises(pk.errors.OutputParseError):
        prompt.output.parse('{"answer": "Because."}')


def test_span_fields_in_a_schema_are_validated_and_round_trip(write, tmp_path):
    schema = (
        "output:\n  schema:\n    type: object\n    properties:\n"
        "      who: {type: string, x-span-of: text}\n    required: [who]\n"
    )
    inputs = "inputs: {text: {type: string}}\n"
    path = write("s.prompty", f"---\n{inputs}{schema}---\n{{{{ text }}}}\n")
    prompt = pk.load_prompt(path)
    assert prompt.output.parse('{"who": "Ana"}', {"text": "Ana ran"}).who == "Ana"
    with pytest.raises(pk.errors.OutputParseError, match="'Bo' does not occur in the input"):
        prompt.output.parse('{"who": "Bo"}', {"text": "Ana ran"})
    pk.save_prompt(prompt, tmp_path / "again.prompty")
    again = pk.load_prompt(tmp_path / "again.prompty")
    assert again.output.schema["properties"]["who"]["x-span-of"] == "text"
    for value, match in (("5", "must name an input field"), ("txt", "'txt', which is not an")):
        wrong = schema.replace("x-span-of: text", f"x-span-of: {value!r}")
        bad = write("b.prompty", f"---\n{inputs}{wrong}---\n{{{{ text }}}}\n")
        with pytest.raises(TemplateError, match=match):
            pk.load_prompt(bad)
