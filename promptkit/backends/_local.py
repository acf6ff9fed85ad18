"""Machinery shared by the local (PyTorch) backends: chunked scoring and perplexity.

A local backend provides its tokenizer (``encode``, ``eot_id``), ``_hidden_states`` (final
hidden states of a batch of token ids) and ``_output_weight`` (the matrix that maps them to
logits); :class:`LocalScoring` builds log-likelihoods and sliding-window perplexity on top, so
that every local backend scores with exactly the same semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import (
    ConfigurationError,
    ContextWindowError,
    InputValidationError,
    UnsupportedCapabilityError,
)
from ._base import (
    Backend,
    Capabilities,
    Completion,
    GenerationConfig,
    Message,
    PerplexityStats,
    TokenLogprob,
    check_choices,
)
from ._chat_templates import ChatTemplate

__all__ = [
    "LOCAL_CAPABILITIES",
    "LocalScoring",
    "any_allowed",
    "folder_fingerprint",
    "safe_prefix",
    "sample_next",
    "top_token",
    "top_tokens",
]

SCORE_CHUNK = 4096  # positions scored together (their logits exist one block at a time)
VOCAB_BLOCK = 2048  # vocabulary entries per block of the online log-sum-exp
SCORE_BATCH = 8  # sequences per forward pass when scoring
TOP_CHUNK = 256  # positions whose full logits exist at once when ranking the top tokens

# What every local backend can do: text in, streaming, scoring, and token masks.
LOCAL_CAPABILITIES = Capabilities(
    completion=True,
    chat=False,
    streaming=True,
    loglikelihood=True,
    perplexity=True,
    token_masks=True,
    json_schema=True,
    batching=True,
    token_logprobs=True,
    tokens=True,
)


class LocalScoring(Backend):
    """Scoring for backends that hold a model: see the module docstring for the hooks."""

    tokenizer: Any  # encode(text) -> list[int], eot_id: int
    chat_template: ChatTemplate | None = None  # the model's own, when it has one

    def use_chat_template(self, template: ChatTemplate | None) -> None:
        """Render chat messages with ``template`` (the model's own) and declare ``chat`` (and
        ``tool_template`` when it has a tools slot); None goes back to flattening messages."""
        self.chat_template = template
        self.capabilities = replace(
            self.capabilities,
            chat=template is not None,
            tool_template=template is not None and template.takes_tools,
        )

    def _chat_text(self, messages: list[Message], config: GenerationConfig | None) -> str:
        """The prompt text of ``messages``: the chat template's rendering with the assistant's
        turn opened and the config's tools in its tools slot. Raises
        UnsupportedCapabilityError for a model without a chat template."""
        if self.chat_template is None:
            raise UnsupportedCapabilityError(self.name, "chat")
        tools = config.tools if config is not None else ()
        return self.chat_template.render(messages, add_generation_prompt=True, tools=tools)

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def _hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, T, C)`` of token ids ``(B, T)`` (right padding is fine)."""
        raise NotImplementedError

    def _output_matrix(self) -> torch.Tensor:
        """The ``(C, vocab)`` output matrix: logits are ``hidden @ matrix``."""
        raise NotImplementedError

    def generate_tokens(
        self, prompt_ids: Sequence[int], config: GenerationConfig
    ) -> tuple[list[int], Literal["stop", "length"]]:
        """Token-level generation: the new token ids after ``prompt_ids`` (the end-of-text
        token included when the model ended with it) and why generation ended.

        Raises ContextWindowError when the prompt plus ``max_tokens`` does not fit.
        """
        raise NotImplementedError

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        return self.generate_batch([text], config)[0]

    def count_tokens(self, text: str) -> int:
        """Exact number of tokens the model sees for ``text``."""
        return len(self.tokenizer.encode(text))

    def check_fits(self, prompt_lengths: Sequence[int], config: GenerationConfig) -> None:
        """Raise ContextWindowError unless every prompt plus ``max_tokens`` fits the window."""
        window = self.context_window
        for i, length in enumerate(prompt_lengths):
            if window is not None and length + config.max_tokens > window:
                raise ContextWindowError(
                    f"prompt {i} has {length} tokens and max_tokens is {config.max_tokens}: "
                    f"{length + config.max_tokens} do not fit the context window of {window}; "
                    "shorten the prompt or ask for fewer tokens",
                    prompt_tokens=length,
                    max_tokens=config.max_tokens,
                    context_window=window,
                )

    def _window(self) -> int:
        if self.context_window is None:
            raise NotImplementedError
        return self.context_window

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

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to ``vocab_size - 1`` (the rows of the output matrix)."""
        return int(self._output_matrix().size(1))

    def _token_logprobs(self, text: str) -> list[TokenLogprob]:
        ids = self.tokenizer.encode(text)
        tokens, offset = [], 0
        for i, (value, _) in enumerate(self.token_id_logprobs(ids)):
            tokens.append(TokenLogprob(self.tokenizer.decode([ids[i]]), value, offset))
            offset = len(self.tokenizer.decode(ids[: i + 1]))
        return tokens

    @torch.inference_mode()
    def token_id_logprobs(
        self, ids: Sequence[int], top: int = 0
    ) -> list[tuple[float | None, dict[int, float]]]:
        """Each token of ``ids``: its log-probability given the tokens before it, and the
        ``top`` most likely tokens at its place with theirs (None and ``{}`` for the first).

        Raises InputValidationError for no ids or an id outside the vocabulary, and
        ContextWindowError when they do not fit the context window.
        """
        if not ids:
            raise InputValidationError("there are no tokens to score")
        vocab = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise InputValidationError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        self._check_length(len(ids))
        results: list[tuple[float | None, dict[int, float]]] = [(None, {})]
        if len(ids) < 2:
            return results
        hidden = self._hidden_states(torch.tensor([list(ids)], device=self.device))[0, :-1]
        targets = torch.tensor(ids[1:], device=self.device)
        scores, _ = self._target_logprobs(hidden, targets)
        best: list[dict[int, float]] = [{} for _ in range(len(ids) - 1)]
        if top > 0:
            matrix = self._output_matrix()
            for start in range(0, hidden.size(0), TOP_CHUNK):
                logits = hidden[start : start + TOP_CHUNK] @ matrix  # (n, vocab)
                values, indices = logits.float().log_softmax(-1).topk(min(top, vocab), dim=-1)
                for row, (v, i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True)):
                    best[start + row] = dict(zip(i, v, strict=True))
        results += [(float(s), b) for s, b in zip(scores, best, strict=True)]
        return results

    def score_choices(self, context: str, choices: Sequence[str]) -> list[tuple[float, int]]:
        """Each choice's summed log-probability as a continuation of ``context``, and its number
        of tokens (context and choices tokenized separately, as in :meth:`loglikelihood_batch`).
        """
        check_choices(choices)
        context_ids = self.tokenizer.encode(context) if context else [self.tokenizer.eot_id]
        continuations = [self.tokenizer.encode(choice) for choice in choices]
        scores = self.score_choice_ids(context_ids, continuations)
        return [(score, len(ids)) for score, ids in zip(scores, continuations, strict=True)]

    def score_choice_ids(
        self, context_ids: list[int], continuations: Sequence[list[int]]
    ) -> list[float]:
        """Token-level form of :meth:`score_choices` (one full sequence per choice here; the
        scratch backend runs the shared context once)."""
        return [score for score, _ in self.score_ids([(context_ids, c) for c in continuations])]

    @torch.inference_mode()
    def score_ids(
        self, requests: Sequence[tuple[list[int], list[int]]]
    ) -> list[tuple[float, bool]]:
        """Token-level form of :meth:`loglikelihood_batch`."""
        results: list[tuple[float, bool]] = []
        for start in range(0, len(requests), SCORE_BATCH):
            group = requests[start : start + SCORE_BATCH]
            sequences = []
            for context_ids, continuation_ids in group:
                self._check_length(len(context_ids) + len(continuation_ids) - 1)
                sequences.append((context_ids + continuation_ids)[:-1])
            width = max(len(s) for s in sequences)
            batch = torch.zeros((len(group), width), dtype=torch.long)
            for i, seq in enumerate(sequences):  # right padding: causal attention ignores it
                batch[i, : len(seq)] = torch.tensor(seq)
            hidden = self._hidden_states(batch.to(self.device))  # (B, T, C)
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
            logprobs, greedy = self._target_logprobs(
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

    def _check_length(self, total: int) -> None:
        window = self._window()
        if total > window:
            raise ContextWindowError(
                f"context and continuation have {total} tokens; the model sees {window} at most",
                prompt_tokens=total,
                context_window=window,
            )

    def _target_logprobs(
        self, hidden: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each target under the logits of ``hidden`` ``(N, C)``, and whether
        it is the argmax.

        The vocabulary is swept in blocks with an online log-sum-exp (a running maximum and a
        rescaled running sum), so at most ``SCORE_CHUNK x VOCAB_BLOCK`` logits exist at once, and
        each block's product is a cache-friendly matrix multiplication.
        """
        logprobs, greedy = [], []
        matrix = self._output_matrix()  # (C, vocab)
        vocab = matrix.size(1)
        for start in range(0, hidden.size(0), SCORE_CHUNK):
            rows = hidden[start : start + SCORE_CHUNK]  # (n, C)
            wanted = targets[start : start + SCORE_CHUNK]
            n = rows.size(0)
            running_max = torch.full((n,), float("-inf"), device=rows.device)
            running_sum = torch.zeros(n, device=rows.device)
            best_index = torch.zeros(n, dtype=torch.long, device=rows.device)
            picked = torch.zeros(n, device=rows.device)
            for first in range(0, vocab, VOCAB_BLOCK):
                logits = rows @ matrix[:, first : first + VOCAB_BLOCK]  # (n, block)
                inside = (wanted >= first) & (wanted < first + logits.size(1))
                if inside.any():
                    where = inside.nonzero().squeeze(1)
                    picked[where] = logits[where, wanted[where] - first]
                block_max, block_index = logits.max(dim=-1)
                better = block_max > running_max
                best_index = torch.where(better, block_index + first, best_index)
                new_max = torch.maximum(running_max, block_max)
                running_sum = running_sum * torch.exp(running_max - new_max) + logits.sub_(
                    new_max[:, None]
                ).exp_().sum(dim=-1)
                running_max = new_max
            logprobs.append(picked - (running_sum.log() + running_max))
            greedy.append(best_index == wanted)
        return torch.cat(logprobs), torch.cat(greedy)

    @torch.inference_mode()
    def _perplexity_stats(self, text: str, stride: int | None) -> PerplexityStats:
        """Sliding-window perplexity: windows of the context length advance by ``stride``
        (default half the window) and score only their new tokens, so each token after the
        first is scored once with up to ``context - stride`` tokens of history. (With
        ``stride`` equal to the window, the first token of each window has no history and is
        not scored.)
        """
        window = self._window()
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
            hidden = self._hidden_states(chunk)[0, :-1]  # predicts tokens begin+1 .. end-1
            targets = chunk[0, 1:]
            logprobs, _ = self._target_logprobs(hidden[-new:], targets[-new:])
            nll -= float(logprobs.double().sum())
            scored += new
            previous_end = end
            if end == len(ids):
                break
        return PerplexityStats(tokens=scored, nll_sum=nll)


def safe_prefix(text: str, stops: Sequence[str]) -> str:
    """The part of streamed text that can be sent: no half-decoded character at the end, and
    nothing that might be the start of a stop sequence."""
    text = text.rstrip("\ufffd")
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                return text[: len(text) - size]
    return text


NUCLEUS_CANDIDATES = 256  # most likely tokens tried first for the nucleus (else: the whole sort)


def top_tokens(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row of ``logits`` ``(B, vocab)``: ``argmax`` over the
    last dimension (the first of equal maxima). Float32 logits on a CPU go through NumPy, whose
    argmax reads a 50k vocabulary in about 5 us where PyTorch's CPU argmax took 150-600 us
    (measured on an Intel Xeon, 1 and 8 rows): a greedy step pays it for every token."""
    if _numpy_readable(logits):
        return torch.as_tensor(logits.numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)


def top_token(logits: torch.Tensor) -> int:
    """The most likely token of one row of ``logits`` ``(vocab,)``, as :func:`top_tokens`."""
    return int(top_tokens(logits))


def _numpy_readable(logits: torch.Tensor) -> bool:
    return (
        logits.device.type == "cpu" and logits.dtype == torch.float32 and not logits.requires_grad
    )


def any_allowed(logits: torch.Tensor) -> bool:
    """Whether any token of one row of ``logits`` is not masked (above -inf); a max, about
    ten times cheaper than ``isfinite(...).any()`` over a vocabulary."""
    return bool(logits.max() > float("-inf"))


def sample_next(
    logits: torch.Tensor, config: GenerationConfig, generators: Sequence[torch.Generator] | None
) -> torch.Tensor:
    """Next token per row of ``logits`` ``(B, vocab)``: greedy at temperature 0, else sampled
    after temperature, top-k and top-p (nucleus) filtering, each row with its own generator.
    """
    if config.temperature == 0:
        return top_tokens(logits)
    logits = logits.float() / config.temperature
    values, ids = _candidates(logits, config)
    if ids is not None:  # drawn over the whole vocabulary still: the draws transformers makes
        values = torch.full_like(logits, float("-inf")).scatter(-1, ids, values)
    probs = values.softmax(dim=-1)
    rows = [
        torch.multinomial(probs[i], 1, generator=generators[i] if generators else None)
        for i in range(probs.size(0))
    ]
    return torch.cat(rows)


def _candidates(
    logits: torch.Tensor, config: GenerationConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits ``(B, n)`` a token is drawn from after top-k and top-p filtering (dropped
    ones at -inf) and their token ids (None: the whole vocabulary, in order).

    The nucleus is looked for among the :data:`NUCLEUS_CANDIDATES` most likely tokens first:
    when they hold ``top_p`` of every row's probability it lies among them, the same set a
    sort of the whole vocabulary gives, at a fraction of the cost; else the whole is sorted.
    """
    vocab = logits.size(-1)
    if config.top_k is None and config.top_p >= 1.0:
        return logits, None
    values, ids = torch.topk(logits, min(config.top_k or NUCLEUS_CANDIDATES, vocab), dim=-1)
    if config.top_p >= 1.0:
        return values, ids
    # top-p over what top-k kept (renormalised), or over the whole vocabulary
    total = (values if config.top_k is not None else logits).logsumexp(dim=-1, keepdim=True)
    probs = (values - total).exp()
    if config.top_k is None and values.size(-1) < vocab and (probs.sum(-1) < config.top_p).any():
        values, ids = torch.sort(logits, dim=-1, descending=True)
        probs = (values - total).exp()
    drop = probs.cumsum(dim=-1) - probs > config.top_p  # keep the smallest set >= top_p
    return values.masked_fill(drop, float("-inf")), ids


FINGERPRINT_FILES = 1000  # most files of a model folder fingerprinted one by one


def folder_fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time (ns) of every file in a model folder, or of the one
    file of a GGUF model (weights,
    adapters, tokenizer and configuration alike; subfolders, such as other formats' exports of
    a hub snapshot, are not read by the loaders and are left out): what the response cache keys
    local answers on, so retrained, converted or replaced weights are not answered from the old
    ones' entries. Files are stat'ed, not read, so this stays cheap for large weights.

    Raises ConfigurationError for a folder of more than :data:`FINGERPRINT_FILES` files (not a
    model folder) or one that cannot be listed.
    """
    entries: list[tuple[str, int, int]] = []
    try:
        if folder.is_file():  # a model in one file (GGUF)
            stat = folder.stat()
            return [(folder.name, stat.st_size, stat.st_mtime_ns)]
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            if len(entries) == FINGERPRINT_FILES:
                raise ConfigurationError(
                    f"the model folder {str(folder)!r} holds more than {FINGERPRINT_FILES} files "
                    "(FINGERPRINT_FILES); point the backend at the folder of one model"
                )
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the model folder {str(folder)!r}: {exc.strerror or exc}"
        ) from None
    return entries
