"""SmolLM2-135M-Instruct batch-1 decoding: the scratch decoder (int4, the file's own Q4_1
blocks) against llama.cpp on the same Q4_1 GGUF file, through llama-cpp-python.

    promptkit pull smollm2
    pip install llama-cpp-python      # see bench/README.md for a build for this CPU
    python bench/llamacpp.py [--threads 2] [--prompt 64] [--new 32] [--repeats 2]

Greedy decoding of ``--new`` tokens after the same random ``--prompt`` token ids, the end of
text ignored (both sides make every token), timed without the prompt's pass (the time of one
new token subtracted). Prints tokens/s, the ratio ours/llama.cpp (target:
>= 0.5x), how many of the tokens agree, and the CPU the figures ran on. Exits with a message
(status 0) when llama-cpp-python is not installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from common import best_time
from quant import cpu_line

import promptkit as pk
from promptkit.backends import GenerationConfig
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.models._registry import pull


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="int4", help="the scratch side's precision")
    args = parser.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        print("skipped: llama-cpp-python is not installed (bench/README.md says how to build it)")
        sys.exit(0)
    torch.set_num_threads(args.threads)
    path = pull("smollm2-135m-instruct")
    print(cpu_line())
    ours = pk.get_backend(f"scratch:{path}@{args.dtype}", device="cpu")
    assert isinstance(ours, ScratchBackend)
    theirs = Llama(
        model_path=str(path),
        n_ctx=args.prompt + args.new + 8,
        n_threads=args.threads,
        n_batch=args.prompt,
        verbose=False,
    )
    vocab = ours.model.config.vocab_size
    prompt = torch.randint(0, vocab, (args.prompt,), generator=torch.Generator().manual_seed(0))
    ids = prompt.tolist()

    def mine(count: int) -> list[int]:
        config = GenerationConfig(max_tokens=count)
        return ours.generate_ids([ids], config, stop_at_end_of_text=False)[0][0]

    def llama_cpp(count: int) -> list[int]:
        made: list[int] = []
        for token in theirs.generate(ids, top_k=1, temp=0.0, reset=True):
            made.append(int(token))
            if len(made) == count:
                break
        return made

    def rate(run: Callable[[int], list[int]]) -> float:
        """New tokens per second, the prompt's pass left out (``--new`` tokens less one)."""
        seconds = best_time(lambda: run(args.new), args.repeats)
        return (args.new - 1) / (seconds - best_time(lambda: run(1), args.repeats))

    same = sum(a == b for a, b in zip(mine(args.new), llama_cpp(args.new), strict=True))
    rate_mine, rate_theirs = rate(mine), rate(llama_cpp)
    print(
        f"{args.threads} threads, prompt {args.prompt}, {args.new} new tokens, batch 1: "
        f"llama.cpp (Q4_1) {rate_theirs:6.1f} tok/s   ours ({args.dtype}) {rate_mine:6.1f} tok/s   "
        f"same tokens {same}/{args.new}   ratio {rate_mine / rate_theirs:.2f}x"
    )
    print(cpu_line())


if __name__ == "__main__":
    main()
