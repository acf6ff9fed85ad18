"""A training corpus for a small GPT, generated: documents in the very formats promptkit renders.

Each document is a prompt of one task family (:mod:`promptkit.training._tasks`) followed by its
answer. Everything is deterministic under ``seed``. Names, cities, made-up label words and
instruction phrasings are split in two by a fixed hash: ``split="train"`` uses one part,
``"heldout"`` the other (:mod:`promptkit.training._vocabulary`), so evaluation on held-out items
(:mod:`promptkit.training._evalsets`) measures what the model reads from the prompt, not what
it memorised.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ._tasks import FAMILIES
from ._vocabulary import Split

__all__ = ["Document", "generate", "write_corpus"]


@dataclass(frozen=True)
class Document:
    """One generated training text, where it came from, and where its answer starts (the
    character offset of the answer after the prompt; None for plain text)."""

    family: str
    text: str
    answer: int | None = None


def write_corpus(
    path: str | os.PathLike[str],
    count: int,
    *,
    seed: int = 0,
    split: Split = "train",
    families: Sequence[str] | None = None,
) -> Path:
    """Write ``count`` documents as JSON Lines (``{"family": ..., "text": ..., "answer": ...}``,
    ``answer`` the character offset where the answer starts, absent for plain text), the form
    ``promptkit train --corpus FILE.jsonl`` reads (one document per line; ``--answer-weight``
    adds a loss on the answers)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for document in generate(count, seed=seed, split=split, families=families):
            record: dict[str, Any] = {"family": document.family, "text": document.text}
            if document.answer is not None:
                record["answer"] = document.answer
            out.write(json.dumps(record) + "\n")
    return target


def generate(
    count: int, *, seed: int = 0, split: Split = "train", families: Sequence[str] | None = None
) -> Iterator[Document]:
    """``count`` documents, deterministic under ``seed``, from the items of ``split``."""
    if split not in ("train", "heldout"):
        raise UsageError(f"split must be 'train' or 'heldout', got {split!r}")
    chosen = list(families or FAMILIES)
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise UsageError(f"unknown task families {unknown}; choose from {', '.join(FAMILIES)}")
    weights = [FAMILIES[f][1] for f in chosen]
    rng = random.Random(f"promptkit-corpus:{seed}:{split}")
    for _ in range(count):
        family = rng.choices(chosen, weights)[0]
        text, answer = FAMILIES[family][0](rng, split)
        yield Document(family, text, answer)
