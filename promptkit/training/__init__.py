"""Training promptkit's own GPT: the generated corpus, pretraining, progress, the mini recipe.

- :mod:`~promptkit.training.corpus` generates documents in promptkit's own prompt formats
  (families in :mod:`~promptkit.training.tasks`, items and their train/held-out split in
  :mod:`~promptkit.training.vocabulary`); :mod:`~promptkit.training.evalsets` writes the
  held-out evaluation sets;
- :mod:`~promptkit.training.documents` reads a corpus from disk;
- :mod:`~promptkit.training.pretrain` is the training loop (:func:`train`, :class:`TrainConfig`);
- :mod:`~promptkit.training.finetune` fine-tunes a model on a template's data
  (:func:`finetune`, :class:`FinetuneConfig`; LoRA with peft), its data rendered by
  :mod:`~promptkit.training.finetune_data`, its output folder written by
  :mod:`~promptkit.training.finetune_run`, its memory checked by
  :mod:`~promptkit.training.memory`;
- :mod:`~promptkit.training.progress` shows a run's progress;
- :mod:`~promptkit.training.recipes` holds promptkit-mini's recipe (:func:`train_mini`) and
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
    "MINI_CORPUS": "promptkit.training.recipes",
    "MINI_RECIPE": "promptkit.training.recipes",
    "Document": "promptkit.training.corpus",
    "FinetuneConfig": "promptkit.training.finetune_run",
    "FinetuneResult": "promptkit.training.finetune_run",
    "TrainConfig": "promptkit.training.pretrain",
    "TrainResult": "promptkit.training.pretrain",
    "TrainingProgress": "promptkit.training.progress",
    "finetune": "promptkit.training.finetune",
    "generate": "promptkit.training.corpus",
    "read_corpus": "promptkit.training.documents",
    "read_documents": "promptkit.training.documents",
    "run_finetune": "promptkit.training.finetune",
    "run_training": "promptkit.training.recipes",
    "train": "promptkit.training.pretrain",
    "train_mini": "promptkit.training.recipes",
    "write_corpus": "promptkit.training.corpus",
    "write_eval_tasks": "promptkit.training.evalsets",
}

if TYPE_CHECKING:
    from .corpus import Document, generate, write_corpus
    from .documents import read_corpus, read_documents
    from .evalsets import write_eval_tasks
    from .finetune import finetune, run_finetune
    from .finetune_run import FinetuneConfig, FinetuneResult
    from .pretrain import TrainConfig, TrainResult, train
    from .progress import TrainingProgress
    from .recipes import MINI_CORPUS, MINI_RECIPE, run_training, train_mini


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
