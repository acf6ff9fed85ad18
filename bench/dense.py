"""The prompt's pass and scoring in int4 and int8: dense products from ``DENSE_ROWS`` rows up,
against the weight-only kernels for every product (issue 21), on SmolLM2-135M-Instruct.

    promptkit pull smollm2
    python bench/dense.py [--threads 2] [--precisions int4,int8] [--prompts 64,128,256,512]
                          [--rounds 3]

PyTorch's weight-only kernels widen the weights again for every row, so their time grows with
the rows. From ``promptkit.backends.scratch._quant.DENSE_ROWS`` rows up a layer widens its
weight once and runs a dense product instead. The baseline here is the same backend with that
threshold out of reach (every product through the kernels, as before), measured in the same
rounds. Prints, per precision:

- the time of one prompt's pass (the time to the first token: ``generate_ids`` of one token,
  batch 1) at each ``--prompts`` length, dense against kernels, median of ``--rounds`` paired
  ratios;
- scoring 8 x 512 tokens (every token's log-probability), the same way;
- from WikiText-2 (``../shared/data/corpora/wiki.test.raw``; skipped with a message without
  it): whether 32 greedy tokens after 512 of its tokens are the same both ways, and over 2048
  tokens in one pass the perplexity and the top token's agreement with float32, dense against
  kernels only.

Each line ends in ``ratio N.NNx``; above 1 the dense products are faster (or, for perplexity,
higher).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from common import best_time
from quant import WIKITEXT, cpu_line, score_rate, wikitext_pass

import promptkit as pk
from promptkit.backends import GenerationConfig
from promptkit.backends.scratch import _quant
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.models._registry import pull


@contextmanager
def kernels_only() -> Iterator[None]:
    """Every product through the weight-only kernels (the threshold out of reach)."""
    saved = dict(_quant.DENSE_ROWS)
    _quant.DENSE_ROWS.update({kind: 1 << 62 for kind in saved})
    try:
        yield
    finally:
        _quant.DENSE_ROWS.update(saved)


def paired(measure: Callable[[], float], rounds: int) -> tuple[list[float], list[float]]:
    """``measure()`` (a rate: higher is faster) with dense products and with kernels only,
    alternated over ``rounds``."""
    dense, kernels = [], []
    for _ in range(rounds):
        dense.append(measure())
        with kernels_only():
            kernels.append(measure())
    return dense, kernels


def line(label: str, dense: list[float], kernels: list[float], unit: str) -> str:
    ratios = [d / k for d, k in zip(dense, kernels, strict=True)]
    return (
        f"{label}: dense {statistics.median(dense):.1f} {unit}, kernels only "
        f"{statistics.median(kernels):.1f} {unit}, median of {len(ratios)} paired ratios "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}): ratio {statistics.median(ratios):.2f}x"
    )


def prompt_rate(backend: ScratchBackend, prompt: list[int], repeats: int) -> float:
    """Prompt tokens per second of one prompt's pass and its first token."""
    config = GenerationConfig(max_tokens=1)
    seconds = best_time(
        lambda: backend.generate_ids([prompt], config, stop_at_end_of_text=False), repeats
    )
    return len(prompt) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="int4,int8")
    parser.add_argument("--prompts", default="64,128,256,512")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line())
    print(f"dense from {_quant.DENSE_ROWS} rows; int4 layout {_quant.int4_layout()}")
    path = pull("smollm2-135m-instruct")
    generator = torch.Generator().manual_seed(0)
    text = WIKITEXT.read_text(encoding="utf-8")[:40000] if WIKITEXT.is_file() else None
    reference = None
    for precision in args.precisions.split(","):
        # no prefix cache: each pass computes its whole prompt
        spec = f"scratch:{path}@{precision}"
        backend = pk.get_backend(spec, device="cpu", prefix_cache_bytes=0)
        assert isinstance(backend, ScratchBackend)
        vocab = backend.model.config.vocab_size
        for length in (int(p) for p in args.prompts.split(",")):
            prompt = torch.randint(0, vocab, (length,), generator=generator).tolist()
            measure = partial(prompt_rate, backend, prompt, args.repeats)
            dense, kernels = paired(measure, args.rounds)
            label = f"{precision} prompt's pass, {length} tokens, batch 1"
            print(line(label, dense, kernels, "tok/s"), flush=True)
        rows = torch.randint(0, vocab, (8, 512), generator=generator)
        dense, kernels = paired(partial(score_rate, backend, rows, args.repeats), args.rounds)
        print(line(f"{precision} scoring 8 x 512", dense, kernels, "tok/s"), flush=True)
        if text is None:
            print(f"no WikiText-2 figures: {WIKITEXT} is not there (it comes with ../shared/data)")
            continue
        ids = backend.tokenizer.encode(text)[:2048]
        config = GenerationConfig(max_tokens=32)
        made = backend.generate_ids([ids[:512]], config, stop_at_end_of_text=False)[0][0]
        with kernels_only():
            before = backend.generate_ids([ids[:512]], config, stop_at_end_of_text=False)[0][0]
        same = sum(a == b for a, b in zip(made, before, strict=True))
        print(
            f"{precision} greedy after 512 tokens of WikiText-2, dense against kernels only: "
            f"same tokens {same}/{len(made)}"
        )
        if reference is None:
            reference = pk.get_backend(f"scratch:{path}", device="cpu")
            assert isinstance(reference, ScratchBackend)
            float32, truth = wikitext_pass(reference, ids)
        dense_ppl, dense_top = wikitext_pass(backend, ids)
        with kernels_only():
            kernel_ppl, kernel_top = wikitext_pass(backend, ids)
        print(
            f"{precision} WikiText-2 perplexity (2048 tokens): dense {dense_ppl:.3f}, kernels "
            f"only {kernel_ppl:.3f}, float32 {float32:.3f}: ratio {dense_ppl / kernel_ppl:.4f}x"
        )
        agree = [100 * float((top == truth).float().mean()) for top in (dense_top, kernel_top)]
        print(
            f"{precision} top token equal to float32's (2047 positions): dense {agree[0]:.1f}%, "
            f"kernels only {agree[1]:.1f}%: ratio {agree[0] / agree[1]:.3f}x"
        )
    print(cpu_line())


if __name__ == "__main__":
    main()
