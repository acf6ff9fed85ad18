"""SmolLM2-135M-Instruct speed: the scratch decoder vs transformers on the same GGUF file.

    promptkit pull smollm2
    python bench/smollm2_speed.py [--threads 2] [--prompt 128] [--new 32] [--score 256]

Both sides load the pulled Q4_1 GGUF (sha256 b179c952...) dequantized to float32: ours through
``scratch:``, transformers through ``gguf_file=``. Greedy decoding (KV cache, end-of-turn
ignored so that every run makes exactly ``--new`` tokens) at batch 1 and batch 8, and
log-likelihood scoring of 8 sequences of ``--score`` tokens. Prints tokens/s, the ratio
ours/transformers, and whether both produced the same tokens / scores.
"""

from __future__ import annotations

import argparse

import torch
import transformers
from common import best_time

import promptkit as pk
from promptkit.backends import GenerationConfig
from promptkit.models._registry import pull


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--score", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = pull("smollm2-135m-instruct")
    backend = pk.get_backend(f"scratch:{path}", device="cpu")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    vocab = backend.model.config.vocab_size
    config = GenerationConfig(max_tokens=args.new)
    print(
        f"cpu, {args.threads} threads, SmolLM2-135M-Instruct (Q4_1 GGUF as float32), prompt "
        f"{args.prompt}, {args.new} new tokens, best of {args.repeats}"
    )
    for batch in (1, 8):
        prompt = torch.randint(
            0, vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch)
        )

        def theirs(prompt: torch.Tensor = prompt) -> torch.Tensor:
            with torch.inference_mode():
                return hf_model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=False,
                    max_new_tokens=args.new,
                    min_new_tokens=args.new,
                    eos_token_id=None,
                    pad_token_id=backend.tokenizer.eot_id,
                )

        def mine(prompt: torch.Tensor = prompt) -> list[list[int]]:
            return backend.generate_ids(prompt.tolist(), config, stop_at_end_of_text=False)[0]

        same = theirs()[:, args.prompt :].tolist() == mine()
        t_theirs = best_time(theirs, args.repeats)
        t_mine = best_time(mine, args.repeats)
        rate_theirs, rate_mine = batch * args.new / t_theirs, batch * args.new / t_mine
        print(
            f"batch {batch}: transformers {rate_theirs:6.1f} tok/s   ours {rate_mine:6.1f} tok/s"
            f"   ratio {rate_mine / rate_theirs:.2f}x   same tokens: {same}"
        )
    ids = torch.randint(0, vocab, (8, args.score), generator=torch.Generator().manual_seed(0))

    def theirs_score() -> list[float]:
        with torch.inference_mode():
            logprobs = hf_model(ids).logits.log_softmax(-1)
            return logprobs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1).tolist()

    requests = [(row[:1], row[1:]) for row in ids.tolist()]

    def mine_score() -> list[float]:
        return [score for score, _ in backend.score_ids(requests)]

    agree = all(
        abs(a - b) < 1e-3 * max(1.0, abs(a))
        for a, b in zip(theirs_score(), mine_score(), strict=True)
    )
    tokens = 8 * args.score
    t_theirs, t_mine = best_time(theirs_score, args.repeats), best_time(mine_score, args.repeats)
    print(
        f"scoring 8 x {args.score} tokens: transformers {tokens / t_theirs:6.0f} tok/s   ours "
        f"{tokens / t_mine:6.0f} tok/s   ratio {t_theirs / t_mine:.2f}x   same scores: {agree}"
    )


if __name__ == "__main__":
    main()
