"""Reduced-precision weights on the scratch decoder: perplexity, memory, speed, agreement.

    promptkit pull smollm2
    python bench/quant.py [--threads 2] [--precisions float32,bfloat16,int8,int4]
                          [--new 32] [--score 128] [--ppl-chars 4000] [--no-transformers] [--gpt2]

SmolLM2-135M-Instruct from the pulled Q4_1 GGUF at every precision (``scratch:...@int4`` keeps
the file's Q4_1 blocks as they are). For each precision, one line per figure, each ending in
``ratio N.NNx`` against a baseline measured in the same run:

- greedy decoding at batch 1 and batch 8 (KV cache, end of text ignored; the time of ``--new``
  tokens less that of one, so that the prompt's pass is left out), against transformers float32
  on the same file and prompts, timed straight before ours (this machine's speed drifts within
  minutes; ``paired.py`` gives medians over alternating rounds), and against transformers at
  the same precision where it runs one on a CPU (bfloat16; int8 and int4 need torchao there);
- scoring 8 sequences of ``--score`` tokens, the same against transformers float32;
- the memory the weights take, and the perplexity on the start of WikiText-2's test split
  (``../shared/data/corpora/wiki.test.raw``), against the first precision listed (float32);

then the agreement with it: the share of WikiText positions whose top token is float32's
(teacher-forced), and how many of the batch-1 greedy tokens equal float32's. ``--gpt2``: GPT-2
small shape (random weights) decoding at batch 1, the same against transformers float32.
Prints the CPU (lscpu's model name, PyTorch's CPU capability) and the load average with the
figures: timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from common import best_time

import promptkit as pk
from promptkit.backends import GenerationConfig
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.models._registry import pull

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "wiki.test.raw"


def cpu_line() -> str:
    """lscpu's model name, PyTorch's CPU capability, bfloat16 arithmetic, the load average."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            "unknown CPU",
        )
    except (OSError, subprocess.CalledProcessError):
        model = "unknown CPU (no lscpu)"
    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else "no AVX512-BF16"
    amx = "AMX" if torch.cpu._is_amx_tile_supported() else "no AMX"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}; torch {torch.__version__} {capability}, {bf16}, {amx}; load {load}"


def weight_megabytes(model: torch.nn.Module) -> float:
    """What the model's parameters and buffers take in memory."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def decode_rate(
    backend: ScratchBackend, prompt: torch.Tensor, new: int, repeats: int
) -> tuple[float, list[list[int]]]:
    """Tokens per second of greedy decoding after ``prompt`` ``(B, T)`` (the prompt's own pass
    left out: ``new`` tokens' time less one token's), and the tokens made."""

    def run(count: int) -> list[list[int]]:
        config = GenerationConfig(max_tokens=count)
        return backend.generate_ids(prompt.tolist(), config, stop_at_end_of_text=False)[0]

    seconds = best_time(lambda: run(new), repeats) - best_time(lambda: run(1), repeats)
    return prompt.size(0) * (new - 1) / seconds, run(new)


def hf_decode_rate(model: Any, prompt: torch.Tensor, new: int, pad: int, repeats: int) -> float:
    """transformers' tokens per second, measured as :func:`decode_rate` measures ours."""

    def run(count: int) -> Any:
        with torch.inference_mode():
            return model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=count,
                min_new_tokens=count,
                eos_token_id=None,
                pad_token_id=pad,
            )

    seconds = best_time(lambda: run(new), repeats) - best_time(lambda: run(1), repeats)
    return prompt.size(0) * (new - 1) / seconds


def hf_score_rate(model: Any, ids: torch.Tensor, repeats: int) -> float:
    def run() -> Any:
        with torch.inference_mode():
            logprobs = model(ids).logits.float().log_softmax(-1)
            return logprobs[:, :-1].gather(-1, ids[:, 1:, None]).sum()

    return ids.numel() / best_time(run, repeats)


def score_rate(backend: ScratchBackend, ids: torch.Tensor, repeats: int) -> float:
    """Tokens per second of scoring the rows of ``ids`` ``(B, T)``, each whole."""
    requests = [([0], row) for row in ids.tolist()]
    return ids.numel() / best_time(lambda: backend.score_ids(requests), repeats)


def wikitext_pass(backend: ScratchBackend, ids: list[int]) -> tuple[float, torch.Tensor]:
    """Perplexity of ``ids`` (one window) and the top token at every position, from one pass."""
    with torch.inference_mode():
        hidden = backend.model(torch.tensor([ids]))[0, :-1]
        targets = torch.tensor(ids[1:])
        nll, top = [], []
        for i in range(0, len(ids) - 1, 256):
            logprobs = backend.model.logits(hidden[i : i + 256]).log_softmax(-1)
            nll.append(-logprobs.gather(-1, targets[i : i + 256, None]).squeeze(-1))
            top.append(logprobs.argmax(-1))
        return float(torch.cat(nll).mean().exp()), torch.cat(top)


def figure(label: str, mine: float, base_label: str, base: float, unit: str) -> str:
    """One bench line: our figure against a baseline measured in the same run."""
    return f"{label}: {mine:.1f} {unit}, {base_label} {base:.1f} {unit}: ratio {mine / base:.2f}x"


def smollm2(args: argparse.Namespace) -> None:
    path = pull("smollm2-135m-instruct")
    text = WIKITEXT.read_text(encoding="utf-8")[: args.ppl_chars] if WIKITEXT.is_file() else None
    if text is None:
        print(f"no perplexity: {WIKITEXT} is not there (it comes with ../shared/data)")
    generator = torch.Generator().manual_seed(0)
    theirs: dict[str, Any] = {}  # transformers at float32 and bfloat16, loaded once
    if args.transformers:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
        theirs = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    reference: dict[str, Any] = {}
    for precision in args.precisions.split(","):
        began = time.perf_counter()
        backend = pk.get_backend(f"scratch:{path}@{precision}", device="cpu")
        assert isinstance(backend, ScratchBackend)
        load = time.perf_counter() - began
        vocab = backend.model.config.vocab_size
        megabytes = weight_megabytes(backend.model)
        ppl, top = float("nan"), None
        if text is not None:
            ppl, top = wikitext_pass(backend, backend.tokenizer.encode(text))
        generator.manual_seed(1)
        tokens = None
        # transformers is timed straight before each of our figures, on the same prompts:
        # this machine's speed drifts within minutes (see paired.py for medians over rounds)
        baselines = [name for name in ("float32", precision) if name in theirs]
        for batch in (1, 8):
            prompt = torch.randint(0, vocab, (batch, args.prompt), generator=generator)
            before = {
                name: hf_decode_rate(theirs[name], prompt, args.new, 0, args.repeats)
                for name in dict.fromkeys(baselines)
            }
            rate, made = decode_rate(backend, prompt, args.new, args.repeats)
            tokens = made[0] if batch == 1 else tokens
            if not before:
                print(f"{precision} batch {batch}: {rate:.1f} tok/s")
            for name, base in before.items():
                label = f"transformers {name} just before"
                print(figure(f"{precision} batch {batch}", rate, label, base, "tok/s"))
        ids = torch.randint(0, vocab, (8, args.score), generator=generator)
        base = hf_score_rate(theirs["float32"], ids, args.repeats) if theirs else None
        scored = score_rate(backend, ids, args.repeats)
        label = f"{precision} scoring 8 x {args.score}"
        if base is None:
            print(f"{label}: {scored:.0f} tok/s")
        else:
            print(figure(label, scored, "transformers float32 just before", base, "tok/s"))
        if not reference:  # float32 when it is listed first
            reference = {"precision": precision, "ppl": ppl, "tokens": tokens, "top": top}
            reference["megabytes"] = megabytes
        first = reference["precision"]
        print(figure(f"{precision} weights", megabytes, f"{first}'s", reference["megabytes"], "MB"))
        if text is not None:
            change = f"{ppl / reference['ppl'] - 1:+.2%}"
            print(
                f"{precision} WikiText-2 perplexity ({change}): {ppl:.2f}, {first}'s "
                f"{reference['ppl']:.2f}: ratio {ppl / reference['ppl']:.2f}x"
            )
        agree = "n/a"
        if top is not None and reference["top"] is not None:
            agree = f"{float((top == reference['top']).float().mean()):.1%}"
        same = sum(a == b for a, b in zip(tokens or [], reference["tokens"] or [], strict=True))
        print(
            f"{precision} agreement with {first}: top token at {agree} of WikiText-2 positions, "
            f"{same}/{args.new} batch-1 greedy tokens; loaded in {load:.1f} s"
        )


def gpt2(args: argparse.Namespace) -> None:
    from common import IdsOnlyTokenizer, same_weights

    from promptkit.backends.scratch._reduce import reduce_precision

    hf_model, _ = same_weights()
    prompt = torch.randint(0, 50000, (1, args.prompt), generator=torch.Generator().manual_seed(2))
    for precision in args.precisions.split(","):
        _, ours = same_weights()
        reduce_precision(ours, precision)
        backend = ScratchBackend(ours, IdsOnlyTokenizer())
        theirs = hf_decode_rate(hf_model, prompt, args.new, 50256, args.repeats)
        rate, _ = decode_rate(backend, prompt, args.new, args.repeats)
        label = f"GPT-2 small (random weights) {precision} batch 1"
        print(figure(label, rate, "transformers float32 just before", theirs, "tok/s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="float32,bfloat16,int8,int4")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--score", type=int, default=128)
    parser.add_argument("--ppl-chars", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-transformers", dest="transformers", action="store_false")
    parser.add_argument("--gpt2", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line())
    print(f"{args.threads} threads, prompt {args.prompt}, {args.new} new tokens")
    smollm2(args)
    if args.gpt2:
        gpt2(args)
    print(cpu_line())


if __name__ == "__main__":
    main()
