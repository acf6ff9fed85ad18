"""Choosing demonstrations: strategies, label balance, and fitting to the context window."""

from __future__ import annotations

from typing import Literal, NoReturn

import pytest

import promptkit as pk
from promptkit._demos import Selection, bm25_scores
from promptkit.backends import GenerationConfig, ScriptedBackend
from promptkit.errors import ContextWindowError, UsageError

POOL = [
    ("the soup was cold and bland", "negative"),
    ("a wonderful film with a great cast", "positive"),
    ("the waiter was rude and slow", "negative"),
    ("great soup, warm bread, friendly staff", "positive"),
    ("boring plot and a terrible ending", "negative"),
    ("the best concert I have seen", "positive"),
]

PROMPT = pk.Prompt(
    instruction="Classify the review.",
    query="Review: {{ text }}\nSentiment:",
    output_type=Literal["positive", "negative"],
    examples=[pk.Example({"text": t}, label) for t, label in POOL],
    style="completion",
)


def shown_texts(rendered: str) -> list[str]:
    return [line.removeprefix("Review: ") for line in rendered.splitlines() if "Review:" in line][
        :-1
    ]


def test_bm25_prefers_documents_sharing_rare_words():
    scores = bm25_scores("cold soup", [t for t, _ in POOL])
    assert max(range(len(POOL)), key=scores.__getitem__) == 0
    assert scores[1] == 0.0
    assert bm25_scores("anything", []) == []


def test_first_keeps_the_pool_order():
    rendered = PROMPT.render({"text": "x"}, shots=2)
    assert shown_texts(rendered) == [POOL[0][0], POOL[1][0]]


def test_random_is_seeded_and_depends_on_the_query():
    one = PROMPT.render({"text": "x"}, shots=3, select=Selection("random", seed=1))
    again = PROMPT.render({"text": "x"}, shots=3, select=Selection("random", seed=1))
    other = PROMPT.render({"text": "x"}, shots=3, select=Selection("random", seed=2))
    assert one == again
    assert one != other or shown_texts(one) != [t for t, _ in POOL[:3]]
    assert len(set(shown_texts(one))) == 3


def test_similar_shows_the_most_relevant_last():
    rendered = PROMPT.render({"text": "warm soup please"}, shots=2, select="similar")
    texts = shown_texts(rendered)
    assert texts[-1] == POOL[3][0]  # "great soup, warm bread ..." shares two words
    assert texts[0] == POOL[0][0]  # "the soup was cold ..." shares one


def test_similar_with_an_embedding_function():
    def embed(texts):
        return [[float("soup" in t), float("film" in t or "concert" in t)] for t in texts]

    rendered = PROMPT.render({"text": "a film"}, shots=2, select=Selection("similar", embed=embed))
    assert set(shown_texts(rendered)) == {POOL[1][0], POOL[5][0]}
    with pytest.raises(UsageError, match="embed returned 1 vectors"):
        PROMPT.render({"text": "x"}, shots=2, select=Selection("similar", embed=lambda t: [[1]]))


def test_mmr_trades_relevance_for_diversity():
    relevant = PROMPT.render({"text": "soup"}, shots=2, select=Selection("mmr", diversity=0.0))
    diverse = PROMPT.render({"text": "soup"}, shots=2, select=Selection("mmr", diversity=0.9))
    assert set(shown_texts(relevant)) == {POOL[0][0], POOL[3][0]}  # both soup reviews
    assert len(set(shown_texts(diverse)) & {POOL[0][0], POOL[3][0]}) == 1


def test_balanced_interleaves_labels():
    rendered = PROMPT.render({"text": "x"}, shots=4, select=Selection(balanced=True))
    labels = [dict(POOL)[t] for t in shown_texts(rendered)]
    assert labels == ["negative", "positive", "negative", "positive"]
    similar = Selection("similar", balanced=True)
    labels = [
        dict(POOL)[t] for t in shown_texts(PROMPT.render({"text": "soup"}, 2, select=similar))
    ]
    assert sorted(labels) == ["negative", "positive"]


def test_bad_selections():
    with pytest.raises(UsageError, match="unknown demonstration strategy"):
        Selection("nearest")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="diversity"):
        Selection("mmr", diversity=2)
    with pytest.raises(UsageError, match="select must be"):
        PROMPT.render({"text": "x"}, select=3)  # type: ignore[arg-type]


class CountingBackend(ScriptedBackend):
    """A scripted backend that counts one token per word, with a small context window."""

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def test_demonstrations_are_dropped_least_wanted_first_to_fit():
    backend = CountingBackend(["positive"], context_window=45)
    result = PROMPT.run(
        {"text": "warm soup"},
        backend=backend,
        select="similar",
        config=GenerationConfig(max_tokens=5),
    )
    assert 0 < result.examples_used < len(POOL)
    assert len(result.demonstrations) + len(result.dropped) == len(POOL)
    assert result.demonstrations[-1] == 3  # the most relevant is kept, and shown last
    for _, reason in result.dropped:
        assert "did not fit" in reason and "context window 45" in reason
    sent = backend.requests[-1].prompt
    assert isinstance(sent, str) and len(sent.split()) + 5 <= 45


def test_query_that_cannot_fit_is_a_context_window_error():
    backend = CountingBackend(["positive"], context_window=12)
    with pytest.raises(ContextWindowError, match="instruction and query alone take") as caught:
        PROMPT.run({"text": "a long review " * 5}, backend=backend)
    assert caught.value.context_window == 12 and caught.value.prompt_tokens is not None


def test_without_a_known_window_nothing_is_dropped():
    backend = ScriptedBackend(["positive"])
    result = PROMPT.run({"text": "x"}, backend=backend)
    assert result.demonstrations == tuple(range(len(POOL))) and result.dropped == ()


def test_choosing_in_the_pools_order_renders_nothing():
    def refuse() -> NoReturn:
        raise AssertionError("rendered although the pool's order is kept")

    assert Selection().choose(2, refuse, refuse) == [0, 1]
    assert Selection("similar").choose(0, refuse, refuse) == []
    chosen = Selection("similar").choose(2, lambda: "warm soup", lambda: POOL)
    assert chosen == [3, 0] and Selection("similar").shown(chosen) == [0, 3]
    assert Selection("random").shown([2, 1]) == [2, 1]


def test_fit_to_window_renders_with_fewer_demonstrations_until_it_fits():
    from promptkit._demos import fit_to_window

    backend = CountingBackend([], context_window=10)
    rendered, shown, dropped = fit_to_window(
        lambda kept: "word " * (4 + 2 * len(kept)), [5, 2, 7], backend, 2
    )
    assert (rendered, shown) == ("word " * 8, [5, 2])
    assert dropped == [(7, "did not fit: 10 prompt tokens + max_tokens 2 > context window 10")]
    with pytest.raises(ContextWindowError, match="alone take 4 tokens; with max_tokens 7") as e:
        fit_to_window(lambda kept: "word " * (4 + 2 * len(kept)), [1], backend, 7)
    assert "all 1 demonstrations were dropped first" in str(e.value)
    with pytest.raises(ContextWindowError) as none_shown:  # no demonstrations to drop: no word
        fit_to_window(lambda kept: "word " * 4, [], backend, 7)
    assert "dropped" not in str(none_shown.value)
