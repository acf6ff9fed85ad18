"""Scoring by likelihood: multiple choice (shared-prefix KV reuse) and prompt.classify."""

from __future__ import annotations

import math
from typing import Literal

import pytest

import promptkit as pk
from promptkit._scoring import calibrate
from promptkit.backends import ScriptedBackend
from promptkit.backends._local import LocalScoring
from promptkit.errors import ContextWindowError, InputValidationError, UsageError

CONTEXT = "The capital of France is a city called"
CHOICES = [" Paris", " Lyon and its many bridges", " Marseille", " a"]


@pytest.fixture(scope="module")
def hf(hf_folder):
    return pk.get_backend(f"hf:{hf_folder}", device="cpu")


def test_shared_prefix_scores_equal_full_sequence_scores(backend, hf):
    shared = backend.score_choices(CONTEXT, CHOICES)
    full = LocalScoring.score_choices(backend, CONTEXT, CHOICES)  # one sequence per choice
    separate = [backend.loglikelihood(CONTEXT, c) for c in CHOICES]
    other = hf.score_choices(CONTEXT, CHOICES)  # transformers, full sequences
    for choice, (a, n), (b, m), c, (d, _) in zip(
        CHOICES, shared, full, separate, other, strict=True
    ):
        assert n == m == len(backend.tokenizer.encode(choice))
        assert a == pytest.approx(b, abs=1e-5)
        assert a == pytest.approx(c, abs=1e-5)
        assert a == pytest.approx(d, abs=1e-4)


def test_multiple_choice_picks_the_highest_score(backend):
    result = pk.multiple_choice(CONTEXT, CHOICES, backend=backend)
    assert result.scores == tuple(s for s, _ in backend.score_choices(CONTEXT, CHOICES))
    assert result.index == max(range(4), key=result.scores.__getitem__)
    assert result.choice == CHOICES[result.index]
    assert sum(result.probabilities) == pytest.approx(1.0)
    normalized = pk.multiple_choice(CONTEXT, CHOICES, backend=backend, normalize=True)
    per_token = [s / n for s, n in zip(normalized.scores, normalized.lengths, strict=True)]
    assert normalized.index == max(range(4), key=per_token.__getitem__)


def test_single_token_choices_and_empty_context(backend):
    result = pk.multiple_choice("", [" a", " b"], backend=backend)
    assert result.scores[0] == pytest.approx(backend.loglikelihood("", " a"), abs=1e-5)


def test_bad_choices_and_context_window(backend):
    with pytest.raises(InputValidationError, match="at least one choice"):
        pk.multiple_choice(CONTEXT, [], backend=backend)
    with pytest.raises(InputValidationError, match="choice 1 is empty"):
        pk.multiple_choice(CONTEXT, [" a", ""], backend=backend)
    with pytest.raises(InputValidationError, match="at least one choice"):
        pk.multiple_choice(CONTEXT, " a", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ContextWindowError):
        pk.multiple_choice("word " * 200, [" a"], backend=backend)


def test_backends_without_scores_are_refused():
    with pytest.raises(pk.errors.UnsupportedCapabilityError, match="loglikelihood"):
        pk.multiple_choice(CONTEXT, CHOICES, backend=ScriptedBackend([]))


SENTIMENT = pk.Prompt(
    instruction="Is the review positive or negative?",
    query="Review: {{ text }}\nSentiment:",
    output_type=Literal["positive", "negative"],
    examples=[
        pk.Example({"text": "Loved it"}, "positive"),
        pk.Example({"text": "Hated it"}, "negative"),
    ],
)


def test_classify_scores_each_label_after_the_rendered_prompt(backend):
    result = SENTIMENT.classify({"text": "Great cast"}, backend=backend)
    rendered = SENTIMENT.render({"text": "Great cast"}, style="completion")
    expected = [backend.loglikelihood(rendered, " " + label) for label in result.labels]
    assert result.scores == pytest.approx(expected, abs=1e-5)
    assert result.label == result.labels[max(range(2), key=expected.__getitem__)]
    assert sum(result.probabilities) == pytest.approx(1.0)
    assert result.calibrated is None


def test_classify_calibrates_against_a_content_free_input(backend):
    result = SENTIMENT.classify({"text": "Great cast"}, backend=backend, calibrate=True)
    blank = SENTIMENT.classify({"text": "N/A"}, backend=backend)
    assert result.calibrated == pytest.approx(calibrate(result.probabilities, blank.probabilities))
    assert result.label == result.labels[max(range(2), key=result.calibrated.__getitem__)]
    assert math.isclose(sum(result.calibrated), 1.0)
    zero_shot = SENTIMENT.classify({"text": "Great cast"}, backend=backend, shots=0)
    assert zero_shot.scores != result.scores


def test_classify_needs_labels(backend):
    with pytest.raises(UsageError, match="label output type"):
        pk.Prompt(query="{{ q }}").classify({"q": "x"}, backend=backend)


def test_a_few_shot_template_fits_a_small_window_by_dropping_demonstrations(backend):
    prompt = pk.load_prompt("sentiment")  # four demonstrations: too long for 128 tokens
    config = pk.backends.GenerationConfig(max_tokens=4)
    result = prompt.run(prompt.metadata["sample"], backend=backend, config=config)
    assert result.dropped and len(result.demonstrations) < len(prompt.examples)
    assert all("context window 128" in reason for _, reason in result.dropped)
    sent = result.attempts[0].prompt
    assert isinstance(sent, str) and backend.count_tokens(sent) + 4 <= 128
    assert result.constrained and result.output in ("positive", "negative")


def test_eval_can_choose_labels_by_likelihood(backend, tmp_path):
    from click.testing import CliRunner

    from promptkit.cli import cli
    from promptkit.evaluate import EvalItem, evaluate

    items = [
        EvalItem(1, {"text": "Great cast"}, "positive"),
        EvalItem(2, {"text": "Dull"}, "negative"),
    ]
    reports = evaluate(SENTIMENT, items, backend=backend, shots=[0, 2], method="score")
    for report in reports:
        expected = [
            SENTIMENT.classify(i.inputs, backend=backend, shots=report.shots).label == i.expected
            for i in items
        ]
        assert report.correct == expected and report.validity == 1.0
    with pytest.raises(UsageError, match="label output type"):
        evaluate(
            pk.Prompt(query="{{ q }}"),
            [EvalItem(1, {"q": "x"}, "y")],
            backend=backend,
            method="score",
        )
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine", "expected": "positive"}\n')
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "sentiment",
            "--data",
            str(data),
            "--backend",
            f"scratch:{backend.name[8:]}",
            "--method",
            "score",
            "--shots",
            "0",
            "--out",
            str(tmp_path / "out"),
            "--no-cache",
        ],
    )
    assert result.exit_code == 0, result.output
