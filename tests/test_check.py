"""promptkit check reports every problem of a file it can find, each with its line number."""

from __future__ import annotations

import pytest

from promptkit._check import check_template
from promptkit._files import parse_prompty
from promptkit.errors import TemplateError

MANY_PROBLEMS = """\
---
name: many
model:
  api: speech
inputs:
  text: {type: string}
  label: {type: colour, default: red}
  unused: {type: string, default: ""}
output:
  labels: ["yes", "no"]
examples:
  - {input: {text: fine}, output: "yes"}
  - {input: {text: 3}, output: "yes"}
  - {input: {text: ok}, output: "maybe"}
shots: 7
sample: {text: '${env:HOME}'}
---
system:
{% if text %}Classify {{ typo }}.{% endif %}
user:
{{ text }}
{{ broken(
"""


def _problems(write, text, **options):
    path = write("t.prompty", text)
    return path, [(p.line, p.severity, p.message) for p in check_template(path, **options)]


def test_every_problem_is_reported_with_its_line(write):
    _, problems = _problems(write, MANY_PROBLEMS)
    found = {(line, severity): message for line, severity, message in problems}
    expected = {
        (3, "error"): "model.api must be 'chat' or 'completion'",
        (7, "error"): "input 'label' has unknown type 'colour'",
        (8, "warning"): "input 'unused' is declared but never used",
        (13, "error"): "example 1: input",
        (14, "error"): "example 2: output 'maybe' is not a valid",
        (15, "error"): "shots=7 but the file has 3 example(s)",
        (16, "error"): "${env:HOME} in 'sample'",
        (19, "error"): "the body uses 'typo', which is not a declared input",
        (22, "error"): "unexpected 'end of template'",
    }
    for (line, severity), start in expected.items():
        assert (line, severity) in found, (line, severity, problems)
        assert start in found[(line, severity)], (line, found[(line, severity)])
    assert [line for line, _, _ in problems] == sorted(line for line, _, _ in problems)


def test_the_body_is_checked_when_the_front_matter_is_broken(write):
    _, problems = _problems(write, "---\nname: [\n---\n{{ text }\n")
    assert [(line, severity) for line, severity, _ in problems] == [(3, "error"), (4, "error")]
    assert problems[0][2].startswith("invalid YAML") and "unexpected '}'" in problems[1][2]


@pytest.mark.timeout(60)
def test_the_sample_is_rendered_under_the_limits(write):
    _, problems = _problems(
        write,
        "---\ninputs: {n: {type: integer}}\nsample: {n: 3}\n---\n{{ 'x' * (n * 10**9) }}\n",
    )
    assert problems == [
        (
            5,
            "error",
            problems[0][2],
        )
    ]
    assert problems[0][2].startswith("the sample does not render: template limit 'max_length'")


def test_a_clean_file_still_has_no_problems(write):
    _, problems = _problems(
        write,
        "---\ninputs: {text: {type: string}}\nexamples:\n  - {input: {text: a}, output: b}\n"
        "shots: 1\nsample: {text: hi}\n---\n{{ text }}\n",
    )
    assert problems == []


@pytest.mark.timeout(60)
def test_yaml_aliases_that_expand_without_bound_are_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(TemplateError, match="expands to more than 100,000 values"):
        parse_prompty("---\n" + "\n".join(lines) + "\n---\nhi\n")
    small = parse_prompty(
        "---\nbase: &b {type: string}\ninputs: {a: *b, c: *b}\n---\n{{ a }}{{ c }}\n"
    )
    assert small.front["inputs"]["c"] == {"type": "string"}
