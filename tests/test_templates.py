"""Every bundled template: it checks clean, renders its sample, and runs end to end."""

from __future__ import annotations

import json

import pytest

import promptkit as pk
from promptkit._check import check_template
from promptkit.backends import ScriptedBackend

BUNDLED = pk.bundled_templates()

# A valid answer per template, as a model would write it (with some chatter around it).
ANSWERS = {
    "code_explanation": "Here is the review:\n```json\n"
    + json.dumps(
        {
            "summary": "Computes the arithmetic mean of a list.",
            "methods": [{"name": "mean", "walkthrough": "Sums the values, divides by the count."}],
            "potential_issues": ["Divides by zero on an empty list."],
            "optimizations": ["Use sum(values) / len(values) or statistics.fmean."],
        }
    )
    + "\n```",
    "sentiment": " positive",
    "entailment": "Entailment",
    "similarity": "same",
    "multiple_choice": "1",
    "translation": " La biblioteca abre a las nueve.",
    "summarize": " The council will add 40 km of bike lanes.",
    "extract": '{"name": "Maria Rossi", "age": 29, "city": "Milan", "date": "2024-09-02"}',
    "code_completion": "\n    return a + b\n",
    "code_completion_chat": "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```",
}


def test_the_expected_templates_are_bundled():
    assert set(BUNDLED) == set(ANSWERS)


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_bundled_template_is_clean_and_described(name):
    assert check_template(BUNDLED[name]) == []
    prompt = pk.load_prompt(name)
    assert prompt.description and prompt.metadata.get("sample")


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_bundled_template_runs_its_sample_end_to_end(name):
    prompt = pk.load_prompt(name)
    sample = prompt.metadata["sample"]
    for shots in range(len(prompt.examples) + 1):
        rendered = prompt.render(sample, shots=shots)
        assert rendered
    backend = ScriptedBackend([ANSWERS[name]])
    result = prompt.run(sample, backend=backend)
    assert result.attempts[0].error is None
    assert backend.requests[0].prompt == prompt.render(sample)


def test_input_names_are_the_documented_ones():
    fields = {name: set(pk.load_prompt(name).input_type.model_fields) for name in BUNDLED}
    assert fields == {
        "code_explanation": {"code", "code_language", "answer_language"},
        "sentiment": {"text"},
        "entailment": {"premise", "hypothesis"},
        "similarity": {"text_a", "text_b"},
        "multiple_choice": {"context", "question", "answers"},
        "translation": {"text", "source_language", "target_language"},
        "summarize": {"text"},
        "extract": {"text"},
        "code_completion": {"prompt"},
        "code_completion_chat": {"prompt", "entry_point"},
    }


def test_code_explanation_output_and_language_defaults():
    prompt = pk.load_prompt("code_explanation")
    output = prompt.output.parse(ANSWERS["code_explanation"])
    assert output.methods[0].name == "mean"
    assert set(type(output).model_fields) == {
        "summary",
        "methods",
        "potential_issues",
        "optimizations",
    }
    rust = prompt.render({"code": "fn main() { let mut x = 1; }", "answer_language": "German"})
    assert "senior rust engineer" in rust[0]["content"]
    assert "Write every explanation in German." in rust[0]["content"]
    assert rust[-1]["content"].startswith("```rust\n")
    chosen = prompt.render({"code": "x = 1", "code_language": "ruby"})
    assert "senior ruby engineer" in chosen[0]["content"]
    assert "in English" in chosen[0]["content"]


def test_label_templates_render_bare_labels_in_demonstrations():
    prompt = pk.load_prompt("sentiment")
    text = prompt.render({"text": "meh"})
    assert isinstance(text, str) and text.endswith("Review: meh\nSentiment:")
    assert "Sentiment: positive\n\n" in text and "Sentiment: negative\n\n" in text


def test_summarize_is_gpt2_tldr_style():
    prompt = pk.load_prompt("summarize")
    assert prompt.render({"text": "Long text."}) == "Long text.\n\nTL;DR:"


def test_multiple_choice_numbers_answers_and_validates_index():
    prompt = pk.load_prompt("multiple_choice")
    sample = prompt.metadata["sample"]
    messages = prompt.render(sample, shots=0)
    assert "0. He drank from the glass.\n1. He swept up the pieces." in messages[-1]["content"]
    with pytest.raises(pk.errors.OutputValidationError):
        prompt.run(sample, backend=ScriptedBackend(["-1"]), max_attempts=1)


def test_extract_rejects_invalid_records():
    prompt = pk.load_prompt("extract")
    with pytest.raises(pk.errors.OutputParseError, match="date"):
        prompt.output.parse('{"name": "A", "age": 1, "city": null, "date": "yesterday"}')
    with pytest.raises(pk.errors.OutputParseError, match="Extra inputs"):
        prompt.output.parse('{"name": "A", "age": 1, "city": null, "date": null, "x": 1}')
