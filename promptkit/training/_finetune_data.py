"""Fine-tuning data: eval-format JSONL items rendered as ``run`` renders them, as token ids.

Each item becomes the prompt that :meth:`Prompt.run` sends to the backend (its style for that
backend, ``shots`` demonstrations) as the ids the model reads, followed by the answer the model
must write: the output as demonstrations write it (the label, or the compact JSON of a record)
and the end-of-text token, without which a tuned model would never stop. A completion-style
prompt is text, and its answer follows a space (as in ``"{query} {answer}"`` demonstrations);
chat messages to a model with a chat template become the template's ids with the assistant's
turn opened, and the answer is the assistant's message followed by the end-of-turn token (the
tokenizer's end of text for such a model: ``<|im_end|>`` for SmolLM2). :func:`batch_of` pads a
batch and marks which targets are answer tokens and which are prompt tokens (for the auxiliary
language-model loss).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .._prompt import Prompt
from ..backends._base import Backend, PromptInput
from ..backends.scratch._backend import ScratchBackend
from ..errors import ContextWindowError, UnsupportedCapabilityError
from ..evaluate import EvalItem

__all__ = [
    "IGNORE",
    "Batch",
    "EncodedData",
    "TrainingExample",
    "TrainingTokenizer",
    "batch_of",
    "encode_items",
    "file_sha256",
    "render_for_training",
]

IGNORE = -100  # the target of a padding position (cross-entropy ignores it)


class TrainingTokenizer(Protocol):
    """What training needs of a backend's tokenizer (scratch's and hf:'s both have it)."""

    eot_id: int  # the end-of-text token (a chat model's end of turn)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, special-token text taken as text."""
        ...


@dataclass(frozen=True)
class TrainingExample:
    """One data line as token ids: the rendered prompt, then the answer and end-of-text."""

    line: int  # its line in the data file
    prompt: list[int]
    answer: list[int]  # ends with the end-of-text token

    @property
    def length(self) -> int:
        """Positions the model reads (every token but the last, which is only a target)."""
        return len(self.prompt) + len(self.answer) - 1


@dataclass
class EncodedData:
    """A data file's examples that fit the context window, and the lines that did not."""

    examples: list[TrainingExample]
    dropped: list[int] = field(default_factory=list)  # line numbers too long for the window


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the data's and the template's fingerprint)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render_for_training(
    prompt: Prompt[Any], backend: Backend, inputs: dict[str, Any], shots: int
) -> PromptInput:
    """What ``prompt.run`` sends to ``backend`` for these inputs with ``shots`` demonstrations
    (those that fit the context window, as run fits them): a text, or chat messages. Raises
    what :meth:`Prompt.first_request` raises."""
    return prompt.first_request(inputs, backend=backend, shots=shots)


def _prompt_ids(backend: Backend, tokenizer: TrainingTokenizer, request: PromptInput) -> list[int]:
    """The ids the model reads for ``request``: a text's tokens, or (a scratch model with a
    chat template) the template's ids with the assistant's turn opened."""
    if isinstance(request, str):
        return tokenizer.encode(request)
    if not isinstance(backend, ScratchBackend):
        raise UnsupportedCapabilityError(backend.name, "fine-tuning on chat messages")
    return backend.prompt_ids(request)


def encode_items(
    prompt: Prompt[Any],
    items: Sequence[EvalItem],
    backend: Backend,
    tokenizer: TrainingTokenizer,
    *,
    shots: int,
    window: int,
    strict: bool = False,
    source: str = "data",
) -> EncodedData:
    """Render and tokenize every item; an item longer than ``window`` positions is dropped
    (its line recorded), or with ``strict`` raises ContextWindowError naming its line."""
    encoded = EncodedData(examples=[])
    for item in items:
        try:
            request = render_for_training(prompt, backend, item.inputs, shots)
        except ContextWindowError as exc:  # the query alone leaves no room to answer
            if strict:
                raise ContextWindowError(
                    f"{source}:{item.line}: {exc}",
                    prompt_tokens=exc.prompt_tokens,
                    max_tokens=exc.max_tokens,
                    context_window=exc.context_window,
                ) from None
            encoded.dropped.append(item.line)
            continue
        answer = prompt.output.serialize(item.expected)
        if isinstance(request, str):
            answer = " " + answer  # as "{query} {answer}" demonstrations
        answer_ids = [*tokenizer.encode(answer), tokenizer.eot_id]
        example = TrainingExample(item.line, _prompt_ids(backend, tokenizer, request), answer_ids)
        if example.length > window:
            if strict:
                raise ContextWindowError(
                    f"{source}:{item.line}: the example takes {example.length + 1} tokens "
                    f"(prompt {len(example.prompt)}, answer and end-of-text "
                    f"{len(example.answer)}), more than the context window of {window} + 1; "
                    "shorten it, use fewer --shots, or leave out --strict to drop such lines",
                    prompt_tokens=len(example.prompt),
                    max_tokens=len(example.answer),
                    context_window=window,
                )
            encoded.dropped.append(item.line)
            continue
        encoded.examples.append(example)
    return encoded


@dataclass(frozen=True)
class Batch:
    """Padded inputs ``(B, T)`` and targets ``(B, T)``, with masks of the answer targets and of
    the prompt targets (padding is in neither)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    answer: torch.Tensor
    prompt: torch.Tensor

    def to(self, device: str | torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.inputs, self.targets, self.answer, self.prompt)))


def batch_of(examples: Sequence[TrainingExample], pad_id: int) -> Batch:
    """Right-pad ``examples`` into one batch (causal attention never sees the padding)."""
    width = max(e.length for e in examples)
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    answer = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.prompt + example.answer, dtype=torch.long)
        inputs[row, : example.length] = ids[:-1]
        targets[row, : example.length] = ids[1:]
        answer[row, len(example.prompt) - 1 : example.length] = True  # predicts the answer
    prompt = (targets != IGNORE) & ~answer
    return Batch(inputs, targets, answer, prompt)
