"""Compiled decoding steps (``scratch:MODEL@int4+compile``) against the same precision eager,
on SmolLM2-135M-Instruct.

    promptkit pull smollm2
    python bench/compiled.py [--threads 2] [--precision int4] [--batches 1,8] [--rounds 3]
                             [--new 33] [--prompt 64] [--model smollm2|gpt2]

``--model gpt2`` runs our GPT-2 small with random weights instead (it needs GPT-2's tokenizer
from ../shared/data/gpt2-tokenizer; no agreement figures, having no trained weights).

Prints, for each batch size:

- the compile time: the first generation's time less a later one's. It counts what this
  process compiles with whatever inductor's on-disk caches hold; run the bench twice to see
  both the cold figure and the warm one;
- the median over ``--rounds`` of the paired ratio of compiled to eager tokens per second
  (greedy, the prompt's pass left out, as ``bench/paired.py`` times it), ending in
  ``ratio N.NNx``.

Then the top-1 agreement with float32, eager and compiled, teacher-forced one position at a
time over 8 rows of a WikiText-2 slice (``../shared/data/corpora/wiki.test.raw``; skipped
with a message without it). ``bench/paired.py --precisions int4,int4+compile`` gives the
ratios to transformers float32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from quant import WIKITEXT, cpu_line, decode_rate

import promptkit as pk
from promptkit.backends._base import GenerationConfig
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch._reduce import reduce_precision
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.backends.scratch.gpt2 import GPT, PRESETS
from promptkit.models._registry import pull

GPT2_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"


def first_call_seconds(backend: ScratchBackend, prompt: torch.Tensor, new: int) -> float:
    """The first generation's time less the second's: what compiling the steps costs."""
    config = GenerationConfig(max_tokens=new)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        backend.generate_ids(prompt.tolist(), config, stop_at_end_of_text=False)
        times.append(time.perf_counter() - start)
    return times[0] - times[1]


def gpt2_small(precision: str) -> tuple[ScratchBackend, ScratchBackend]:
    """Our GPT-2 small with random weights in ``precision``: an eager backend and a compiled
    one over the same model."""
    if not (GPT2_TOKENIZER / "tokenizer.json").is_file():
        sys.exit(f"--model gpt2 needs GPT-2's tokenizer in {GPT2_TOKENIZER}")
    torch.manual_seed(0)
    model = GPT(PRESETS["gpt2"]).eval()
    reduce_precision(model, precision)
    tokenizer = Tokenizer.from_folder(GPT2_TOKENIZER)
    return ScratchBackend(model, tokenizer), ScratchBackend(model, tokenizer, compile=True)


def teacher_forced_top1(
    backend: ScratchBackend, rows: torch.Tensor, compiled: bool
) -> torch.Tensor:
    """The top-1 tokens of ``rows`` ``(B, T)``' positions after the first 16, fed one at a
    time through the compiled step or the eager model."""
    model, step = backend.model, backend.compiled_step
    batch, total = rows.shape
    tops = []
    with torch.inference_mode():  # the cache and rows made here, as generation makes them
        cache = model.new_cache(batch, total)  # (else: another graph)
        key_valid = torch.ones(batch, total, dtype=torch.bool)
        rows = rows.clone()
        model(rows[:, :16], cache=cache)
        for i in range(16, total - 1):
            positions = torch.full((batch, 1), i)
            if compiled and step is not None:
                hidden = step(
                    rows[:, i : i + 1],
                    positions=positions,
                    key_valid=key_valid[:, : i + 1],
                    cache=cache,
                )
            else:
                hidden = model(rows[:, i : i + 1], positions=positions, cache=cache)
            tops.append(model.logits(hidden[:, -1]).argmax(-1))
    return torch.stack(tops, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=33)
    parser.add_argument("--model", choices=("smollm2", "gpt2"), default="smollm2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line())
    if args.model == "gpt2":
        eager, compiled = gpt2_small(args.precision)
    else:
        path = pull("smollm2-135m-instruct")
        eager = pk.get_backend(f"scratch:{path}@{args.precision}", device="cpu")
        compiled = pk.get_backend(f"scratch:{path}@{args.precision}+compile", device="cpu")
    assert isinstance(eager, ScratchBackend) and isinstance(compiled, ScratchBackend)
    print(f"{args.model}, {args.precision}, {args.threads} threads")
    vocab = eager.model.config.vocab_size
    batches = [int(b) for b in args.batches.split(",")]
    generator = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(0, vocab, (b, args.prompt), generator=generator) for b in batches}
    for batch in batches:
        seconds = first_call_seconds(compiled, prompts[batch], args.new)
        print(f"batch {batch}: compiling the steps took {seconds:.1f} s in this process")
    ratios: dict[int, list[float]] = {b: [] for b in batches}
    for round_ in range(1, args.rounds + 1):
        for batch in batches:
            slow, _ = decode_rate(eager, prompts[batch], args.new, args.repeats)
            fast, _ = decode_rate(compiled, prompts[batch], args.new, args.repeats)
            ratios[batch].append(fast / slow)
            print(
                f"round {round_} batch {batch}: eager {slow:6.1f} tok/s, compiled {fast:6.1f} "
                f"({fast / slow:.2f}x)",
                flush=True,
            )
    for batch, paired in ratios.items():
        print(
            f"{args.precision} batch {batch}: compiled steps against eager, median of "
            f"{len(paired)} paired ratios (range {min(paired):.2f}-{max(paired):.2f}): "
            f"ratio {statistics.median(paired):.2f}x"
        )
    if args.model == "gpt2":
        pass  # random weights: agreement with float32 would say nothing
    elif not WIKITEXT.is_file():
        print(f"no agreement figures: {WIKITEXT} is not there (it comes with ../shared/data)")
    else:
        reference = pk.get_backend(f"scratch:{path}", device="cpu")
        assert isinstance(reference, ScratchBackend)
        ids = eager.tokenizer.encode(WIKITEXT.read_text(encoding="utf-8")[:40000])
        rows = torch.tensor([ids[i * 1000 : i * 1000 + 80] for i in range(8)])
        truth = teacher_forced_top1(reference, rows, compiled=False)
        for label, backend, flag in (("eager", eager, False), ("compiled", compiled, True)):
            agree = (teacher_forced_top1(backend, rows, flag) == truth).float().mean().item()
            print(f"{args.precision} {label}: top-1 agreement with float32 {100 * agree:.1f}%")
    print(cpu_line())


if __name__ == "__main__":
    main()
