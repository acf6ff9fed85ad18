"""The hooks promptkit puts into transformers' ``generate``: a streamer that passes text on as
soon as it is whole, a stopping criterion for abandoned streams, the grammar's logits processor
and the sampler that draws with the call's own generators."""

from __future__ import annotations

import threading
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from ._base import GenerationConfig
from ._local import sample_next
from ._masking import TokenMasker

__all__ = ["Abandoned", "GrammarLogitsProcessor", "SamplingProcessor", "eager_streamer"]


def eager_streamer(hf_tokenizer: Any) -> Any:
    """transformers' ``TextIteratorStreamer``, passing text on as soon as it is whole: it holds
    back only an incomplete character and trailing spaces (which a next token's punctuation may
    clean away). transformers' own waits for a space after any symbol, so text without spaces
    arrived only when generation ended, and a reader that left could not stop it."""
    from transformers import TextIteratorStreamer

    class EagerStreamer(TextIteratorStreamer):
        def put(self, value: torch.Tensor) -> None:
            if value.dim() > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
            ready = text.rstrip("\ufffd").rstrip()
            if len(ready) > self.print_len:
                self.on_finalized_text(ready[self.print_len :])
                self.print_len = len(ready)

    return EagerStreamer(hf_tokenizer, skip_prompt=True, skip_special_tokens=True)


class Abandoned(StoppingCriteria):
    """Stops ``generate`` once ``event`` is set (a streaming reader has gone)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = self.event.is_set()
        return torch.full((input_ids.size(0),), done, dtype=torch.bool, device=input_ids.device)


class GrammarLogitsProcessor(LogitsProcessor):
    """transformers' hook onto promptkit's :class:`~promptkit.backends._masking.TokenMasker`.

    Pass it to ``model.generate(..., logits_processor=LogitsProcessorList([processor]))`` with
    ``max_new_tokens`` equal to the masker's ``max_tokens``. Each call feeds the tokens sampled
    at the previous step to the matchers, then masks what may not come next; rows whose answer
    is complete may only end (EOS). The mask alone keeps answers inside the budget only near its
    end: transformers' own sampler cannot be asked to draw again a token that commits to more
    than the budget holds, which :class:`HFBackend` does (``masker.sample``).
    """

    def __init__(self, masker: TokenMasker, prompt_width: int):
        self.masker = masker
        self.prompt_width = prompt_width
        self.done = [False] * len(masker.rows)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.size(1) > self.prompt_width:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.done[row]:
                    continue
                self.masker.advance(row, token)
                if token == self.masker.eos:
                    self.done[row] = True
        live = [row for row in range(len(self.done)) if not self.done[row]]
        if live:
            self.masker.apply(scores, live)
        return scores

    def complete(self, sequences: torch.Tensor) -> list[bool]:
        """After ``generate``: feed the last tokens and say which rows' answers are complete."""
        if sequences.size(1) > self.prompt_width:
            for row, token in enumerate(sequences[:, -1].tolist()):
                if not self.done[row]:
                    self.masker.advance(row, token)
                    self.done[row] = token == self.masker.eos
        return [self.done[row] or self.masker.finished(row) for row in range(len(self.done))]


class SamplingProcessor(LogitsProcessor):
    """Samples each row's next token with the call's own generators (temperature, top-k and
    top-p as on the scratch backend) and leaves only that token possible, so that
    transformers' greedy step takes it: no global random state is read or changed. With the
    grammar's ``masker``, a token that would not leave room to end the answer is drawn again
    (:meth:`TokenMasker.sample`)."""

    def __init__(
        self,
        config: GenerationConfig,
        generators: list[torch.Generator] | None,
        masker: TokenMasker | None = None,
        done: list[bool] | None = None,
    ):
        self.config = config
        self.generators = generators
        self.masker = masker
        self.done = done

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.masker is None:
            chosen = sample_next(scores, self.config, self.generators)  # (B,)
        else:
            live = [row for row, done in enumerate(self.done or []) if not done]
            chosen = self.masker.sample(scores, live, self.config, self.generators)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen[:, None], 0.0)
