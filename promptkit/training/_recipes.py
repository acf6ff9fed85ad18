"""promptkit-mini's recipe as one call, and ``promptkit train`` as one call.

promptkit-mini: :func:`train_mini` generates :data:`MINI_CORPUS` (see
:mod:`promptkit.training._corpus`) into ``OUT/corpus.jsonl`` and trains the ``mini`` preset with
:data:`MINI_RECIPE` (under an hour on 2 CPU cores: 6,500 steps of 6 x 512 tokens in bfloat16
autocast, 20M tokens, about 1.8 passes over the corpus; a 2,048-token BPE makes every word of
the classification groups one token, and its bare capitals make a name the same tokens in a
sentence and in JSON; the answer loss weighs the tokens that read a demonstration-defined
answer). Settings given to it (or on the command line) still win.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..backends.scratch.gpt2 import preset
from ..errors import ConfigurationError, UsageError
from ._corpus import write_corpus
from ._pretrain import Phase, Progress, TrainConfig, TrainResult, train
from ._progress import TrainingProgress

__all__ = ["CORPUS_FILE", "MINI_CORPUS", "MINI_RECIPE", "run_training", "train_mini"]

MINI_CORPUS = {"documents": 100000, "seed": 0}
MINI_RECIPE = {
    "steps": 6500,
    "batch_size": 6,
    "lr": 2e-3,
    "warmup": 200,
    "eval_every": 250,
    "checkpoint_every": 250,
    "seed": 0,
    "vocab_size": 2048,
    "bare_capitals": True,
    "answer_weight": 1.0,
    "precision": "bfloat16",
}
CORPUS_FILE = "corpus.jsonl"  # where the recipe's corpus is generated, inside the output folder

_FIXED = ("corpus", "out", "preset")  # the recipe's own arguments, not free settings


def _check_names(settings: Collection[str]) -> None:
    """Raises ConfigurationError naming every setting that TrainConfig does not have."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown training setting(s): {', '.join(unknown)}; "
            f"choose from: {', '.join(sorted(known))}"
        )


def _prepare_mini(
    out: str | os.PathLike[str], corpus: str | os.PathLike[str] | None, settings: Mapping[str, Any]
) -> tuple[TrainConfig, Path | None]:
    """The recipe's TrainConfig, checked, and the path its corpus must be generated into (None
    when a corpus is given or was generated into ``out`` before)."""
    fixed = sorted(set(settings) & set(_FIXED))
    if fixed:
        raise ConfigurationError(
            "train_mini takes corpus and out as its own arguments and always trains the 'mini' "
            f"preset; got {', '.join(fixed)} among the settings"
        )
    _check_names(settings)
    generate: Path | None = None
    if corpus is None:
        corpus = Path(out) / CORPUS_FILE
        generate = None if corpus.is_file() else corpus
    config = TrainConfig(
        **{**MINI_RECIPE, **settings, "corpus": str(corpus), "out": str(out), "preset": "mini"}
    )
    config.check()
    return config, generate


def _write_mini_corpus(path: Path, announce: Phase | None = None) -> None:
    """Generate the recipe's corpus into ``path``, announcing the phase first."""
    if announce is not None:
        announce(f"writing the corpus: {MINI_CORPUS['documents']:,} documents")
    write_corpus(path, MINI_CORPUS["documents"], seed=MINI_CORPUS["seed"])


def train_mini(
    out: str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | None = None,
    on_step: Progress | None = None,
    **settings: Any,
) -> TrainResult:
    """Train promptkit-mini's recipe into ``out``: the ``mini`` preset with :data:`MINI_RECIPE`,
    any :class:`TrainConfig` field in ``settings`` winning over it, on ``corpus`` or else on the
    recipe's corpus (generated into ``out/corpus.jsonl`` unless it is already there).

    ``on_step`` is :func:`train`'s progress callback. Raises ConfigurationError for an unknown
    or bad setting (``corpus``, ``out`` and ``preset`` are not settings here) or an unreadable
    corpus, UsageError for a corpus smaller than a context window.
    """
    config, generate = _prepare_mini(out, corpus, settings)
    if generate is not None:
        _write_mini_corpus(generate)
    return train(config, on_step=on_step)


def run_training(
    options: Mapping[str, Any], *, given: Collection[str] = (), progress: bool = False
) -> TrainResult:
    """What ``promptkit train`` does: train on ``options`` (:class:`TrainConfig` fields;
    ``corpus`` may be None with the ``mini`` preset, which then generates its own).

    With ``preset`` ``"mini"`` the recipe's settings replace the options not named in ``given``
    (the ones the user set), as :func:`train_mini`. ``progress`` shows a progress bar on
    stderr. Raises UsageError when no corpus is given for another preset, and what
    :func:`train_mini` and :func:`train` raise.
    """
    generate: Path | None = None
    if options.get("preset") == "mini":
        settings = {
            name: value
            for name, value in options.items()
            if name not in _FIXED and (name in given or name not in MINI_RECIPE)
        }
        config, generate = _prepare_mini(options["out"], options.get("corpus") or None, settings)
    elif not options.get("corpus"):
        raise UsageError("--corpus is required (except with --preset mini)")
    else:
        _check_names(options)
        config = TrainConfig(**options)
        config.check()  # argument errors come before any progress display
    preset(config.preset)
    if not progress:
        if generate is not None:
            _write_mini_corpus(generate)
        return train(config)
    with TrainingProgress(config.steps) as bar:
        if generate is not None:
            _write_mini_corpus(generate, bar.phase)
        return train(config, on_step=bar.update, on_phase=bar.phase)
