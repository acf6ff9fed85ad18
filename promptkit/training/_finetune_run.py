"""A fine-tuning run's settings (:class:`FinetuneConfig`), its result, and the folder it writes.

The folder loads with the backend kind the model was trained from, ``scratch:DIR`` or
``hf:DIR``. For ``scratch:``, with every weight trained or a LoRA adapter merged, it is a
promptkit checkpoint (``config.json``, ``model.safetensors``, ``tokenizer.json``) for a
GPT-2-family model, or a Hugging Face Llama-family folder (the same files plus
``tokenizer_config.json`` with the end-of-text token and the model's chat template) for a
Llama-family one, a GGUF base included (its weights dequantized to float32); with
the adapter kept apart it holds peft's adapter files and a ``config.json`` of format
``promptkit-adapter`` naming the base by its ``scratch:`` spec and the sha256 of its weights
(see :mod:`promptkit.backends.scratch._adapter`). ``config.json`` records the run under
``finetune`` (an ``hf:`` folder in ``finetune.json``: see :mod:`~promptkit.training._trainee`):
the template (path, name, sha256), the data's and dev data's sha256, the shot count, the base,
the settings and each epoch's loss and dev accuracy. ``finetune_state.pt`` beside them, written
after every epoch and removed when the run finishes, lets ``resume`` continue an
interrupted run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from peft import PeftModel

    from ._trainee import Trainee

__all__ = ["STATE_FILE", "FinetuneConfig", "FinetuneResult", "Run", "base_spec", "save_output"]

STATE_FILE = "finetune_state.pt"  # the run after its last epoch, for resume


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; the defaults fine-tune every weight for 3 epochs."""

    template: str  # template file (or bundled template name) whose rendering is trained
    data: str  # training data, JSONL in `promptkit eval`'s format (inputs and "expected")
    out: str  # output folder (loads with scratch:DIR or hf:DIR, as the backend's kind)
    backend: str = "scratch"  # the scratch: or hf: model to start from
    dev: str | None = None  # dev data: accuracy each epoch, best epoch kept, early stopping
    epochs: int = 3  # passes over the training data (at most, with early stopping)
    lr: float | None = None  # peak learning rate (None: 1e-4, or 1e-3 with LoRA)
    batch_size: int = 8  # examples per optimizer step
    lora_rank: int = 0  # rank of the LoRA adapter (0: fine-tune every weight)
    lora_alpha: int | None = None  # the update is scaled by alpha / rank (None: 2 * rank)
    # names of the projections LoRA wraps (None: the family's attention and MLP projections)
    lora_targets: tuple[str, ...] | None = None
    merge: bool = False  # merge the adapter into the weights (else saved apart)
    lm_weight: float = 0.0  # lambda: weight of the LM loss on the prompt tokens (GPT-1: 0.5)
    shots: int = 0  # demonstrations kept in each training prompt (the template's examples)
    patience: int = 2  # epochs without a better dev accuracy before stopping
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    clip: float = 1.0  # gradient-norm clipping (0: off)
    # Arithmetic of the forward and backward passes: "bfloat16" autocasts matrix products
    # (weights and optimizer state stay float32), faster on CPUs with AMX or AVX-512 BF16.
    precision: Literal["float32", "bfloat16"] = "float32"
    expected_key: str = "expected"  # the data's field holding the expected output
    strict: bool = False  # an example too long for the context window is an error, not dropped
    seed: int = 0  # makes the run repeatable
    device: str | None = None  # cpu or cuda (default: cuda when available)
    resume: bool = False  # continue the run saved in ``out``

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.lora_rank else 1e-4)

    def check(self) -> None:
        """Raises ConfigurationError naming every setting out of its range."""
        positive = ("epochs", "batch_size", "patience")
        bad = [f"{name} must be positive" for name in positive if getattr(self, name) <= 0]
        if self.lr is not None and not 0 < self.lr < math.inf:
            bad.append("lr must be a finite number > 0")
        if self.lora_rank < 0:
            bad.append("lora_rank must be >= 0 (0: fine-tune every weight)")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            bad.append("lora_alpha must be positive")
        if self.merge and not self.lora_rank:
            bad.append("merge needs a LoRA adapter (lora_rank > 0)")
        if self.lora_targets is not None and not self.lora_targets:
            bad.append("lora_targets must name at least one layer")
        if not 0 <= self.lm_weight < math.inf:
            bad.append("lm_weight must be a finite number >= 0")
        if self.shots < 0:
            bad.append("shots must be >= 0")
        if self.precision not in ("float32", "bfloat16"):
            bad.append(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.weight_decay < 0 or self.clip < 0:
            bad.append("weight_decay and clip must be >= 0")
        if bad:
            raise ConfigurationError("invalid fine-tuning settings: " + "; ".join(bad))


@dataclass
class FinetuneResult:
    """What a run produced: where, how much of the model trained, and each epoch's figures."""

    out: Path
    epochs: int  # epochs trained (fewer than asked when it stopped early)
    best_epoch: int  # the epoch whose weights were saved
    dev_accuracy: float | None  # that epoch's dev accuracy (None without dev data)
    dev_loss: float | None  # and its mean loss on the dev answers' tokens
    trainable_parameters: int
    parameters: int
    dropped: list[int]  # data lines left out: too long for the context window
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    kind: str = "scratch"  # the backend kind ``out`` loads with: scratch:DIR or hf:DIR

    @property
    def trainable_share(self) -> float:
        """Trained parameters as a share of the model's (LoRA: the adapter's over the base's)."""
        return self.trainable_parameters / self.parameters


@dataclass(frozen=True)
class Run:
    """One run's fixed facts: its settings, what it starts from, and what it was given."""

    config: FinetuneConfig
    settings: dict[str, Any]  # what a resumed run must share (see finetune's _settings)
    base_sha256: str  # fingerprint of the starting weights
    prompt_name: str | None
    template: Path
    trainee: Trainee  # the model being trained, and how its kind saves it
    dropped: list[int]  # data lines too long for the context window


def base_spec(spec: str) -> str:
    """A backend spec that names the same model from anywhere: a folder's or file's (GGUF)
    path made absolute, a registry or hub name (or the bare kind, for the shipped model) kept
    as given."""
    kind, _, arg = spec.partition(":")
    if arg and Path(os.path.expanduser(arg)).exists():
        return f"{kind}:{Path(os.path.expanduser(arg)).resolve()}"
    return spec


def _record(run: Run, result: FinetuneResult) -> dict[str, Any]:
    """What ``config.json`` says about the run, under ``finetune``."""
    config, settings = run.config, run.settings
    lora = None
    if config.lora_rank:
        lora = {
            "rank": config.lora_rank,
            "alpha": config.lora_alpha or 2 * config.lora_rank,
            "targets": settings["lora_targets"],
            "merged": config.merge,
        }
    return {
        "template": {
            "path": str(run.template.resolve()),
            "name": run.prompt_name,
            "sha256": settings["template_sha256"],
        },
        "data": {
            "path": str(Path(config.data).resolve()),
            "sha256": settings["data_sha256"],
            "dropped_lines": run.dropped,
        },
        "dev": None
        if config.dev is None
        else {"path": str(Path(config.dev).resolve()), "sha256": settings["dev_sha256"]},
        "shots": config.shots,
        "base": {"spec": base_spec(config.backend), "sha256": run.base_sha256},
        "lora": lora,
        "settings": {
            "epochs": config.epochs,
            "lr": config.learning_rate,
            "batch_size": config.batch_size,
            "lm_weight": config.lm_weight,
            "precision": config.precision,
            "seed": config.seed,
        },
        "trainable_parameters": result.trainable_parameters,
        "parameters": result.parameters,
        "best_epoch": result.best_epoch,
        "dev_accuracy": result.dev_accuracy,
        "dev_loss": result.dev_loss,
        "history": result.history,
    }


def save_output(
    run: Run,
    peft_model: PeftModel | None,
    swapped: list[str],
    result: FinetuneResult,
) -> FinetuneResult:
    """Write the trained model into ``run.config.out`` as its backend kind loads it (see
    :mod:`~promptkit.training._trainee`): every weight, or the adapter merged or apart."""
    out = Path(run.config.out)
    out.mkdir(parents=True, exist_ok=True)
    run.trainee.save(out, _record(run, result), peft_model, swapped, run.config.merge)
    return result
