"""Rendering speed of a 5-shot template against a hand-written jinja2.Template of the same text.

    python bench/render.py [--seconds 2]

The baseline is one plain jinja2.Template whose source spells out the instruction and the five
demonstrations and substitutes only the query; promptkit validates the typed input, renders the
query and reuses the demonstrations it rendered once. Both produce byte-identical text (checked).
Targets (issue 2): at least 10,000 renders/s and no slower than 2x the baseline.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Literal

import jinja2
from pydantic import BaseModel

import promptkit as pk


class Review(BaseModel):
    text: str


REVIEWS = [
    ("A joy from start to finish.", "positive"),
    ("Wooden acting, no plot.", "negative"),
    ("Works exactly as described.", "positive"),
    ("Broke after two days.", "negative"),
    ("The best purchase this year.", "positive"),
]


def build(query: str = "Review: {{ text }}\nSentiment:") -> tuple[pk.Prompt, jinja2.Template]:
    prompt = pk.Prompt(
        instruction="Decide whether each review is positive or negative.",
        query=query,
        input_type=Review,
        output_type=Literal["positive", "negative"],
        examples=[pk.Example(input={"text": t}, output=label) for t, label in REVIEWS],
        style="completion",
    )
    header = (
        "Decide whether each review is positive or negative.\n\n"
        "Answer with exactly one of: positive, negative.\n\n"
    )
    demos = "".join(f"Review: {t}\nSentiment: {label}\n\n" for t, label in REVIEWS)
    completion = jinja2.Template(header + demos + query, keep_trailing_newline=True)
    return prompt, completion


def rate(function: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(200):
            function()
        count += 200
    return count / elapsed


def best_rates(
    functions: dict[str, Callable[[], object]], seconds: float, rounds: int = 5
) -> dict[str, float]:
    """Best rate of each function over interleaved rounds (noise on a shared machine only ever
    slows a round down, so the best round is the least disturbed)."""
    best = dict.fromkeys(functions, 0.0)
    for _ in range(rounds):
        for name, function in functions.items():
            best[name] = max(best[name], rate(function, seconds / rounds))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    inputs = {"text": "Great cast, weak ending, still fun."}
    ok = True
    # A query of plain substitutions (the common case) renders by a join; one with a filter
    # goes through Jinja2 itself. Both are measured.
    for label, query in (
        ("plain query", "Review: {{ text }}\nSentiment:"),
        ("query with a filter", "Review: {{ text | trim }}\nSentiment:"),
    ):
        prompt, baseline = build(query)
        assert prompt.render(inputs) == baseline.render(inputs), "renderings must be identical"
        rates = best_rates(
            {
                "ours": lambda: prompt.render(inputs),  # noqa: B023
                "base": lambda: baseline.render(inputs),  # noqa: B023
                "chat": lambda: prompt.render(inputs, style="chat"),  # noqa: B023
            },
            args.seconds,
        )
        ours_rate, base_rate, chat_rate = rates["ours"], rates["base"], rates["chat"]
        slowdown = base_rate / ours_rate
        print(f"[{label}]")
        print(f"  promptkit 5-shot completion render: {ours_rate:10,.0f} renders/s")
        print(f"  promptkit 5-shot chat render:       {chat_rate:10,.0f} renders/s")
        print(f"  baseline jinja2.Template.render:    {base_rate:10,.0f} renders/s")
        print(f"  ratio: promptkit takes {slowdown:.2f}x the baseline's time (target <= 2x)")
        ok &= ours_rate >= 10_000 and slowdown <= 2
    print("render target:", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
