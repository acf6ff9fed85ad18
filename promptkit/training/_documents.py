"""Reading a training corpus from disk: a text file, a folder of ``.txt`` files, or JSON Lines
with each document's answer offset (what ``promptkit corpus`` writes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigurationError

__all__ = ["read_corpus", "read_documents"]


def read_corpus(path: str | os.PathLike[str]) -> list[str]:
    """The documents of a corpus: one text file, every ``.txt`` file under a folder, or a
    ``.jsonl`` file with one document per line (``{"text": ...}``, as ``promptkit corpus``
    writes)."""
    return [text for text, _ in read_documents(path)]


def read_documents(path: str | os.PathLike[str]) -> list[tuple[str, int | None]]:
    """Like :func:`read_corpus`, with each document's answer offset: the character where its
    answer starts (a ``.jsonl`` line's optional ``"answer"``; None for plain text)."""
    root = Path(path)
    files = sorted(root.rglob("*.txt")) if root.is_dir() else [root]
    if not files or not all(f.is_file() for f in files):
        raise ConfigurationError(
            f"no corpus at {str(root)!r}: give a text file, a folder of .txt, or a .jsonl file"
        )
    try:
        texts = [f.read_text(encoding="utf-8") for f in files]
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"corpus file is not UTF-8 text: {exc}") from None
    if len(files) == 1 and files[0].suffix == ".jsonl":
        return _jsonl_documents(texts[0], files[0])
    return [(text, None) for text in texts]


def _jsonl_documents(text: str, path: Path) -> list[tuple[str, int | None]]:
    documents: list[tuple[str, int | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ConfigurationError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ConfigurationError(f"{path}:{number}: expected an object with a 'text' string")
        answer = record.get("answer")
        if answer is not None and (
            isinstance(answer, bool)
            or not isinstance(answer, int)
            or not 0 <= answer < len(record["text"])
        ):
            raise ConfigurationError(
                f"{path}:{number}: 'answer' must be the character offset where the answer starts, "
                f"an integer from 0 to {len(record['text']) - 1}; got {answer!r}"
            )
        documents.append((record["text"], answer))
    return documents
