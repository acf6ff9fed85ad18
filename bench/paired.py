"""SmolLM2-135M decoding against transformers float32, alternated round by round in one process.

    promptkit pull smollm2
    python bench/paired.py [--threads 2] [--precisions int4,int8,bfloat16] [--batches 1,8]
                           [--rounds 5] [--repeats 2] [--new 33] [--score 512]

``bench/quant.py`` times transformers once before each of its figures; on a machine whose
speed drifts by 10-30% within minutes (this project's virtual machines) one pair moves by as
much. Here each round times transformers float32 and then each of our precisions on the same
prompts, back to back, and the figure is the median over rounds of the paired ratios. Greedy
decoding, the end of text ignored, the prompt's pass left out (the time of ``--new`` tokens
less that of one; best of ``--repeats``). Both models stay loaded: the pulled Q4_1 GGUF file,
dequantized by transformers and taken as it is by ``scratch:``.

``--score N`` also scores 8 random sequences of N tokens in each round (the log-probability of
every token, as ``bench/quant.py`` times it) against transformers float32.

Prints each round, then per precision and batch one line ending in ``ratio N.NNx`` (targets of
issue 21: int4 batch 1 >= 3x, int8 batch 1 >= 2x, batch 8 >= 3x on a CPU with bfloat16
arithmetic, scoring 8 x 512 >= 2x there), and the CPU the figures ran on.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from quant import cpu_line, decode_rate, hf_decode_rate, hf_score_rate, score_rate

import promptkit as pk
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.models._registry import pull

SCORING = 0  # the batch key of --score's ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="int4,int8,bfloat16")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=33)
    parser.add_argument(
        "--score", type=int, default=0, help="also score 8 sequences of this many tokens"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    path = pull("smollm2-135m-instruct")
    print(cpu_line())
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ours: dict[str, ScratchBackend] = {}
    for precision in args.precisions.split(","):
        backend = pk.get_backend(f"scratch:{path}@{precision}", device="cpu")
        assert isinstance(backend, ScratchBackend)
        ours[precision] = backend
    vocab = reference.config.vocab_size
    batches = [int(b) for b in args.batches.split(",")]
    generator = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(0, vocab, (b, args.prompt), generator=generator) for b in batches}
    ratios: dict[tuple[str, int], list[float]] = {(p, b): [] for p in ours for b in batches}
    ratios.update({(p, SCORING): [] for p in ours})  # with --score
    scored = torch.randint(0, vocab, (8, args.score), generator=generator)
    for round_ in range(1, args.rounds + 1):
        for batch in batches:
            prompt = prompts[batch]
            theirs = hf_decode_rate(reference, prompt, args.new, 0, args.repeats)
            line = [f"round {round_} batch {batch}: transformers float32 {theirs:6.1f} tok/s"]
            for precision, backend in ours.items():
                mine, _ = decode_rate(backend, prompt, args.new, args.repeats)
                ratios[precision, batch].append(mine / theirs)
                line.append(f"{precision} {mine:6.1f} ({mine / theirs:.2f}x)")
            print(", ".join(line), flush=True)
        if args.score:
            theirs = hf_score_rate(reference, scored, args.repeats)
            line = [f"round {round_} scoring: transformers float32 {theirs:6.0f} tok/s"]
            for precision, backend in ours.items():
                if "compile" not in precision:  # scoring is never compiled
                    mine = score_rate(backend, scored, args.repeats)
                    ratios[precision, SCORING].append(mine / theirs)
                    line.append(f"{precision} {mine:6.0f} ({mine / theirs:.2f}x)")
            print(", ".join(line), flush=True)
    for (precision, batch), paired in ratios.items():
        if not paired:
            continue
        spread = f"{min(paired):.2f}-{max(paired):.2f}"
        what = f"scoring 8 x {args.score}" if batch == SCORING else f"batch {batch}"
        print(
            f"{precision:8s} {what}: median of {len(paired)} paired ratios to transformers "
            f"float32 (range {spread}): ratio {statistics.median(paired):.2f}x"
        )
    print(cpu_line())


if __name__ == "__main__":
    main()
