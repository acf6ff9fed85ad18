"""Demonstrations: an :class:`Example` (checked against a prompt's types by
:func:`validate_examples`), and which examples a prompt shows, in what order, and which to drop.

A :class:`Selection` ranks a pool of examples for one query, most wanted first:

- ``"first"``: the pool's own order;
- ``"random"``: a seeded shuffle (the same query and seed give the same demonstrations);
- ``"similar"``: BM25 over the rendered inputs (no model needed), or cosine similarity of
  ``embed(texts)`` vectors when an embedding function is given;
- ``"mmr"``: maximal marginal relevance, trading similarity to the query against similarity
  to the demonstrations already chosen (``diversity`` 0 = pure relevance, 1 = pure novelty);

and ``balanced=True`` interleaves the labels (for classification) so that every label is shown
before any label is shown twice. The prompt shows the first ``shots`` of the ranking; when the
prompt does not fit the backend's context window, demonstrations are dropped from the end of
the ranking (the least wanted first) — never the instruction or the query (:func:`fit_to_window`).

Shown demonstrations keep the ranking's order, except that ``similar`` and ``mmr`` put the most
relevant one last, next to the query.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from ._inputs import template_context, validate_inputs
from ._parsing import OutputCheck, OutputSpec, run_check
from .backends._base import PromptInput, messages_to_text
from .errors import ContextWindowError, InputValidationError, PromptkitError, UsageError

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = [
    "Embed",
    "Example",
    "Selection",
    "Strategy",
    "bm25_scores",
    "fit_to_window",
    "validate_examples",
]

Strategy = Literal["first", "random", "similar", "mmr"]
STRATEGIES: tuple[Strategy, ...] = ("first", "random", "similar", "mmr")
Embed = Callable[[Sequence[str]], Sequence[Sequence[float]]]

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Example:
    """One demonstration: an input (a mapping or an instance of the input type) and its output."""

    input: Mapping[str, Any] | BaseModel
    output: Any


def validate_examples(
    examples: Sequence[Example],
    input_type: type[BaseModel],
    output: OutputSpec,
    output_type: Any,
    check: OutputCheck | None,
) -> list[BaseModel]:
    """Each example's input validated as ``input_type``; its output must validate as
    ``output`` (with the example's inputs) and pass ``check``.

    Raises InputValidationError naming the first example that is not an :class:`Example`,
    whose input or output does not validate, or whose output fails ``check``.
    """
    return [
        _validate_example(index, example, input_type, output, output_type, check)
        for index, example in enumerate(examples)
    ]


def _validate_example(
    index: int,
    example: Example,
    input_type: type[BaseModel],
    output: OutputSpec,
    output_type: Any,
    check: OutputCheck | None,
) -> BaseModel:
    if not isinstance(example, Example):
        raise InputValidationError(
            f"example {index} must be a pk.Example(input=..., output=...), "
            f"got {type(example).__name__}"
        )
    try:
        validated = validate_inputs(input_type, example.input)
    except InputValidationError as exc:
        raise InputValidationError(f"example {index} input: {exc}") from None
    try:
        value = output.validate(example.output, template_context(validated))
    except (ValidationError, PromptkitError, ValueError) as exc:
        raise InputValidationError(
            f"example {index} output {example.output!r} is not a valid "
            f"{getattr(output_type, '__name__', output_type)}: {exc}"
        ) from None
    refused = run_check(check, validated, value) if check is not None else None
    if refused is not None:
        raise InputValidationError(
            f"example {index} output {example.output!r} fails the check: {refused}"
        )
    return validated


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def bm25_scores(
    query: str, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75
) -> list[float]:
    """Okapi BM25 score of every document for ``query`` (words: ``\\w+``, case-folded)."""
    docs = [_words(d) for d in documents]
    if not docs:
        return []
    average = sum(len(d) for d in docs) / len(docs) or 1.0
    frequency: Counter[str] = Counter()
    for doc in docs:
        frequency.update(set(doc))
    terms = set(_words(query))
    scores = []
    for doc in docs:
        counts = Counter(doc)
        score = 0.0
        for term in terms:
            if not counts[term]:
                continue
            idf = math.log(1 + (len(docs) - frequency[term] + 0.5) / (frequency[term] + 0.5))
            tf = counts[term]
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / average))
        scores.append(score)
    return scores


def _tfidf(texts: Sequence[str]) -> list[dict[str, float]]:
    """Unit-length TF-IDF vectors (sparse) of ``texts``."""
    docs = [Counter(_words(t)) for t in texts]
    frequency: Counter[str] = Counter()
    for doc in docs:
        frequency.update(doc.keys())
    vectors = []
    for doc in docs:
        vector = {w: c * math.log((1 + len(docs)) / (1 + frequency[w]) + 1) for w, c in doc.items()}
        norm = math.sqrt(sum(v * v for v in vector.values())) or 1.0
        vectors.append({w: v / norm for w, v in vector.items()})
    return vectors


def _cosine_sparse(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(w, 0.0) for w, v in a.items())


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


@dataclass(frozen=True)
class Selection:
    """How to rank a pool of demonstrations for a query (see the module docstring)."""

    strategy: Strategy = "first"
    balanced: bool = False
    seed: int = 0
    embed: Embed | None = None
    diversity: float = 0.5

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(
                f"unknown demonstration strategy {self.strategy!r}; choose one of "
                + ", ".join(STRATEGIES)
            )
        if not 0.0 <= self.diversity <= 1.0:
            raise UsageError(f"diversity must be in [0, 1], got {self.diversity!r}")

    @classmethod
    def of(cls, value: Selection | Strategy | None) -> Selection:
        """A Selection from a Selection, a strategy name, or None (the pool's order)."""
        if value is None:
            return cls()
        if isinstance(value, Selection):
            return value
        if isinstance(value, str):
            return cls(strategy=value)
        raise UsageError(f"select must be a strategy name or a Selection, got {value!r}")

    def rank(
        self, query: str, pool: Sequence[str], labels: Sequence[str] | None = None
    ) -> list[int]:
        """Indices of ``pool`` (rendered example inputs), most wanted first."""
        order = self._order(query, pool)
        if self.balanced and labels is not None:
            order = _interleave(order, labels)
        return order

    def choose(
        self,
        count: int,
        query: Callable[[], str],
        pool: Callable[[], Sequence[tuple[str, str]]],
    ) -> list[int]:
        """Indices of the ``count`` most wanted demonstrations for a query, most wanted first:
        ``pool()`` gives each as (rendered input, answer), ``query()`` the rendered query;
        neither is called when the pool's own order is kept."""
        if count == 0:
            return []
        if self.strategy == "first" and not self.balanced:
            return list(range(count))
        demos = pool()
        ranked = self.rank(query(), [q for q, _ in demos], [a for _, a in demos])
        return ranked[:count]

    def shown(self, chosen: list[int]) -> list[int]:
        """``chosen`` (most wanted first) in the order shown (see :attr:`relevance_last`)."""
        return chosen[::-1] if self.relevance_last else chosen

    @property
    def relevance_last(self) -> bool:
        """Whether the most relevant demonstration is shown last (next to the query)."""
        return self.strategy in ("similar", "mmr")

    def _order(self, query: str, pool: Sequence[str]) -> list[int]:
        indices = list(range(len(pool)))
        if self.strategy == "first" or len(pool) < 2:
            return indices
        if self.strategy == "random":
            generator = random.Random(f"{self.seed}\x00{query}")
            generator.shuffle(indices)
            return indices
        relevance, similarity = self._similarities(query, pool)
        if self.strategy == "similar":
            return sorted(indices, key=lambda i: (-relevance[i], i))
        return _mmr(relevance, similarity, 1.0 - self.diversity)

    def _similarities(
        self, query: str, pool: Sequence[str]
    ) -> tuple[list[float], Callable[[int, int], float]]:
        if self.embed is not None:
            vectors = [list(v) for v in self.embed([query, *pool])]
            if len(vectors) != len(pool) + 1:
                raise UsageError(f"embed returned {len(vectors)} vectors for {len(pool) + 1} texts")
            head, rest = vectors[0], vectors[1:]
            return [_cosine(head, v) for v in rest], lambda i, j: _cosine(rest[i], rest[j])
        scores = bm25_scores(query, pool)
        top = max(scores, default=0.0) or 1.0
        sparse = _tfidf(pool)
        return [s / top for s in scores], lambda i, j: _cosine_sparse(sparse[i], sparse[j])


def _mmr(
    relevance: list[float], similarity: Callable[[int, int], float], weight: float
) -> list[int]:
    """Greedy maximal marginal relevance: each pick maximises
    ``weight * relevance - (1 - weight) * max similarity to the picks so far``."""
    left = list(range(len(relevance)))
    chosen: list[int] = []
    while left:

        def gain(i: int) -> float:
            redundancy = max((similarity(i, j) for j in chosen), default=0.0)
            return weight * relevance[i] - (1 - weight) * redundancy

        best = max(left, key=lambda i: (gain(i), -i))
        chosen.append(best)
        left.remove(best)
    return chosen


def _interleave(order: list[int], labels: Sequence[str]) -> list[int]:
    """Round-robin over labels (in order of first appearance in ``order``), keeping ``order``
    within each label."""
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(labels[i], []).append(i)
    queues = list(groups.values())
    result: list[int] = []
    depth = 0
    while len(result) < len(order):
        for queue in queues:
            if depth < len(queue):
                result.append(queue[depth])
        depth += 1
    return result


def fit_to_window(
    render: Callable[[list[int]], PromptInput],
    ranked: Sequence[int],
    backend: Backend,
    max_tokens: int,
) -> tuple[PromptInput, list[int], list[tuple[int, str]]]:
    """Render with the ``ranked`` demonstrations (indices, most wanted first), dropping the
    least wanted until the prompt plus ``max_tokens`` fits the backend's context window
    (counted with its own tokenizer); ``render(kept)`` renders with the ``kept`` ones.

    Returns the rendering, the demonstrations shown and the dropped ones with the reason.
    Raises ContextWindowError when the instruction and query alone do not fit.
    """
    chosen = list(ranked)
    rendered = render(chosen)
    window = backend.context_window
    if window is None:
        return rendered, chosen, []
    dropped: list[tuple[int, str]] = []
    while True:
        text = rendered if isinstance(rendered, str) else messages_to_text(rendered)
        tokens = backend.count_tokens(text)
        if tokens + max_tokens <= window:
            return rendered, chosen, dropped
        if not chosen:
            note = f" (all {len(dropped)} demonstrations were dropped first)" if dropped else ""
            raise ContextWindowError(
                f"the instruction and query alone take {tokens} tokens; with max_tokens "
                f"{max_tokens} they do not fit the context window of {window}{note}; "
                "shorten the input or lower max_tokens",
                prompt_tokens=tokens,
                max_tokens=max_tokens,
                context_window=window,
            )
        gone = chosen.pop()
        dropped.append(
            (
                gone,
                f"did not fit: {tokens} prompt tokens + max_tokens {max_tokens} > "
                f"context window {window}",
            )
        )
        rendered = render(chosen)
