"""The model under fine-tuning, whichever backend kind it came from, and how each kind saves.

:class:`ScratchTrainee` is a ``scratch:`` model (promptkit's GPT-2 or Llama-family decoder);
:class:`HFTrainee` an ``hf:`` one (a transformers causal LM). Each gives the training loop the
same few things: the logits of a batch, a backend over the weights being trained (for dev
accuracy through the real run loop), its family's default LoRA targets, its shape for the
memory estimate, and the folder it writes, which loads back with the same backend kind:

- ``scratch:DIR``: a promptkit checkpoint (GPT-2 family) or a Hugging Face Llama-family folder
  with its chat template, the run recorded under ``finetune`` in config.json; a LoRA adapter
  kept apart has promptkit's ``config.json`` naming its base (see
  :mod:`promptkit.backends.scratch._adapter`).
- ``hf:DIR``: transformers' ``save_pretrained`` folder with the tokenizer; a LoRA adapter kept
  apart is peft's adapter folder (its ``base_model_name_or_path`` the base's name) plus the
  tokenizer. Either way ``finetune.json`` records the run, the base by spec and sha256 among it
  (see :mod:`promptkit.backends._hf_adapter`).
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..backends._base import Backend
from ..backends._chat_templates import ChatTemplate
from ..backends._hf_adapter import HF_FINETUNE_FILE
from ..backends.scratch._adapter import (
    ADAPTER_FORMAT,
    LORA_TARGETS,
    default_lora_targets,
    to_layout_linears,
    to_torch_linears,
)
from ..backends.scratch._backend import ScratchBackend
from ..backends.scratch._checkpoint import save_checkpoint
from ..backends.scratch._loading import save_hf_llama
from ..backends.scratch.llama import Llama
from ..errors import ConfigurationError
from ._finetune_data import TrainingTokenizer

if TYPE_CHECKING:
    from peft import PeftModel

    from ..backends._hf import HFBackend

__all__ = ["HFTrainee", "ScratchTrainee", "Trainee", "trainee_for"]

# Hugging Face model types whose projections carry the Llama family's names.
_HF_LLAMA_TYPES = ("llama", "qwen2", "mistral")


class Trainee(ABC):
    """A local model being fine-tuned: its weights, tokenizer and what training asks of it."""

    backend: Backend  # the backend it was loaded as
    model: nn.Module
    tokenizer: TrainingTokenizer
    chat_template: ChatTemplate | None = None
    window: int  # the context window, in tokens
    kind: str  # the backend kind its output folder loads with: "scratch" or "hf"

    @abstractmethod
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` of token ids ``(B, T)`` (right padding is never seen)."""

    @abstractmethod
    def evaluation_backend(self) -> Backend:
        """A backend over the weights as they are now, rendering as the model's own backend
        does (dev accuracy goes through the real run loop)."""

    @abstractmethod
    def default_lora_targets(self) -> tuple[str, ...]:
        """The projections LoRA wraps unless told otherwise."""

    @abstractmethod
    def shape(self) -> tuple[int, int, int, int]:
        """``(layers, width, heads, vocabulary)``, for the memory estimate."""

    def prepare_lora(self, targets: tuple[str, ...]) -> list[str]:
        """Make the ``targets`` layers what peft wraps; returns the layers swapped to do so
        (swapped back after a merge). Raises ConfigurationError when none matches."""
        return []

    def fan_in_fan_out(self, targets: tuple[str, ...]) -> bool:
        """Whether the ``targets`` layers store their weights ``(in, out)`` (GPT-2's Conv1D in
        transformers), which peft must be told."""
        return False

    @abstractmethod
    def save(
        self,
        out: Path,
        record: dict[str, Any],
        peft_model: PeftModel | None,
        swapped: list[str],
        merge: bool,
    ) -> None:
        """Write the trained model (``peft_model``: its adapter, merged when ``merge``) and
        ``record`` into ``out``."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class ScratchTrainee(Trainee):
    """A ``scratch:`` model: promptkit's GPT-2 or Llama-family decoder."""

    kind = "scratch"

    def __init__(self, backend: ScratchBackend):
        self.backend = self._scratch = backend
        self.model = backend.model
        self.tokenizer = backend.tokenizer
        self.chat_template = backend.chat_template
        self.window = backend.model.config.context_length

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._scratch.model.logits(self._scratch.model(inputs))
        return logits

    def evaluation_backend(self) -> Backend:
        backend = ScratchBackend(
            self._scratch.model, self._scratch.tokenizer, name="scratch:finetuning"
        )
        backend.use_chat_template(self.chat_template)
        return backend

    def default_lora_targets(self) -> tuple[str, ...]:
        return default_lora_targets(self.model)

    def shape(self) -> tuple[int, int, int, int]:
        config = self._scratch.model.config
        return config.n_layer, config.n_embd, config.n_head, config.vocab_size

    def prepare_lora(self, targets: tuple[str, ...]) -> list[str]:
        return to_torch_linears(self.model, targets)

    def save(
        self,
        out: Path,
        record: dict[str, Any],
        peft_model: PeftModel | None,
        swapped: list[str],
        merge: bool,
    ) -> None:
        model = self._scratch.model
        if peft_model is None or merge:
            if peft_model is not None:
                peft_model.merge_and_unload()  # merges into ``model``'s layers
                to_layout_linears(model, swapped)
            if isinstance(model, Llama):
                save_hf_llama(
                    model,
                    self._scratch.tokenizer,
                    out,
                    chat_template=self.chat_template,
                    finetune=record,
                )
            else:
                save_checkpoint(model, self._scratch.tokenizer, out, finetune=record)
            return
        peft_model.save_pretrained(str(out))
        config = {"format": ADAPTER_FORMAT, "base": record["base"], "lora": record["lora"]}
        text = json.dumps({**config, "finetune": record}, indent=2) + "\n"
        (out / "config.json").write_text(text, encoding="utf-8")


class HFTrainee(Trainee):
    """An ``hf:`` model: a transformers causal LM (its prompts are text: hf: has no chat)."""

    kind = "hf"

    def __init__(self, backend: HFBackend):
        self.backend = backend
        # a copy: hf: keeps loaded models for reuse, and training must not change those
        self._model: Any = copy.deepcopy(backend.model)
        self.model = self._model
        self.tokenizer = backend.tokenizer
        self._hf_tokenizer: Any = backend.tokenizer.hf
        if backend.context_window is None:
            raise ConfigurationError(
                f"{backend.name}: its config names no context window (n_positions or "
                "max_position_embeddings), which fine-tuning needs to fit the examples"
            )
        self.window = backend.context_window

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._model(input_ids=inputs).logits
        return logits

    def evaluation_backend(self) -> Backend:
        from ..backends._hf import HFBackend

        return HFBackend(self._model, self._hf_tokenizer, name="hf:finetuning")

    def default_lora_targets(self) -> tuple[str, ...]:
        from ..backends.scratch._adapter import LLAMA_LORA_TARGETS

        model_type = self._model.config.model_type
        return LLAMA_LORA_TARGETS if model_type in _HF_LLAMA_TYPES else LORA_TARGETS

    def fan_in_fan_out(self, targets: tuple[str, ...]) -> bool:
        from transformers.pytorch_utils import Conv1D

        return any(
            isinstance(module, Conv1D) and name.rpartition(".")[2] in targets
            for name, module in self._model.named_modules()
        )

    def shape(self) -> tuple[int, int, int, int]:
        config = self._model.config
        return (
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.vocab_size,
        )

    def save(
        self,
        out: Path,
        record: dict[str, Any],
        peft_model: PeftModel | None,
        swapped: list[str],
        merge: bool,
    ) -> None:
        if peft_model is None or merge:
            model = self._model if peft_model is None else peft_model.merge_and_unload()
            model.save_pretrained(str(out))
        else:
            settings = peft_model.peft_config["default"]
            settings.base_model_name_or_path = record["base"]["spec"].partition(":")[2]
            peft_model.save_pretrained(str(out))
        self._hf_tokenizer.save_pretrained(str(out))
        text = json.dumps(record, indent=2) + "\n"
        (out / HF_FINETUNE_FILE).write_text(text, encoding="utf-8")


def trainee_for(backend: Backend) -> Trainee:
    """The trainee of a ``scratch:`` or ``hf:`` backend; raises ConfigurationError for
    another kind."""
    if isinstance(backend, ScratchBackend):
        return ScratchTrainee(backend)
    from ..backends._hf import HFBackend

    if isinstance(backend, HFBackend):
        return HFTrainee(backend)
    raise ConfigurationError(
        f"finetune trains scratch: and hf: models, not {backend.name!r}; a Hugging Face folder "
        "loads as scratch:PATH or hf:PATH"
    )
