"""The scratch backend: promptkit's own GPT behind the backend interface.

Generation decodes incrementally with a preallocated key/value cache (left-padded batches, so
every prompt gets the same tokens as alone); scoring computes log-probabilities in chunks of
positions, never the full (tokens x vocabulary) log-softmax at once. A prefix cache keeps the
keys and values of prompts across requests, so prompts that share a start (a few-shot
instruction and demonstrations, a system prompt) compute it once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch

from ..._llg import llg_tokenizer
from .._base import Completion, GenerationConfig, Message, PromptInput, Usage, cut_at_stop
from .._coalesce import Coalescer
from .._local import LOCAL_CAPABILITIES, LocalScoring, folder_fingerprint, safe_prefix, sample_next
from .._masking import TokenMasker
from .._options import flag
from ._compiled import CompiledStep, check_compilable
from ._int8_head import head_kind
from ._prefix_cache import (
    DEFAULT_PREFIX_CACHE_BYTES,
    PrefixCache,
    reuse_prefixes,
    store_prefixes,
)
from ._quant import (
    precision_of,
)
from ._tokenizer import Tokenizer
from .gpt2 import GPT
from .llama import Llama

__all__ = ["ScratchBackend", "sample_next"]


class ScratchBackend(LocalScoring):
    """promptkit's own GPT (``scratch:PATH``): generate, stream, loglikelihood, perplexity.

    ``prefix_cache_bytes`` bounds the prefix cache (``prefix_cache``: the keys and values of
    earlier prompts, reused by prompts that start the same way; 0 disables it).

    ``compile=True`` runs the decoding steps after the prompt through ``torch.compile`` (CPU
    only, with a C++ compiler; see ``_compiled``): faster steps, each graph compiled on first
    use or by ``warm_up()``, a minute or more. Raises ConfigurationError for a budget that is not a
    non-negative integer, a ``compile`` that is not a bool, or compiling where it cannot run;
    a compilation that fails at a step is a BackendError, with PyTorch's error as its cause.
    """

    def __init__(
        self,
        model: GPT | Llama,
        tokenizer: Tokenizer,
        *,
        name: str = "scratch",
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        compile: bool = False,
    ):
        flag("scratch", "compile", compile)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.weights_path: Path | None = None  # the weights file, when loaded from one
        self.adapter: Path | None = None  # the LoRA adapter folder merged into the weights
        self.adapter_sha256: str | None = None  # its fingerprint when it was loaded
        self.context_window = model.config.context_length
        # concurrent calls are welcome: they share forward passes (see _coalesce)
        self.capabilities = replace(LOCAL_CAPABILITIES, concurrent=True)
        self.chat_template = None
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        # concurrent generate calls share forward passes (see _coalesce)
        self._coalescer: Coalescer[list[int], Completion] = Coalescer(self._completions)
        self.compiled_step: CompiledStep | None = None  # compile=True: the decoding steps'
        if compile:
            check_compilable(self.device)
            self.compiled_step = CompiledStep(self.model)

    @property
    def device(self) -> torch.device:
        return self.model.wte.weight.device

    def cache_identity(self) -> dict[str, Any]:
        """The weights (every file of the checkpoint folder: path, size and modification
        time), their precision (float32, bfloat16, int8 or int4) and output projection (see
        :func:`head_kind`), the device type and the chat template messages are rendered with."""
        folder = None if self.weights_path is None else self.weights_path.parent
        return {
            **super().cache_identity(),
            "folder": None if folder is None else str(folder.resolve()),
            "files": None if folder is None else folder_fingerprint(folder),
            "dtype": precision_of(self.model),
            "head": head_kind(self.model.head),  # int8 and int4: how the logits are computed
            "device": self.device.type,
            "adapter": self.adapter_sha256,  # a LoRA adapter merged in at load, if any
            "chat_template": None if self.chat_template is None else self.chat_template.source,
            "compiled": self.compiled_step is not None,  # compiled kernels round differently
        }

    def _hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.model(ids)
        return hidden

    def _output_matrix(self) -> torch.Tensor:
        return self.model.output_matrix()

    def warm_up(self, announce: Callable[[str], None] | None = None) -> None:
        """With ``compile=True``, compile the decoding steps now (the graph for one row and the
        one for batches) rather than in the first requests; nothing to do otherwise."""
        if self.compiled_step is None:
            return
        if announce is not None:
            announce(
                f"{self.name}: compiling the decoding steps, once per process (minutes the "
                "first time; see the README's 'Compiled decoding steps')"
            )
        # eight tokens: a cache length of 0 or 1 would be a constant of its own graph
        prompt = [self.tokenizer.eot_id] * 8
        config = GenerationConfig(max_tokens=2, temperature=0)  # the second token is a step
        for rows in (1, 2):
            self.generate_ids([prompt] * rows, config, stop_at_end_of_text=False)

    # -- generation ---------------------------------------------------------------------------

    def generate_batch(
        self, prompts: Sequence[str], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Generate for several text prompts at once; each gets what it would get alone (one
        at a time for a request with tools, whose answers are parsed into calls)."""
        config = config or GenerationConfig()
        if config.tools:
            return [self.generate(prompt, config) for prompt in prompts]
        for prompt in prompts:
            self._check_text(prompt)
        return self._completions(self.tokenizer.encode_batch(prompts), config)

    def generate_samples(
        self, prompt: PromptInput, config: GenerationConfig, seeds: Sequence[int]
    ) -> list[Completion]:
        """One sample per seed, drawn together as one batch of the same prompt whose row j
        samples with ``seeds[j]`` (each gets what it would get alone; the prompt's keys and
        values are computed once and shared through the prefix cache when it has one)."""
        if config.tools or config.temperature == 0 or len(seeds) < 2:
            return super().generate_samples(prompt, config, seeds)
        encode = self.tokenizer.encode
        ids = self._route(prompt, config, lambda text, _: encode(text), self._chat_ids)
        return self._completions([ids] * len(seeds), config, seeds=list(seeds))

    def _completions(
        self, encoded: list[list[int]], config: GenerationConfig, seeds: list[int] | None = None
    ) -> list[Completion]:
        outputs, reasons = self.generate_ids(encoded, config, seeds=seeds)
        completions = []
        for ids, reason, prompt_ids in zip(outputs, reasons, encoded, strict=True):
            text, _ = cut_at_stop(self.tokenizer.decode(ids), config.stops)
            usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(ids))
            completions.append(Completion(text=text, usage=usage, finish_reason=reason))  # type: ignore[arg-type]
        return completions

    def generate_ids(
        self,
        prompts: list[list[int]],
        config: GenerationConfig,
        *,
        stop_at_end_of_text: bool = True,
        seeds: list[int] | None = None,
    ) -> tuple[list[list[int]], list[str]]:
        """Token-level generation: the new ids of each prompt and why each ended (row i
        samples with ``seeds[i]`` when given, else every row with ``config.seed``)."""
        outputs: list[list[int]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        for row, token, reason in self._decode(prompts, config, stop_at_end_of_text, seeds):
            if token is not None:
                outputs[row].append(token)
            if reason is not None:
                reasons[row] = reason
        return outputs, reasons

    def generate_tokens(
        self, prompt_ids: Sequence[int], config: GenerationConfig
    ) -> tuple[list[int], Literal["stop", "length"]]:
        """Token-level generation (see LocalScoring.generate_tokens)."""
        (ids,), (reason,) = self.generate_ids([list(prompt_ids)], config)
        stopped = (
            config.grammar is not None or cut_at_stop(self.tokenizer.decode(ids), config.stops)[1]
        )
        if reason == "stop" and not stopped:  # it ended because the model chose end-of-text
            ids.append(self.tokenizer.eot_id)
        return ids, "stop" if reason == "stop" else "length"

    def _chat_ids(
        self, messages: list[Message], config: GenerationConfig | None = None
    ) -> list[int]:
        """The prompt ids of ``messages``: the chat template's text, assistant turn opened, with
        its special tokens recognised (message contents were rendered into it as text), and
        the config's tools in its tools slot."""
        text = self._chat_text(messages, config)
        ids: list[int] = self.tokenizer.encode_with_special_tokens(text)
        return ids

    def prompt_ids(self, prompt: PromptInput) -> list[int]:
        """The token ids the model reads for ``prompt`` before it answers: a text's tokens, or
        chat messages rendered by the chat template with the assistant's turn opened (what
        fine-tuning trains on). Raises UnsupportedCapabilityError for messages to a model
        without a chat template."""
        if isinstance(prompt, str):
            ids: list[int] = self.tokenizer.encode(prompt)
            return ids
        return self._chat_ids(list(prompt))

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        """Generate a continuation of ``text``, in one batch with the concurrent calls that
        share ``config`` (each gets what it would get alone)."""
        if config.tools:
            return super()._complete(text, config)
        return self._coalesced(self.tokenizer.encode(text), config)

    def _chat(self, messages: list[Message], config: GenerationConfig) -> Completion:
        """Generate the assistant's answer to ``messages`` (ends at the end-of-turn token), in
        one batch with the concurrent calls that share ``config``."""
        return self._coalesced(self._chat_ids(messages, config), config)

    def _coalesced(self, ids: list[int], config: GenerationConfig) -> Completion:
        self.check_fits([len(ids)], config)  # alone: a prompt too long never fails a batch
        return self._coalescer.run(ids, config)

    def _stream_chat(
        self, messages: list[Message], config: GenerationConfig
    ) -> Generator[str, None, Completion]:
        """Stream the assistant's answer to ``messages`` (see :meth:`_stream_complete`)."""
        return self._stream_ids(self._chat_ids(messages, config), config)

    def _stream_complete(
        self, text: str, config: GenerationConfig
    ) -> Generator[str, None, Completion]:
        """Yield the text in pieces; return the whole Completion (its usage and finish reason,
        which a streaming server reports at the end)."""
        return self._stream_ids(self.tokenizer.encode(text), config)

    def _stream_ids(
        self, prompt: list[int], config: GenerationConfig
    ) -> Generator[str, None, Completion]:
        """Stream the text generated after the token ids ``prompt``."""
        ids: list[int] = []
        sent = 0
        finish = "length"
        for _, token, reason in self._decode([prompt], config):
            if reason is not None:
                finish = reason
            if token is None:
                continue
            ids.append(token)
            decoded, stopped = cut_at_stop(self.tokenizer.decode(ids), config.stops)
            if stopped:
                finish = "stop"
                break
            ready = safe_prefix(decoded, config.stops)
            if len(ready) > sent:
                yield ready[sent:]
                sent = len(ready)
        final, _ = cut_at_stop(self.tokenizer.decode(ids), config.stops)
        if len(final) > sent:
            yield final[sent:]
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=len(ids))
        return Completion(text=final, usage=usage, finish_reason=finish)  # type: ignore[arg-type]

    @torch.inference_mode()
    def _decode(
        self,
        prompts: list[list[int]],
        config: GenerationConfig,
        stop_at_end_of_text: bool = True,
        seeds: list[int] | None = None,
    ) -> Iterator[tuple[int, int | None, str | None]]:
        """Yield ``(row, token or None, finish reason or None)`` as tokens are produced.

        Raises ContextWindowError when a prompt plus ``max_tokens`` does not fit.
        """
        self.check_fits([len(ids) for ids in prompts], config)
        batch, longest = len(prompts), max(len(ids) for ids in prompts)
        masker = self._masker(config, batch) if config.grammar is not None else None
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
        generators = (
            self._generators(seeds or [config.seed] * batch) if config.temperature > 0 else None
        )
        cache = self.model.new_cache(batch, longest + config.max_tokens)
        start = reuse_prefixes(self.prefix_cache, self.model, cache, prompts, longest)
        hidden = self.model(
            tokens[:, start:],
            positions=positions[:, start:],
            key_valid=key_valid[:, :longest] if padded else None,
            cache=cache,
        )
        store_prefixes(self.prefix_cache, cache, prompts, longest)
        logits = self.model.logits(hidden[:, -1])  # (B, vocab)
        alive = [True] * batch
        generated: list[list[int]] = [[] for _ in prompts]
        # the prompt each batch row holds: without a grammar, finished rows leave the batch
        rows = list(range(batch))
        used = 0  # cache slots filled after the prompts (the same for every row)
        while True:
            live = [i for i, row in enumerate(rows) if alive[row]]
            if masker is not None:  # rows never leave: a batch row is its prompt
                masker.apply(logits, live, lazy=config.temperature == 0)
                next_tokens = masker.sample(logits, live, config, generators)  # (B,)
            else:
                next_tokens = sample_next(logits, config, generators)  # (B,)
            feed = [[token] for token in next_tokens.tolist()]
            for i in live:
                yield from self._take(
                    rows[i], feed[i][0], generated, alive, masker, config, stop_at_end_of_text
                )
            if masker is not None:  # fast-forward: tokens the grammar forces need no sampling
                forced = {row: masker.forced(row) for row in range(batch) if alive[row]}
                count = min((len(f) for f in forced.values()), default=0)
                count = min(count, config.max_tokens - used - 1)
                for row, ahead in forced.items():
                    for token in ahead[:count]:
                        feed[row].append(token)
                        yield from self._take(row, token, generated, alive, masker, config, True)
                for row in range(batch):
                    feed[row] += [eot] * (1 + max(count, 0) - len(feed[row]))
            used += len(feed[0])
            if not any(alive) or used >= config.max_tokens:
                break
            if masker is None and not all(alive[row] for row in rows):
                keep = [i for i, row in enumerate(rows) if alive[row]]
                index = torch.tensor(keep, device=device)
                cache.select(index)
                key_valid = key_valid.index_select(0, index)
                lengths = lengths.index_select(0, index)
                rows, feed = [rows[i] for i in keep], [feed[i] for i in keep]
                generators = [generators[i] for i in keep] if generators else None
            width = len(feed[0])
            steps = torch.arange(width, device=device)
            compiled = self.compiled_step if width == 1 else None  # one position a row
            hidden = (compiled or self.model)(
                torch.tensor(feed, device=device),  # (B, width)
                positions=(lengths + used - width)[:, None] + steps,
                key_valid=key_valid[:, : longest + used] if padded or compiled else None,
                cache=cache,
            )
            logits = self.model.logits(hidden[:, -1])

    def _take(
        self,
        row: int,
        token: int,
        generated: list[list[int]],
        alive: list[bool],
        masker: TokenMasker | None,
        config: GenerationConfig,
        stop_at_eot: bool,
    ) -> Iterator[tuple[int, int | None, str | None]]:
        """Record that ``row`` took ``token``: yield it, and the finish reason when it ends."""
        if not alive[row]:
            return
        if masker is not None:
            masker.advance(row, token)
        if token == self.tokenizer.eot_id and (masker is not None or stop_at_eot):
            alive[row] = False
            yield row, None, "stop"
            return
        generated[row].append(token)
        yield row, token, None
        if masker is not None:
            if masker.finished(row):
                alive[row] = False
                yield row, None, "stop"
        elif config.stops and cut_at_stop(self.tokenizer.decode(generated[row]), config.stops)[1]:
            alive[row] = False
            yield row, None, "stop"

    def _masker(self, config: GenerationConfig, batch: int) -> TokenMasker:
        vocab = self.model.config.vocab_size
        tokenizer = llg_tokenizer(self.tokenizer, self.tokenizer.to_llguidance, vocab)
        return TokenMasker.for_request(config, tokenizer, batch=batch, vocab_size=vocab)

    def _generators(self, seeds: Sequence[int | None]) -> list[torch.Generator]:
        generators = []
        for seed in seeds:
            generator = torch.Generator(device=self.device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
            generators.append(generator)
        return generators

    # -- scoring ------------------------------------------------------------------------------

    @torch.inference_mode()
    def score_choice_ids(
        self, context_ids: list[int], continuations: Sequence[list[int]]
    ) -> list[float]:
        """Score every continuation of one context, running the context once: its keys and
        values are cached, repeated for each choice, and only the choices' own tokens go
        through the model again."""
        if not continuations:
            return []
        longest = max(len(c) for c in continuations)
        self._check_length(len(context_ids) + longest - 1)
        count, width = len(continuations), longest - 1
        cache = self.model.new_cache(1, len(context_ids) + width)
        start = reuse_prefixes(
            self.prefix_cache, self.model, cache, [context_ids], len(context_ids)
        )
        context = torch.tensor([context_ids[start:]], device=self.device)
        last = self.model(context, cache=cache)[:, -1]  # (1, C): predicts each first token
        store_prefixes(self.prefix_cache, cache, [context_ids], len(context_ids))
        rows, targets = [], []
        if width:
            cache.select(torch.zeros(count, dtype=torch.long, device=self.device))
            batch = torch.zeros((count, width), dtype=torch.long)
            for i, ids in enumerate(continuations):  # right padding: causal attention ignores it
                batch[i, : len(ids) - 1] = torch.tensor(ids[:-1], dtype=torch.long)
            positions = len(context_ids) + torch.arange(width, device=self.device)
            hidden = self.model(
                batch.to(self.device), positions=positions.expand(count, -1), cache=cache
            )  # (count, width, C)
        owners = []
        for i, ids in enumerate(continuations):
            rows.append(last[0])
            rows += [hidden[i, j] for j in range(len(ids) - 1)]
            targets += ids
            owners += [i] * len(ids)
        logprobs, _ = self._target_logprobs(
            torch.stack(rows), torch.tensor(targets, device=self.device)
        )
        sums = torch.zeros(count, dtype=torch.float64).index_add_(
            0, torch.tensor(owners), logprobs.double().cpu()
        )
        return [float(x) for x in sums]
