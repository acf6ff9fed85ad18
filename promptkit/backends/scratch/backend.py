"""The scratch backend: promptkit's own GPT behind the backend interface.

Generation decodes incrementally with a preallocated key/value cache (left-padded batches, so
every prompt gets the same tokens as alone); scoring computes log-probabilities in chunks of
positions, never the full (tokens x vocabulary) log-softmax at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import ConfigurationError, ContextWindowError, InputValidationError
from ..base import Backend, Capabilities, Completion, GenerationConfig, Usage, cut_at_stop
from .model import GPT
from .tokenizer import Tokenizer

__all__ = ["PerplexityStats", "ScratchBackend", "from_spec", "sample_next"]

SCORE_CHUNK = 256  # positions whose logits are materialised at once when scoring
SCORE_BATCH = 8  # sequences per forward pass when scoring


@dataclass(frozen=True)
class PerplexityStats:
    """Perplexity of a text: ``exp(nll_sum / tokens)`` over the ``tokens`` scored."""

    tokens: int
    nll_sum: float

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return float(torch.tensor(self.mean_nll, dtype=torch.float64).exp())


def sample_next(
    logits: torch.Tensor, config: GenerationConfig, generators: Sequence[torch.Generator] | None
) -> torch.Tensor:
    """Next token per row of ``logits`` ``(B, vocab)``: greedy at temperature 0, else sampled
    after temperature, top-k and top-p (nucleus) filtering, each row with its own generator.
    """
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / config.temperature
    if config.top_k is not None and config.top_k < logits.size(-1):
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > config.top_p  # keep the smallest set >= top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    probs = logits.softmax(dim=-1)
    rows = [
        torch.multinomial(probs[i], 1, generator=generators[i] if generators else None)
        for i in range(probs.size(0))
    ]
    return torch.cat(rows)


class ScratchBackend(Backend):
    """promptkit's own GPT (``scratch:PATH``): generate, stream, loglikelihood, perplexity."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, name: str = "scratch"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.context_window = model.config.context_length
        self.capabilities = Capabilities(
            completion=True, chat=False, streaming=True, loglikelihood=True, perplexity=True
        )

    @property
    def device(self) -> torch.device:
        return self.model.wte.weight.device

    def count_tokens(self, text: str) -> int:
        """Exact number of tokens the model sees for ``text``."""
        return len(self.tokenizer.encode(text))

    # -- generation ---------------------------------------------------------------------------

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        return self.generate_batch([text], config)[0]

    def generate_batch(
        self, prompts: Sequence[str], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Generate for several text prompts at once; each gets what it would get alone."""
        config = config or GenerationConfig()
        for prompt in prompts:
            self._check_text(prompt)
        encoded = self.tokenizer.encode_batch(prompts)
        outputs: list[list[int]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        for row, token, reason in self._decode(encoded, config):
            if token is not None:
                outputs[row].append(token)
            if reason is not None:
                reasons[row] = reason
        completions = []
        for ids, reason, prompt_ids in zip(outputs, reasons, encoded, strict=True):
            text, _ = cut_at_stop(self.tokenizer.decode(ids), config.stop)
            usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(ids))
            completions.append(Completion(text=text, usage=usage, finish_reason=reason))  # type: ignore[arg-type]
        return completions

    def _stream_complete(self, text: str, config: GenerationConfig) -> Iterator[str]:
        ids: list[int] = []
        sent = 0
        for _, token, _reason in self._decode([self.tokenizer.encode(text)], config):
            if token is None:
                continue
            ids.append(token)
            decoded, stopped = cut_at_stop(self.tokenizer.decode(ids), config.stop)
            if stopped:
                break
            ready = _safe_prefix(decoded, config.stop)
            if len(ready) > sent:
                yield ready[sent:]
                sent = len(ready)
        final, _ = cut_at_stop(self.tokenizer.decode(ids), config.stop)
        if len(final) > sent:
            yield final[sent:]

    @torch.inference_mode()
    def _decode(
        self, prompts: list[list[int]], config: GenerationConfig
    ) -> Iterator[tuple[int, int | None, str | None]]:
        """Yield ``(row, token or None, finish reason or None)`` as tokens are produced.

        Raises ContextWindowError when a prompt plus ``max_tokens`` does not fit.
        """
        window = self.model.config.context_length
        for i, ids in enumerate(prompts):
            if len(ids) + config.max_tokens > window:
                raise ContextWindowError(
                    f"prompt {i} has {len(ids)} tokens and max_tokens is {config.max_tokens}: "
                    f"{len(ids) + config.max_tokens} do not fit the context window of {window}; "
                    "shorten the prompt or ask for fewer tokens",
                    prompt_tokens=len(ids),
                    max_tokens=config.max_tokens,
                    context_window=window,
                )
        batch, longest = len(prompts), max(len(ids) for ids in prompts)
        device = self.device
        eot = self.tokenizer.eot_id
        tokens = torch.full((batch, longest), eot, dtype=torch.long)
        key_valid = torch.zeros((batch, longest + config.max_tokens), dtype=torch.bool)
        for i, ids in enumerate(prompts):  # left padding: every prompt ends at the same column
            tokens[i, longest - len(ids) :] = torch.tensor(ids)
            key_valid[i, longest - len(ids) :] = True
        tokens, key_valid = tokens.to(device), key_valid.to(device)
        padded = any(len(ids) != longest for ids in prompts)
        positions = (key_valid[:, :longest].cumsum(-1) - 1).clamp(min=0)
        lengths = torch.tensor([len(ids) for ids in prompts], device=device)
        generators = self._generators(batch, config.seed) if config.temperature > 0 else None
        cache = self.model.new_cache(batch, longest + config.max_tokens)
        hidden = self.model(
            tokens,
            positions=positions,
            key_valid=key_valid[:, :longest] if padded else None,
            cache=cache,
        )
        logits = self.model.logits(hidden[:, -1])  # (B, vocab)
        alive = [True] * batch
        texts = [""] * batch
        generated: list[list[int]] = [[] for _ in prompts]
        for step in range(config.max_tokens):
            chosen = sample_next(logits, config, generators).tolist()
            for row, token in enumerate(chosen):
                if not alive[row]:
                    continue
                if token == eot:
                    alive[row] = False
                    yield row, None, "stop"
                    continue
                generated[row].append(token)
                yield row, token, None
                if config.stop:
                    texts[row] = self.tokenizer.decode(generated[row])
                    if cut_at_stop(texts[row], config.stop)[1]:
                        alive[row] = False
                        yield row, None, "stop"
            if not any(alive) or step == config.max_tokens - 1:
                break
            next_tokens = torch.tensor(chosen, device=device)[:, None]  # (B, 1)
            hidden = self.model(
                next_tokens,
                positions=(lengths + step)[:, None],
                key_valid=key_valid[:, : longest + step + 1] if padded else None,
                cache=cache,
            )
            logits = self.model.logits(hidden[:, -1])

    def _generators(self, batch: int, seed: int | None) -> list[torch.Generator]:
        generators = []
        for _ in range(batch):
            generator = torch.Generator(device=self.device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
            generators.append(generator)
        return generators

    # -- scoring ------------------------------------------------------------------------------

    def _loglikelihood(self, context: str, continuation: str) -> float:
        return self.loglikelihood_batch([(context, continuation)])[0][0]

    def loglikelihood_batch(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """For each ``(context, continuation)``: the continuation's summed log-probability and
        whether greedy decoding would have produced exactly it.

        Context and continuation are tokenized separately; an empty context is GPT-2's
        end-of-text token.
        """
        requests = []
        for context, continuation in pairs:
            if not continuation:
                raise InputValidationError("continuation is empty; there is nothing to score")
            context_ids = self.tokenizer.encode(context) if context else [self.tokenizer.eot_id]
            requests.append((context_ids, self.tokenizer.encode(continuation)))
        return self.score_ids(requests)

    @torch.inference_mode()
    def score_ids(
        self, requests: Sequence[tuple[list[int], list[int]]]
    ) -> list[tuple[float, bool]]:
        """Token-level form of :meth:`loglikelihood_batch`."""
        window = self.model.config.context_length
        results: list[tuple[float, bool]] = []
        for start in range(0, len(requests), SCORE_BATCH):
            group = requests[start : start + SCORE_BATCH]
            sequences = []
            for context_ids, continuation_ids in group:
                total = len(context_ids) + len(continuation_ids) - 1
                if total > window:
                    raise ContextWindowError(
                        f"context and continuation have {total + 1} tokens; the model sees "
                        f"{window} at most",
                        prompt_tokens=total + 1,
                        context_window=window,
                    )
                sequences.append((context_ids + continuation_ids)[:-1])
            width = max(len(s) for s in sequences)
            batch = torch.zeros((len(group), width), dtype=torch.long)
            for i, seq in enumerate(sequences):  # right padding: causal attention ignores it
                batch[i, : len(seq)] = torch.tensor(seq)
            hidden = self.model(batch.to(self.device))  # (B, T, C)
            rows: list[int] = []
            cols: list[int] = []
            targets: list[int] = []
            owners: list[int] = []
            for i, (context_ids, continuation_ids) in enumerate(group):
                first = len(context_ids) - 1
                count = len(continuation_ids)
                rows += [i] * count
                cols += range(first, first + count)
                targets += continuation_ids
                owners += [i] * count
            picked = hidden[torch.tensor(rows), torch.tensor(cols)]  # (N, C)
            logprobs, greedy = self._token_logprobs(
                picked, torch.tensor(targets, device=self.device)
            )
            sums = torch.zeros(len(group), dtype=torch.float64).index_add_(
                0, torch.tensor(owners), logprobs.double().cpu()
            )
            misses = torch.zeros(len(group), dtype=torch.long).index_add_(
                0, torch.tensor(owners), (~greedy).long().cpu()
            )
            results.extend(zip(sums.tolist(), (misses == 0).tolist(), strict=True))
        return results

    def _token_logprobs(
        self, hidden: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each target under the logits of ``hidden`` ``(N, C)``, and whether
        it is the argmax, a chunk of positions at a time."""
        logprobs, greedy = [], []
        weight = self.model.output_weight
        for start in range(0, hidden.size(0), SCORE_CHUNK):
            logits = F.linear(hidden[start : start + SCORE_CHUNK], weight)  # (chunk, vocab)
            chunk_targets = targets[start : start + SCORE_CHUNK]
            picked = logits.gather(1, chunk_targets[:, None]).squeeze(1)
            logprobs.append(picked - torch.logsumexp(logits, dim=-1))
            greedy.append(logits.argmax(dim=-1) == chunk_targets)
        return torch.cat(logprobs), torch.cat(greedy)

    def _perplexity(self, text: str, stride: int | None) -> float:
        return self.perplexity_stats(text, stride).perplexity

    @torch.inference_mode()
    def perplexity_stats(self, text: str, stride: int | None = None) -> PerplexityStats:
        """Sliding-window perplexity: windows of the context length advance by ``stride``
        (default half the window) and score only their new tokens, so each token after the
        first is scored once with up to ``context - stride`` tokens of history. (With
        ``stride`` equal to the window, the first token of each window has no history and is
        not scored.)
        """
        window = self.model.config.context_length
        stride = stride or max(1, window // 2)
        if stride > window:
            raise InputValidationError(f"stride {stride} exceeds the context window of {window}")
        ids = self.tokenizer.encode(text)
        if len(ids) < 2:
            raise InputValidationError("the text has fewer than 2 tokens; nothing to score")
        nll, scored, previous_end = 0.0, 0, 0
        for begin in range(0, len(ids), stride):
            end = min(begin + window, len(ids))
            new = end - max(previous_end, begin + 1)  # tokens first seen here, with history
            chunk = torch.tensor(ids[begin:end], device=self.device)[None]
            hidden = self.model(chunk)[0, :-1]  # predicts tokens begin+1 .. end-1
            targets = chunk[0, 1:]
            logprobs, _ = self._token_logprobs(hidden[-new:], targets[-new:])
            nll -= float(logprobs.double().sum())
            scored += new
            previous_end = end
            if end == len(ids):
                break
        return PerplexityStats(tokens=scored, nll_sum=nll)


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """The part of streamed text that can be sent: no half-decoded character at the end, and
    nothing that might be the start of a stop sequence."""
    text = text.rstrip("\ufffd")
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                return text[: len(text) - size]
    return text


def from_spec(arg: str, *, device: str | None = None, **options: Any) -> ScratchBackend:
    """``scratch:PATH``: a promptkit checkpoint folder or a Hugging Face GPT-2 folder."""
    from .checkpoint import load_checkpoint

    if options:
        raise ConfigurationError(f"unknown option(s) for scratch: {', '.join(sorted(options))}")
    if not arg:
        raise ConfigurationError(
            "scratch needs a model folder: scratch:PATH (a checkpoint from `promptkit train` or a "
            "Hugging Face GPT-2 folder)"
        )
    path = Path(os.path.expanduser(arg))
    if not path.is_dir():
        raise ConfigurationError(f"scratch: no model folder at {str(path)!r}")
    chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_checkpoint(path, device=chosen)
    return ScratchBackend(model, tokenizer, name=f"scratch:{path}")
