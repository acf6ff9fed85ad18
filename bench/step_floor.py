"""The floor of a decode step: only the matrix products, at each precision, on this CPU.

    python bench/step_floor.py [--threads 2] [--rows 1,8]

One decode step of SmolLM2-135M multiplies ``rows`` activations (the batch) by 121 matrices:
per layer the fused q/k/v (960 x 576), the attention output (576 x 576), the fused gate/up
(3072 x 576) and the down projection (576 x 1536), 30 layers, then the output projection
(49152 x 576). This bench runs exactly those products with distinct random weights (so that they
stream from memory, as in decoding, instead of sitting in a cache) through the layers the
scratch decoder uses at each precision: float32 ``F.linear``, bfloat16 ``F.linear``, int8
``_weight_int8pack_mm`` and int4 ``_weight_int4pack_mm_for_cpu`` (the int8 and int4 models keep
an int8 output projection). Nothing else of a step runs (norms, rotary, attention, sampling), so
``rows / floor`` is the most tokens a second any decoder built on these kernels can reach.

Prints, for each precision and batch, the step floor in ms, the weight bytes it streamed per
second, the ceiling in tokens/s, and the ratio of that ceiling to float32's (same run, same
rows); then the machine's copy bandwidth. A figure far under the bandwidth means the kernel, not
memory, bounds decoding at that batch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import best_time, memory_bandwidth_gb_s
from quant import cpu_line

from promptkit.backends.scratch._quant import Int4Linear, Int4Weights, Int8Linear

LAYERS = 30
SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))  # (out, in) of one block's products
VOCAB, WIDTH = 49152, 576


Products = list[tuple[Callable[[torch.Tensor], torch.Tensor], int]]  # (multiply, inputs)


def _products(precision: str) -> tuple[Products, int]:
    """The step's products as (multiply, inputs) and the bytes of weights they read."""
    generator = torch.Generator().manual_seed(0)
    shapes = [shape for _ in range(LAYERS) for shape in SHAPES] + [(VOCAB, WIDTH)]
    products, size = [], 0
    for index, (out, width) in enumerate(shapes):
        weight = torch.randn(out, width, generator=generator) / width**0.5
        head = index == len(shapes) - 1
        layer: Callable[[torch.Tensor], torch.Tensor]
        if precision in ("float32", "bfloat16"):
            kept = weight.to(getattr(torch, precision))
            layer, size = (lambda x, w=kept: F.linear(x, w)), size + kept.nbytes
        elif precision == "int8" or head:
            int8 = Int8Linear(weight, None)
            layer, size = int8, size + int8.weight.nbytes + int8.scale.nbytes
        else:
            int4 = Int4Linear(Int4Weights.quantize(weight), None)
            layer, size = int4, size + int4.packed.nbytes + int4.scale_zero.nbytes
        products.append((layer, width))
    return products, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line())
    print(f"{args.threads} threads; the 121 products of a SmolLM2-135M decode step")
    ceilings: dict[int, float] = {}
    for precision in ("float32", "bfloat16", "int8", "int4"):
        products, size = _products(precision)
        dtype = torch.float32 if precision == "float32" else torch.bfloat16
        for rows in (int(r) for r in args.rows.split(",")):
            inputs = {width: torch.randn(rows, width).to(dtype) for width in (576, 1536)}

            def step(
                products: Products = products,
                inputs: dict[int, torch.Tensor] = inputs,
            ) -> None:
                with torch.inference_mode():
                    for multiply, width in products:
                        multiply(inputs[width])

            floor = best_time(step, args.repeats)
            ceiling = rows / floor
            ceilings.setdefault(rows, ceiling)  # float32 runs first: the baseline
            print(
                f"{precision:8s} rows {rows:2d}: step floor {floor * 1e3:6.1f} ms, "
                f"{size / floor / 1e9:5.1f} GB/s of weights, ceiling {ceiling:6.1f} tok/s   "
                f"ratio {ceiling / ceilings[rows]:.2f}x"
            )
    print(f"copy bandwidth {memory_bandwidth_gb_s():.1f} GB/s")


if __name__ == "__main__":
    main()
