"""Greedy decoding speed: our decoder vs transformers' generate, same GPT-2 small weights.

    python bench/decode.py [--threads 2] [--prompt 128] [--new 64]

float32, KV cache on both sides, a 128-token prompt and 64 new tokens (end-of-text ignored
on both sides so that every run produces exactly 64), batch 1 and batch 8. Prints tokens/s,
the ratio ours/transformers (target >= 1.3x), that both produced the same tokens, and at
batch 1 the fraction of the memory-bandwidth limit reached (every new token reads every weight
once, so the limit is bandwidth / model bytes).
"""

from __future__ import annotations

import argparse

import torch
from common import IdsOnlyTokenizer, best_time, memory_bandwidth_gb_s, same_weights

from promptkit.backends import GenerationConfig
from promptkit.backends.scratch._backend import ScratchBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_model, ours = same_weights()
    hf_model, ours = hf_model.to(args.device), ours.to(args.device)
    backend = ScratchBackend(ours, IdsOnlyTokenizer())
    config = GenerationConfig(max_tokens=args.new)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    print(
        f"device {args.device}, {args.threads} threads, GPT-2 small "
        f"({weight_bytes / 1e6:.0f} MB float32), prompt {args.prompt}, {args.new} new tokens"
    )
    bandwidth = memory_bandwidth_gb_s() if args.device == "cpu" else None
    for batch in (1, 8):
        torch.manual_seed(batch)
        prompt = torch.randint(0, 50000, (batch, args.prompt), device=args.device)

        def theirs(prompt: torch.Tensor = prompt) -> torch.Tensor:
            with torch.inference_mode():
                return hf_model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=False,
                    max_new_tokens=args.new,
                    min_new_tokens=args.new,
                    eos_token_id=None,
                    pad_token_id=50256,
                )

        def mine(prompt: torch.Tensor = prompt) -> list[list[int]]:
            return backend.generate_ids(prompt.tolist(), config, stop_at_end_of_text=False)[0]

        same = theirs()[:, args.prompt :].tolist() == mine()
        t_theirs, t_mine = best_time(theirs), best_time(mine)
        rate_theirs, rate_mine = batch * args.new / t_theirs, batch * args.new / t_mine
        print(
            f"batch {batch}: transformers {rate_theirs:6.1f} tok/s   ours {rate_mine:6.1f} tok/s"
            f"   same tokens: {same}   (target >= 1.3x) ratio {rate_mine / rate_theirs:.2f}x"
        )
        if batch == 1 and bandwidth:
            limit = bandwidth * 1e9 / weight_bytes
            print(
                f"  memory bandwidth {bandwidth:.1f} GB/s -> limit {limit:.1f} tok/s; ours "
                f"reaches {rate_mine / limit:.0%}, transformers {rate_theirs / limit:.0%}"
            )


if __name__ == "__main__":
    main()
