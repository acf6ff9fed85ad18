"""Log-likelihood scoring speed: ours vs transformers' forward + log_softmax + gather.

    python bench/score.py [--threads 2] [--batch 8] [--length 512]

Same GPT-2 small weights, float32. Task: the summed log-probability of every token of 8
sequences of 512 tokens given the tokens before it (and, second row, of only the last 32
tokens of each, as when scoring answers). transformers computes all logits then a full
log_softmax; ours scores chunks of positions, and only the positions asked for. Checks that
both give the same numbers. Target: >= 1.3x.
"""

from __future__ import annotations

import argparse

import torch
from common import IdsOnlyTokenizer, best_time, same_weights

from promptkit.backends.scratch._backend import ScratchBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_model, ours = same_weights()
    backend = ScratchBackend(ours, IdsOnlyTokenizer())
    torch.manual_seed(0)
    ids = torch.randint(0, 50000, (args.batch, args.length))
    tokens = args.batch * args.length
    print(f"cpu, {args.threads} threads, GPT-2 small, {args.batch} x {args.length} tokens")
    for scored in (args.length - 1, 32):
        split = args.length - scored

        def theirs(split: int = split) -> list[float]:
            with torch.inference_mode():
                logprobs = hf_model(ids).logits.log_softmax(-1)  # (B, T, vocab)
                picked = logprobs[:, split - 1 : -1].gather(-1, ids[:, split:, None])
                return picked.squeeze(-1).sum(-1).tolist()

        requests = [(row[:split], row[split:]) for row in ids.tolist()]

        def mine(requests: list[tuple[list[int], list[int]]] = requests) -> list[float]:
            return [score for score, _ in backend.score_ids(requests)]

        agree = all(
            abs(a - b) < 1e-2 * max(1.0, abs(a)) for a, b in zip(theirs(), mine(), strict=True)
        )
        t_theirs, t_mine = best_time(theirs), best_time(mine)
        print(
            f"scoring {scored} of {args.length} tokens per sequence: transformers "
            f"{tokens / t_theirs:6.0f} tok/s   ours {tokens / t_mine:6.0f} tok/s   same scores: "
            f"{agree}   (target >= 1.3x) ratio {t_theirs / t_mine:.2f}x"
        )


if __name__ == "__main__":
    main()
