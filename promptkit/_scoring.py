"""Answers chosen by likelihood, the GPT-1/GPT-2 way: score each candidate, take the best.

:func:`multiple_choice` scores each choice as a continuation of one context (GPT-1's input
transformation for multiple choice: one sequence per answer); on the scratch backend the
context runs through the model once and its key/value cache serves every choice.
:meth:`promptkit.Prompt.classify` scores each label's verbalisation after the rendered prompt,
optionally calibrated against a content-free input (Zhao et al., 2021: divide by the
probabilities the model gives the labels for ``"N/A"``).

Scores are summed log-probabilities; ``normalize=True`` divides each by its length (tokens on
local backends, characters elsewhere) so long answers are not penalised for their length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._parsing import OutputSpec
    from .backends._base import Backend, PromptInput

__all__ = [
    "ChoiceResult",
    "Classification",
    "classify_labels",
    "multiple_choice",
    "score_continuations",
    "softmax",
]


@dataclass(frozen=True)
class ChoiceResult:
    """The chosen answer of a multiple-choice question and the evidence for it."""

    index: int  # the chosen answer (highest score)
    choices: tuple[str, ...]
    scores: tuple[float, ...]  # summed log-probability of each choice
    lengths: tuple[int, ...]  # tokens (local backends) or characters of each choice
    normalized: bool  # whether the choice was made on per-length scores

    @property
    def choice(self) -> str:
        return self.choices[self.index]

    @property
    def probabilities(self) -> tuple[float, ...]:
        """The choices' scores (per length when normalized) as a distribution over them."""
        return softmax(self._decisive())

    def _decisive(self) -> list[float]:
        if not self.normalized:
            return list(self.scores)
        return [s / max(n, 1) for s, n in zip(self.scores, self.lengths, strict=True)]


@dataclass(frozen=True)
class Classification:
    """A label chosen by likelihood, with per-label log-probabilities and probabilities."""

    label: Any  # the chosen label, as the prompt's output type (str, Literal value or Enum)
    labels: tuple[str, ...]
    scores: tuple[float, ...]  # summed log-probability of each label's verbalisation
    probabilities: tuple[float, ...]  # softmax over the (normalized) scores
    calibrated: tuple[float, ...] | None  # divided by the content-free probabilities, renormalized


def score_continuations(
    backend: Backend, context: str, continuations: Sequence[str]
) -> list[tuple[float, int]]:
    """Each continuation's summed log-probability after ``context`` and its length (the
    backend's :meth:`~promptkit.backends.Backend.score_choices`).

    Raises UnsupportedCapabilityError when the backend cannot score, InputValidationError for
    no or empty continuations.
    """
    return backend.score_choices(context, continuations)


def multiple_choice(
    context: str, choices: Sequence[str], *, backend: Backend, normalize: bool = False
) -> ChoiceResult:
    """Score each choice as a continuation of ``context`` and pick the most likely.

    ``normalize=True`` picks by log-probability per token (per character on backends that do
    not count tokens).
    """
    scored = score_continuations(backend, context, choices)
    result = ChoiceResult(
        index=0,
        choices=tuple(choices),
        scores=tuple(s for s, _ in scored),
        lengths=tuple(n for _, n in scored),
        normalized=normalize,
    )
    decisive = result._decisive()
    best = max(range(len(decisive)), key=decisive.__getitem__)
    return ChoiceResult(best, result.choices, result.scores, result.lengths, normalize)


def classify_labels(
    render: Callable[[dict[str, Any]], PromptInput],
    inputs: dict[str, Any],
    output: OutputSpec,
    *,
    backend: Backend,
    normalize: bool = False,
    content_free: str | None = None,
) -> Classification:
    """Choose one of ``output``'s labels (a label output spec) by likelihood: score each
    label's verbalisation as a continuation of ``render(inputs)`` (a completion string) and
    take the most probable; this is :meth:`promptkit.Prompt.classify` once the prompt has
    chosen its demonstrations.

    ``normalize`` divides each label's log-probability by its length in tokens; a
    ``content_free`` string calibrates: the label probabilities are divided by those given
    for a content-free input (every text input set to that string) before choosing. Raises
    UnsupportedCapabilityError when the backend cannot score.
    """
    labels = output.labels
    verbalised = [" " + label for label in labels]  # as demonstrations write answers

    def label_probabilities(context: dict[str, Any]) -> tuple[list[float], tuple[float, ...]]:
        text = render(context)
        assert isinstance(text, str)
        scored = score_continuations(backend, text, verbalised)
        scores = [score for score, _ in scored]
        decisive = [s / max(n, 1) for s, n in scored] if normalize else scores
        return scores, softmax(decisive)

    scores, probabilities = label_probabilities(inputs)
    calibrated = None
    if content_free is not None:
        blank = {
            key: content_free if isinstance(value, str) else value for key, value in inputs.items()
        }
        calibrated = calibrate(probabilities, label_probabilities(blank)[1])
    decisive = calibrated or probabilities
    best = max(range(len(labels)), key=decisive.__getitem__)
    return Classification(
        label=output.validate(labels[best]),
        labels=labels,
        scores=tuple(scores),
        probabilities=probabilities,
        calibrated=calibrated,
    )


def softmax(values: Sequence[float]) -> tuple[float, ...]:
    """Log-probabilities as a distribution over them (uniform when every one is -inf)."""
    top = max(values)
    if top == -math.inf:
        return tuple(1.0 / len(values) for _ in values)
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    return tuple(w / total for w in weights)


def calibrate(probabilities: Sequence[float], content_free: Sequence[float]) -> tuple[float, ...]:
    """Divide each probability by the one given for a content-free input; renormalize."""
    ratios = [p / max(q, 1e-30) for p, q in zip(probabilities, content_free, strict=True)]
    total = sum(ratios)
    return tuple(r / total for r in ratios)
