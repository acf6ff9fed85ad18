"""The int8 output projection with row-quantized inputs against the weight-only one, on SmolLM2.

    promptkit pull smollm2
    python bench/head.py [--threads 2] [--precisions int4,int8] [--rounds 5] [--repeats 2]
                         [--new 33] [--ppl-chars 20000]

An int8 or int4 model's output projection is, on a CPU with AVX512-VNNI, :class:`Int8Head`
(FBGEMM's int8 x int8 product, inputs quantized per row, outlier channels in float32), and
elsewhere PyTorch's weight-only kernel. Per precision, both are loaded side by side (the
weight-only one by loading with ``row_quantized_products`` off) and compared:

- the head alone at 1, 8 and 512 rows (median of 20 calls on real hidden states);
- greedy decoding at batch 1 and 8, the two models alternated round by round, the figure the
  median of the paired ratios (this machine's speed drifts by 10-30% within minutes);
- WikiText-2 perplexity (the start of ``../shared/data/corpora/wiki.test.raw``, one window of
  at most 2,048 tokens) and the share of its positions whose top token is float32's.

Each line ends in ``ratio N.NNx``: speed as weight-only time over row-quantized time (above 1
is faster), perplexity as row-quantized over weight-only (above 1 is worse).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from common import call_times
from quant import WIKITEXT, cpu_line, decode_rate, wikitext_pass

import promptkit as pk
from promptkit.backends.scratch import _reduce
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch._int8_head import Int8Head, row_quantized_products
from promptkit.models._registry import pull


def load(spec: str, row_quantized: bool) -> ScratchBackend:
    """``spec`` loaded with the row-quantized head (where it runs) or the weight-only one."""
    chosen = _reduce.row_quantized_products
    _reduce.row_quantized_products = chosen if row_quantized else (lambda: False)
    try:
        backend = pk.get_backend(spec, device="cpu")
    finally:
        _reduce.row_quantized_products = chosen
    assert isinstance(backend, ScratchBackend)
    return backend


def median_ms(call: Callable[[], object], count: int = 20) -> float:
    """Median milliseconds of ``count`` calls after a warm-up call."""
    return statistics.median(call_times(call, count)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="int4,int8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new", type=int, default=33)
    parser.add_argument("--ppl-chars", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line())
    if not row_quantized_products():
        print("this CPU or PyTorch lacks FBGEMM or AVX512-VNNI: the head is weight-only here")
        return
    path = pull("smollm2-135m-instruct")
    text = WIKITEXT.read_text(encoding="utf-8")[: args.ppl_chars] if WIKITEXT.is_file() else None
    reference_top = None
    if text is not None:
        full = load(f"scratch:{path}@float32", True)
        ids = full.tokenizer.encode(text)[:2048]
        reference_top = wikitext_pass(full, ids)[1]
        del full
    for precision in args.precisions.split(","):
        spec = f"scratch:{path}@{precision}"
        rows, plain = load(spec, True), load(spec, False)
        assert isinstance(rows.model.head, Int8Head) and not isinstance(plain.model.head, Int8Head)
        with torch.inference_mode():
            prompt = torch.randint(0, 49152, (1, 512), generator=torch.Generator().manual_seed(0))
            hidden = rows.model(prompt)[0]
            for count in (1, 8, 512):
                x = hidden[:count].contiguous()
                mine = median_ms(lambda x=x, m=rows.model: m.logits(x))
                base = median_ms(lambda x=x, m=plain.model: m.logits(x))
                print(
                    f"{precision} head alone, {count} rows: row-quantized {mine:.2f} ms, "
                    f"weight-only {base:.2f} ms: ratio {base / mine:.2f}x"
                )
        generator = torch.Generator().manual_seed(1)
        for batch in (1, 8):
            prompt = torch.randint(0, 49152, (batch, 64), generator=generator)
            paired = []
            for _ in range(args.rounds):
                base = decode_rate(plain, prompt, args.new, args.repeats)[0]
                mine = decode_rate(rows, prompt, args.new, args.repeats)[0]
                paired.append(mine / base)
            print(
                f"{precision} batch {batch} decoding, row-quantized head against weight-only, "
                f"median of {len(paired)} paired ratios (range {min(paired):.2f}-"
                f"{max(paired):.2f}): ratio {statistics.median(paired):.2f}x"
            )
        if text is not None and reference_top is not None:
            ppl_rows, top_rows = wikitext_pass(rows, ids)
            ppl_plain, top_plain = wikitext_pass(plain, ids)
            agree_rows = float((top_rows == reference_top).float().mean())
            agree_plain = float((top_plain == reference_top).float().mean())
            print(
                f"{precision} WikiText-2 perplexity ({len(ids)} tokens): row-quantized head "
                f"{ppl_rows:.3f}, weight-only {ppl_plain:.3f}: ratio {ppl_rows / ppl_plain:.4f}x"
            )
            print(
                f"{precision} top token equal to float32's: row-quantized head "
                f"{agree_rows:.1%}, weight-only {agree_plain:.1%}: ratio "
                f"{agree_rows / agree_plain:.3f}x"
            )
        print(cpu_line())


if __name__ == "__main__":
    main()
