"""Held-out evaluation sets for promptkit-mini: tasks whose label words, phrasings, names and
cities the training corpus never contains."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Literal

from .._prompt import Example, Prompt
from ._tasks import person
from ._vocabulary import GROUPS, INSTRUCTIONS, items_of, label_words

__all__ = ["write_eval_tasks"]


def _write_task(
    root: Path,
    name: str,
    instruction: str,
    label_of: dict[str, str],
    words: dict[str, list[str]],
) -> list[Path]:
    """One held-out classification task: its template (the first 4 words of each group are
    the demonstrations) and its dataset (the rest)."""
    from .._files import save_prompt

    pool = [
        Example(input={"text": words[g][i]}, output=label)
        for i in range(4)
        for g, label in label_of.items()
    ]
    described = ", ".join(f"{g} -> {label}" for g, label in label_of.items())
    prompt: Prompt[Any] = Prompt(
        instruction=instruction,
        query="Input: {{ text }}\nLabel:",
        output_type=Literal[tuple(label_of.values())],
        examples=pool,
        style="completion",
        name=name,
        description=f"Held-out: {described}.",
    )
    template = root / f"{name}.prompty"
    save_prompt(prompt, template)
    data = root / f"{name}.jsonl"
    with data.open("w", encoding="utf-8") as out:
        for group, label in label_of.items():
            for word in words[group][4:]:
                out.write(json.dumps({"text": word, "expected": label}) + "\n")
    return [template, data]


def write_eval_tasks(
    folder: str | os.PathLike[str], *, tasks: int = 8, seed: int = 0
) -> list[Path]:
    """Held-out evaluation sets for ``promptkit eval``: ``classify-N.prompty`` (a
    demonstration-defined classification whose label words and phrasing were never trained on;
    its 8 examples are the demonstration pool) with ``classify-N.jsonl`` (other words of the
    same groups); ``classify-N-mirror`` the same task with the two label words exchanged; and
    ``extract.jsonl`` (sentences about held-out people, for the bundled ``extract`` template).
    Returns the files written."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"promptkit-eval:{seed}")
    written = []
    for number in range(1, tasks + 1):
        groups = rng.sample(sorted(GROUPS), 2)
        labels = label_words(rng, "heldout", 2)
        words = {g: rng.sample(GROUPS[g].split(), len(GROUPS[g].split())) for g in groups}
        instruction = rng.choice(items_of(INSTRUCTIONS["classify"], "heldout"))
        # The mirror gives each group the other label word (listed in the same group order):
        # with no demonstrations, nothing in a prompt says which made-up word is which group,
        # so the two average to chance unless the model follows a cue such as the listing order.
        for name, named in (
            (f"classify-{number}", labels),
            (f"classify-{number}-mirror", labels[::-1]),
        ):
            written += _write_task(
                root, name, instruction, dict(zip(groups, named, strict=True)), words
            )
    extract = root / "extract.jsonl"
    with extract.open("w", encoding="utf-8") as out:
        for _ in range(50):
            sentence, record = person(rng, "heldout")
            out.write(json.dumps({"text": sentence, "expected": record}) + "\n")
    written.append(extract)
    return written
