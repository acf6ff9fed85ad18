"""An 8-shot evaluation with the prefix cache vs without it: same model, same 100 items.

    python bench/eval_prefix.py [--threads 2] [--items 100] [--backend SPEC] [--scores]
                                [--concurrency N]

What ``promptkit eval templates/sentiment.prompty --data bench/data/reviews_dev.jsonl --pool
bench/data/reviews_pool.jsonl --shots 8 --select first`` runs, on SmolLM2-135M-Instruct (the
pulled GGUF, float32 on the scratch decoder, CPU): the instruction and the same 8
demonstrations open every prompt, so with the prefix cache they are computed once. The items
and the pool are short product reviews written for this bench (bench/data, generated from
phrase lists; not the acceptance data). The baseline is the same model with the cache off
(``prefix_cache_bytes=0``), run first. Prints both times and the prompt tokens each computed;
the answers must be identical (in float32; other precisions round differently after a cache
hit, see the README).

``--concurrency N`` keeps N items in flight on both sides (``promptkit eval --concurrency N``):
a local backend runs concurrent items' passes together.

``--scores`` also scores each item's labels by likelihood (``--method score``) with the cache
and without it, and prints the largest difference of a label's log-probability between the
two: how much a cache hit moves the figures at the backend's precision (``--backend
scratch:smollm2-135m-instruct@bfloat16``, ``@int8``, ``@int4``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import promptkit as pk
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.evaluate._plan import plan_evaluation, run_evaluation

DATA = Path(__file__).resolve().parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--backend", default="scratch:smollm2-135m-instruct")
    parser.add_argument("--scores", action="store_true", help="label log-probabilities too")
    parser.add_argument("--concurrency", type=int, default=1, help="items in flight")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cached = pk.get_backend(args.backend, device="cpu")
    if not isinstance(cached, ScratchBackend):
        sys.exit(f"{args.backend} is not a scratch backend")
    plain = ScratchBackend(cached.model, cached.tokenizer, name=cached.name, prefix_cache_bytes=0)
    plain.use_chat_template(cached.chat_template)
    plan, warm_up = (
        plan_evaluation(
            ["sentiment"], DATA / "reviews_dev.jsonl", shots=[8], pool=DATA / "reviews_pool.jsonl"
        )
        for _ in range(2)
    )
    plan.items["sentiment"] = plan.items["sentiment"][: args.items]
    warm_up.items["sentiment"] = warm_up.items["sentiment"][-2:]
    select = pk.Selection("first")
    run_evaluation(warm_up, backend=plain, select=select)
    plain.prefix_cache.clear()
    results = []
    for backend in (plain, cached):  # the baseline first: any warming up favours it
        began = time.perf_counter()
        outcome = run_evaluation(plan, backend=backend, select=select, concurrency=args.concurrency)
        (report,) = outcome.runs["sentiment"]
        results.append((time.perf_counter() - began, report, backend.prefix_cache.stats()))
    (slow, without, off), (fast, with_cache, on) = results
    same = sum(
        a.text == b.text and a.prediction == b.prediction
        for a, b in zip(without.results, with_cache.results, strict=True)
    )
    print(
        f"{args.backend} ({cached.model.wte.weight.dtype}, {args.threads} threads), sentiment "
        f"template, 8 shots (first), {len(without.results)} items, {args.concurrency} in "
        f"flight, accuracy "
        f"{without.accuracy:.0%}; prompt tokens {without.prompt_tokens} in both runs\n"
        f"without the prefix cache {slow:.1f} s, {off.tokens_computed} prompt tokens computed\n"
        f"with the prefix cache    {fast:.1f} s, {on.tokens_computed} prompt tokens computed "
        f"({on.tokens_reused} reused, {on.hits} of {on.lookups} prompts hit, "
        f"{on.bytes / 2**20:.1f} MiB held)\n"
        f"identical answers {same}/{len(without.results)}\n"
        f"time without / with (target >= 4x): ratio {slow / fast:.2f}x\n"
        f"prompt tokens computed without / with (target >= 5x): ratio "
        f"{off.tokens_computed / max(on.tokens_computed, 1):.2f}x"
    )
    if args.scores:
        scored = [
            run_evaluation(plan, backend=backend, select=select, method="score")
            .runs["sentiment"][0]
            .results
            for backend in (plain, cached)
        ]
        moved = max(
            abs(a.scores[label] - b.scores[label])
            for a, b in zip(*scored, strict=True)
            if a.scores and b.scores
            for label in a.scores
        )
        print(
            f"label log-probabilities, with the cache against without: largest change {moved:.2e}"
        )


if __name__ == "__main__":
    main()
