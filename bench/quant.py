"""Reduced-precision weights on the scratch decoder: perplexity, memory, speed, agreement.

    promptkit pull smollm2
    python bench/quant.py [--threads 2] [--precisions float32,bfloat16,int8,int4]
                          [--new 32] [--score 128] [--ppl-chars 4000] [--no-transformers] [--gpt2]

SmolLM2-135M-Instruct from the pulled Q4_1 GGUF at every precision (``scratch:...@int4`` keeps
the file's Q4_1 blocks as they are). For each precision: perplexity on the start of WikiText-2's
test split (``../shared/data/corpora/wiki.test.raw``) and its change from float32, the memory
the weights take, greedy decoding at batch 1 and batch 8 (KV cache, end of text ignored; the
time of ``--new`` tokens less that of one, so that the prompt's pass is left out), scoring 8
sequences of ``--score`` tokens, and agreement with float32: the share of WikiText positions
whose top token is float32's (teacher-forced), and how many of the batch-1 greedy tokens equal
float32's. Ratios are against transformers float32 on the same file, and against transformers
at the same precision where it runs one on a CPU (bfloat16; int8 and int4 need torchao there,
not installed). ``--gpt2``: GPT-2 small shape (random weights) decoding at batch 1, the same
against transformers float32. Prints the CPU (lscpu's model name, PyTorch's CPU capability)
and the load average with the figures: timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
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


def score_rate(backend: ScratchBackend, length: int, repeats: int) -> float:
    """Tokens per second of scoring 8 random sequences of ``length`` tokens."""
    vocab = backend.model.config.vocab_size
    rows = torch.randint(0, vocab, (8, length), generator=torch.Generator().manual_seed(3))
    requests = [([0], row) for row in rows.tolist()]
    return 8 * length / best_time(lambda: backend.score_ids(requests), repeats)


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


def ratio(mine: float, theirs: float | None) -> str:
    return "n/a" if theirs is None else f"{mine / theirs:.2f}x"


def smollm2(args: argparse.Namespace) -> None:
    path = pull("smollm2-135m-instruct")
    text = WIKITEXT.read_text(encoding="utf-8")[: args.ppl_chars] if WIKITEXT.is_file() else None
    generator = torch.Generator().manual_seed(0)
    reference: dict[str, Any] = {}
    hf: dict[str, dict[str, float]] = {}
    if args.transformers:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
        for name in ("float32", "bfloat16"):
            model = model.to(getattr(torch, name))
            vocab = model.config.vocab_size
            rates = {}
            for batch in (1, 8):
                prompt = torch.randint(0, vocab, (batch, args.prompt), generator=generator)
                rates[f"b{batch}"] = hf_decode_rate(model, prompt, args.new, 0, args.repeats)
            ids = torch.randint(0, vocab, (8, args.score), generator=generator)
            rates["score"] = hf_score_rate(model, ids, args.repeats)
            hf[name] = rates
            print(
                f"transformers {name:8s}: batch 1 {rates['b1']:6.1f} tok/s, batch 8 "
                f"{rates['b8']:6.1f} tok/s, scoring {rates['score']:6.0f} tok/s"
            )
        del model
    print(
        "precision  load s  weights MB  perplexity (change)  top-1 = f32  greedy = f32  "
        "batch 1 tok/s (vs hf f32, same prec)  batch 8 tok/s (vs hf f32)  scoring tok/s (vs hf f32)"
    )
    for precision in args.precisions.split(","):
        began = time.perf_counter()
        backend = pk.get_backend(f"scratch:{path}@{precision}", device="cpu")
        assert isinstance(backend, ScratchBackend)
        load = time.perf_counter() - began
        vocab = backend.model.config.vocab_size
        ppl, top = float("nan"), None
        if text is not None:
            ppl, top = wikitext_pass(backend, backend.tokenizer.encode(text))
        generator.manual_seed(1)
        rates, tokens = {}, None
        for batch in (1, 8):
            prompt = torch.randint(0, vocab, (batch, args.prompt), generator=generator)
            rates[f"b{batch}"], made = decode_rate(backend, prompt, args.new, args.repeats)
            tokens = made[0] if batch == 1 else tokens
        rates["score"] = score_rate(backend, args.score, args.repeats)
        if precision == "float32" or not reference:
            reference = {"ppl": ppl, "tokens": tokens, "top": top}
        agree = "n/a"
        if top is not None and reference["top"] is not None:
            agree = f"{float((top == reference['top']).float().mean()):.1%}"
        same = sum(a == b for a, b in zip(tokens or [], reference["tokens"] or [], strict=True))
        base, same_precision = hf.get("float32", {}), hf.get(precision, {})
        print(
            f"{precision:9s}  {load:6.1f}  {weight_megabytes(backend.model):10.0f}  "
            f"{ppl:10.2f} ({ppl / reference['ppl'] - 1:+.2%})  {agree:>11s}  "
            f"{same:>5d}/{args.new:<6d}  {rates['b1']:6.1f} ({ratio(rates['b1'], base.get('b1'))}, "
            f"{ratio(rates['b1'], same_precision.get('b1'))})  {rates['b8']:6.1f} "
            f"({ratio(rates['b8'], base.get('b8'))})  {rates['score']:6.0f} "
            f"({ratio(rates['score'], base.get('score'))})"
        )


def gpt2(args: argparse.Namespace) -> None:
    from common import IdsOnlyTokenizer, same_weights

    from promptkit.backends.scratch._quant import reduce_precision

    hf_model, _ = same_weights()
    prompt = torch.randint(0, 50000, (1, args.prompt), generator=torch.Generator().manual_seed(2))
    theirs = hf_decode_rate(hf_model, prompt, args.new, 50256, args.repeats)
    print(f"GPT-2 small (random weights), batch 1: transformers float32 {theirs:6.1f} tok/s")
    for precision in args.precisions.split(","):
        _, ours = same_weights()
        reduce_precision(ours, precision)
        backend = ScratchBackend(ours, IdsOnlyTokenizer())
        rate, _ = decode_rate(backend, prompt, args.new, args.repeats)
        print(f"  ours {precision:8s} {rate:6.1f} tok/s ({rate / theirs:.2f}x)")


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
