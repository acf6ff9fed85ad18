"""SmolLM2-135M decoding against transformers float32, alternated round by round in one process.

    promptkit pull smollm2
    python bench/paired.py [--threads 2] [--precisions int4,int8,bfloat16] [--batches 1,8]
                           [--rounds 5] [--repeats 2] [--new 33]

``bench/quant.py`` times transformers once before each of its figures; on a machine whose
speed drifts by 10-30% within minutes (this project's virtual machines) one pair moves by as
much. Here each round times transformers float32 and then each of our precisions on the same
prompts, back to back, and the figure is the median over rounds of the paired ratios. Greedy
decoding, the end of text ignored, the prompt's pass left out (the time of ``--new`` tokens
less that of one; best of ``--repeats``). Both models stay loaded: the pulled Q4_1 GGUF file,
dequantized by transformers and taken as it is by ``scratch:``.

Prints each round, then per precision and batch one line ending in ``ratio N.NNx`` (targets of
issue 21: int4 batch 1 >= 3x, int8 batch 1 >= 2x, batch 8 >= 3x on a CPU with bfloat16
arithmetic), and the CPU the figures ran on.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from quant import cpu_line, decode_rate, hf_decode_rate

import promptkit as pk
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.models._registry import pull


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="int4,int8,bfloat16")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=33)
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
    for (precision, batch), paired in ratios.items():
        spread = f"{min(paired):.2f}-{max(paired):.2f}"
        print(
            f"{precision:8s} batch {batch}: median of {len(paired)} paired ratios to transformers "
            f"float32 (range {spread}): ratio {statistics.median(paired):.2f}x"
        )
    print(cpu_line())


if __name__ == "__main__":
    main()
