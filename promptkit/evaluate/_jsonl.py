"""JSON Lines files of records (datasets, problems, samples), plain or gzipped."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputValidationError

__all__ = ["jsonl_records"]


def jsonl_records(path: Path, what: str = "") -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Each record of a ``.jsonl`` (or ``.jsonl.gz``) file: where it is (``file:line``), its
    line number and the object; blank lines are skipped. ``what`` names the file in errors.

    Raises InputValidationError for a file that cannot be read and for a line that is not a
    JSON object, naming the file and line.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as stream:
                lines = stream.read().splitlines()
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        name = f"the {what} " if what else ""
        raise InputValidationError(f"cannot read {name}{str(path)!r}: {exc}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise InputValidationError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise InputValidationError(f"{where}: expected a JSON object, got {text[:60]!r}")
        yield where, number, record
