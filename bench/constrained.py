"""Cost of constrained decoding: the token mask vs the model step.

    python bench/constrained.py [--threads 2] [--new 64] [--runs 3] [--dtype int4] [--compile]
                                [--model smollm2-135m-instruct]

The same model (by default our GPT-2 small with random weights; ``--model NAME`` a real model
``scratch:`` loads, such as SmolLM2-135M-Instruct after ``promptkit pull``; float32 or
``--dtype``'s precision, CPU), the same prompt (the bundled ``extract`` template rendered with
its sample, about 300 tokens; a model with a chat template reads it as a conversation) and the
same number of new tokens, decoded greedily without and with the output type's grammar.
Random weights are the masker's worst case (their most likely token is rarely allowed, so
the full mask is computed at most steps); a real model shows the usual case. Prints:

- the median and mean time per decoding step spent in the token masker (computing the allowed
  tokens, applying them to the logits, feeding the chosen token, fast-forward and budget
  checks), in microseconds, and that mean as a ratio to an unconstrained step (target <= 0.05x,
  5%): of the model's forward pass alone, and of a whole turn of the unconstrained decoding loop
  (the interval between two forward passes: the pass, the output projection, sampling). The
  masker's time includes the greedy argmax, which a constrained step takes in place of the
  sampler's;
- the end-to-end time per new token, constrained over unconstrained (fast-forward lets the
  constrained side skip the model for tokens the grammar forces);
- grammar preparation for every bundled template with a structured output type, after the
  tokenizer is cached (target < 10 ms): compiling the grammar and creating the matcher.

``--compile`` runs the decoding steps compiled (``compile=True``, see ``_compiled``), after one
unmeasured generation that compiles them. Its forward pass is then one compiled call, so the
model step alone is not timed; a whole step is the interval between two output projections.

GPT-2 small needs GPT-2's tokenizer files from ../shared/data/gpt2-tokenizer (a real 50k
vocabulary).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import promptkit as pk
from promptkit._grammar import grammar_for
from promptkit._llg import compile_grammar, llg_tokenizer
from promptkit.backends import GenerationConfig
from promptkit.backends._base import messages_to_text
from promptkit.backends._masking import TokenMasker
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch._reduce import reduce_precision
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.backends.scratch.gpt2 import GPT, PRESETS

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"


def timed(
    owner: Any, name: str, into: list[tuple[str, float]], starts: list[float] | None = None
) -> Callable[[], None]:
    """Record the wall time of every call of ``owner.name`` (and, in ``starts``, when each
    began); returns the undo."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        if starts is not None:
            starts.append(began)
        try:
            return original(*args, **kwargs)
        finally:
            into.append((name, time.perf_counter() - began))

    setattr(owner, name, wrapper)
    return lambda: setattr(owner, name, original)


def per_step(calls: list[tuple[str, float]]) -> list[float]:
    """Masker time of each decoding step: an ``apply`` and the calls that follow it."""
    steps: list[float] = []
    for name, seconds in calls:
        if name == "apply" or not steps:
            steps.append(0.0)
        steps[-1] += seconds
    return steps


def load(model: str | None, dtype: str, compile: bool) -> tuple[ScratchBackend, str]:
    """The scratch backend to measure, and its description."""
    if model:
        backend = pk.get_backend(f"scratch:{model}", dtype=dtype, compile=compile)
        assert isinstance(backend, ScratchBackend)
        return backend, model
    if not (TOKENIZER / "tokenizer.json").is_file():
        sys.exit(f"needs GPT-2's tokenizer in {TOKENIZER}")
    net = GPT(PRESETS["gpt2"]).eval()
    reduce_precision(net, dtype)
    return ScratchBackend(
        net, Tokenizer.from_folder(TOKENIZER), compile=compile
    ), "GPT-2 small, random weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", help="weights' precision (see _quant)")
    parser.add_argument("--compile", action="store_true", help="compiled decoding steps")
    parser.add_argument("--model", help="a model scratch: loads (default: GPT-2, random weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # a faster step makes the masker's share larger
    backend, described = load(args.model, args.dtype, args.compile)
    tokenizer = backend.tokenizer
    vocab = backend.model.config.vocab_size

    began = time.perf_counter()
    llg = llg_tokenizer(tokenizer, tokenizer.to_llguidance, vocab)
    print(f"llguidance tokenizer built once in {time.perf_counter() - began:.2f} s (then cached)")

    extract = pk.load_prompt("extract")
    messages = extract.render(extract.metadata["sample"])  # type: ignore[arg-type]
    prompt = messages if args.model else messages_to_text(messages)
    grammar = grammar_for(extract.output)
    plain = GenerationConfig(max_tokens=args.new)
    constrained = plain.replace(grammar=grammar)
    print(
        f"{args.threads} threads, {described} ({args.dtype}"
        f"{', compiled steps' if args.compile else ''}), prompt "
        f"{len(backend.prompt_ids(prompt))} tokens, {args.new} new tokens, greedy"
    )

    if args.compile:  # compiles the one-row step, unmeasured
        backend.generate(prompt, plain)
    forward: list[tuple[str, float]] = []
    starts: list[float] = []
    # compiled, the forward pass is traced: the output projection (eager) marks each step
    undo = timed(backend.model, "logits" if args.compile else "forward", forward, starts)
    plain_steps: list[float] = []  # the model's forward pass alone
    whole_steps: list[float] = []  # forward, logits, sampling: one turn of the decoding loop
    seconds_per_token: dict[str, list[float]] = {"plain": [], "constrained": []}
    for _ in range(args.runs):
        forward.clear()
        starts.clear()
        began = time.perf_counter()
        completion = backend.generate(prompt, plain)
        seconds_per_token["plain"].append(
            (time.perf_counter() - began) / completion.usage.completion_tokens
        )
        plain_steps += [seconds for _, seconds in forward[1:]]  # after the prompt's pass
        whole_steps += [b - a for a, b in itertools.pairwise(starts[1:])]  # after the prompt
    undo()

    calls: list[tuple[str, float]] = []
    names = ("apply", "fits", "advance", "forced")  # fits: the drawn token's budget check
    undos = [timed(TokenMasker, name, calls) for name in names]
    masker_steps: list[float] = []
    all_calls: list[tuple[str, float]] = []
    apply_calls: list[float] = []
    text = ""
    for _ in range(args.runs):
        calls.clear()
        began = time.perf_counter()
        completion = backend.generate(prompt, constrained)
        seconds_per_token["constrained"].append(
            (time.perf_counter() - began) / completion.usage.completion_tokens
        )
        masker_steps += per_step(calls)
        all_calls += calls
        apply_calls += [seconds for name, seconds in calls if name == "apply"]
        text = completion.text
    for undo in undos:
        undo()

    step = statistics.median(plain_steps)
    whole = statistics.median(whole_steps)
    mean = statistics.mean(masker_steps)
    model_step = "not timed (compiled)" if args.compile else f"median {step * 1e3:.2f} ms"
    print(
        f"unconstrained model step: {model_step}; whole decoding step (model, "
        f"output projection, sampling, bookkeeping): median {whole * 1e3:.2f} ms\n"
        f"token masker per step: median {statistics.median(masker_steps) * 1e6:.0f} us, "
        f"mean {mean * 1e6:.0f} us; of which the mask (compute, apply, budget guard): median "
        f"{statistics.median(apply_calls) * 1e6:.0f} us, max {max(apply_calls) * 1e6:.0f} us\n"
        + ("" if args.compile else f"token masker / model step: ratio {mean / step:.2f}x\n")
        + f"token masker / whole decoding step (target <= 0.05x): ratio {mean / whole:.2f}x"
    )
    steps = len(masker_steps)
    shares = ", ".join(
        f"{name} {sum(sec for n, sec in all_calls if n == name) / steps * 1e6:.0f} us"
        for name in names
    )
    print(f"  the masker's mean per step by method: {shares}")
    plain_token = statistics.median(seconds_per_token["plain"])
    constrained_token = statistics.median(seconds_per_token["constrained"])
    print(
        f"time per new token: unconstrained {plain_token * 1e3:.2f} ms, constrained "
        f"{constrained_token * 1e3:.2f} ms (fast-forward skips the model for tokens the grammar "
        f"forces): ratio {constrained_token / plain_token:.2f}x"
    )
    valid = grammar is not None and grammar.matches(text)
    print(f"constrained answer (valid: {valid}): {text[:100]!r}")

    print("grammar preparation (tokenizer cached), per bundled template:")
    worst = 0.0
    for name in pk.bundled_templates():
        template_grammar = grammar_for(pk.load_prompt(name).output)
        if template_grammar is None:
            continue
        times = []
        for _ in range(5):
            compile_grammar.cache_clear()
            began = time.perf_counter()
            TokenMasker(template_grammar, llg, batch=1, vocab_size=vocab, max_tokens=256)
            times.append(time.perf_counter() - began)
        best = min(times)
        worst = max(worst, best)
        print(f"  {name:18s} {best * 1e3:6.2f} ms")
    print(f"slowest {worst * 1e3:.2f} ms (target < 10 ms)")


if __name__ == "__main__":
    main()
