"""Training promptkit's own GPT: the generated corpus, pretraining, progress, the mini recipe.

- :mod:`~promptkit.training._corpus` generates documents in promptkit's own prompt formats
  (families in :mod:`~promptkit.training._tasks`, items and their train/held-out split in
  :mod:`~promptkit.training._vocabulary`); :mod:`~promptkit.training._evalsets` writes the
  held-out evaluation sets;
- :mod:`~promptkit.training._documents` reads a corpus from disk;
- :mod:`~promptkit.training._pretrain` is the training loop (:func:`train`, :class:`TrainConfig`);
- :mod:`~promptkit.training._finetune` fine-tunes a local model (``scratch:``, GPT-2 or Llama
  family, or ``hf:``) on a template's data (:func:`finetune`, :class:`FinetuneConfig`; LoRA
  with peft), its data rendered by :mod:`~promptkit.training._finetune_data`, each model kind
  trained and saved through :mod:`~promptkit.training._trainee`, its output folder written by
  :mod:`~promptkit.training._finetune_run`, its memory checked by
  :mod:`~promptkit.training._memory`;
- :mod:`~promptkit.training._progress` shows a run's progress;
- :mod:`~promptkit.training._recipes` holds promptkit-mini's recipe (:func:`train_mini`) and
  ``promptkit train`` as one call (:func:`run_training`).

The models it trains live in :mod:`promptkit.backends.scratch`, which only runs them. Names
load on first use, so generating a corpus does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "MINI_CORPUS",
    "MINI_RECIPE",
    "Document",
    "FinetuneConfig",
    "FinetuneResult",
    "TrainConfig",
    "TrainResult",
    "TrainingProgress",
    "finetune",
    "generate",
    "read_corpus",
    "read_documents",
    "run_finetune",
    "run_training",
    "train",
    "train_mini",
    "write_corpus",
    "write_eval_tasks",
]

_LAZY: dict[str, str] = {
    "MINI_CORPUS": "promptkit.training._recipes",
    "MINI_RECIPE": "promptkit.training._recipes",
    "Document": "promptkit.training._corpus",
    "FinetuneConfig": "promptkit.training._finetune_run",
    "FinetuneResult": "promptkit.training._finetune_run",
    "TrainConfig": "promptkit.training._pretrain",
    "TrainResult": "promptkit.training._pretrain",
    "TrainingProgress": "promptkit.training._progress",
    "finetune": "promptkit.training._finetune",
    "generate": "promptkit.training._corpus",
    "read_corpus": "promptkit.training._documents",
    "read_documents": "promptkit.training._documents",
    "run_finetune": "promptkit.training._finetune",
    "run_training": "promptkit.training._recipes",
    "train": "promptkit.training._pretrain",
    "train_mini": "promptkit.training._recipes",
    "write_corpus": "promptkit.training._corpus",
    "write_eval_tasks": "promptkit.training._evalsets",
}

if TYPE_CHECKING:
    from ._corpus import Document, generate, write_corpus
    from ._documents import read_corpus, read_documents
    from ._evalsets import write_eval_tasks
    from ._finetune import finetune, run_finetune
    from ._finetune_run import FinetuneConfig, FinetuneResult
    from ._pretrain import TrainConfig, TrainResult, train
    from ._progress import TrainingProgress
    from ._recipes import MINI_CORPUS, MINI_RECIPE, run_training, train_mini


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'promptkit.training' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
