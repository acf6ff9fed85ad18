"""Evaluation runs that survive being stopped: results written item by item, and resumed.

``DIR/results.jsonl`` starts with a header line (the run's fingerprint, how many item runs it
holds, and a run id that the run's other files carry), then gets one line per finished item
run (template, shot count, the item's :class:`ItemResult`), appended and flushed as each
finishes: a run that is killed loses at most the items in flight. Resuming reads the lines
back, skips those items and appends the rest; an item that failed outside validation (the
backend's error: a rate limit, an expired batch) is run again, and its latest line counts.

The fingerprint is what decides the answers: a digest of each template file, of the dataset and
of the pool file, the backend (its name and a digest of its identity: model, base URL, ...;
never a key) and the settings (shots, selection, method, sampling, attempts). A resume whose
fingerprint differs is refused, naming what changed; ``report.json`` carries the fingerprint
too. Concurrency, the cache and the Batch API change no answer and may differ.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from ..backends._base import Backend
from ..errors import ConfigurationError
from ._schema import ItemResult

__all__ = ["RESULTS_FILE", "ResultsLog", "run_fingerprint"]

RESULTS_FILE = "results.jsonl"


def run_fingerprint(
    templates: Sequence[str | Path],
    data: str | Path,
    *,
    pool: str | Path | None,
    backend: Backend,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (see the module docstring), as
    JSON data. Raises OSError when a file cannot be read."""
    identity = json.dumps(backend.cache_identity(), sort_keys=True, default=str)
    return {
        "templates": [_file(path) for path in templates],
        "data": _file(data),
        "pool": _file(pool) if pool else None,
        "backend": {"name": backend.name, "sha256": _sha256(identity.encode())},
        "settings": json.loads(json.dumps(dict(settings), default=str)),
    }


def _file(path: str | Path) -> dict[str, str]:
    return {"path": str(path), "sha256": _sha256(Path(path).read_bytes())}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase each."""
    changes = []
    old_templates, new_templates = saved.get("templates") or [], now["templates"]
    if [t["sha256"] for t in old_templates] != [t["sha256"] for t in new_templates]:
        paths = ", ".join(t["path"] for t in new_templates)
        changes.append(f"the template ({paths}) differs from the one the run used")
    for part, what in (("data", "the dataset"), ("pool", "the demonstration pool")):
        old, new = saved.get(part), now[part]
        if (old or {}).get("sha256") != (new or {}).get("sha256"):
            changes.append(f"{what} ({(new or {}).get('path')}) differs from the run's")
    old_backend, new_backend = saved.get("backend") or {}, now["backend"]
    if old_backend.get("sha256") != new_backend["sha256"]:
        name = new_backend["name"]
        changes.append(
            f"the backend {name} differs from the run's in its settings (model, base URL, ...)"
            if old_backend.get("name") == name
            else f"the backend is {name}, the run used {old_backend.get('name')}"
        )
    old_settings, new_settings = saved.get("settings") or {}, now["settings"]
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key):
            changes.append(
                f"setting {key} is {new_settings.get(key)!r}, the run used "
                f"{old_settings.get(key)!r}"
            )
    return changes


class ResultsLog:
    """``results.jsonl`` of one evaluation run (see the module docstring): the results it
    already holds (``done``, per template by shot count and dataset line) and :meth:`write`
    for each new one. Use :meth:`open`; close it (or use it as a context manager) at the end.
    """

    def __init__(
        self,
        path: Path,
        stream: IO[str],
        done: dict[str, dict[tuple[int, int], ItemResult]],
        *,
        run_id: str,
    ):
        self.path = path
        self.run_id = run_id  # names the run (what else it leaves in the folder carries it)
        self._stream = stream
        self.done = done

    @property
    def count(self) -> int:
        """How many item results the log holds."""
        return sum(len(results) for results in self.done.values())

    @classmethod
    def open(
        cls, folder: str | Path, fingerprint: dict[str, Any], *, total: int, resume: bool
    ) -> ResultsLog:
        """Start the log of a run of ``total`` item runs in ``folder``, or with ``resume``
        continue the one there.

        Raises ConfigurationError for a resume with no log to continue, or whose fingerprint
        differs (naming what changed), for a log line that cannot be read (naming the line),
        and, without ``resume``, when ``folder`` holds an unfinished run (which a fresh start
        would overwrite). Raises OSError when the folder cannot be written.
        """
        path = Path(folder) / RESULTS_FILE
        if resume:
            if not path.is_file():
                raise ConfigurationError(
                    f"nothing to resume in {str(folder)!r}: no {RESULTS_FILE}, which a run "
                    "writes item by item; run without --resume to start"
                )
            header, done, kept = _read(path)
            changes = _changes(header.get("fingerprint") or {}, fingerprint)
            if changes:
                raise ConfigurationError(
                    f"cannot resume the run in {str(folder)!r}: " + "; ".join(changes) + ". "
                    "Use the run's template, data, backend and settings, or another --out"
                )
            with path.open("r+b") as raw:  # drop a line cut short when the run was killed
                raw.truncate(kept)
            answered = {
                template: {key: result for key, result in results.items() if result.error is None}
                for template, results in done.items()
            }
            stream = path.open("a", encoding="utf-8")
            return cls(path, stream, answered, run_id=str(header.get("run", "")))
        if path.is_file():
            header, done, _ = _read(path)
            held = sum(len(results) for results in done.values())
            if 0 < held < int(header.get("total", 0)):
                raise ConfigurationError(
                    f"{str(folder)!r} holds an unfinished run ({held} of {header['total']} "
                    f"item runs in {RESULTS_FILE}); pass --resume to continue it, or choose "
                    "another --out"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("w", encoding="utf-8")
        run_id = uuid.uuid4().hex
        header = {"fingerprint": fingerprint, "total": total, "run": run_id}
        stream.write(json.dumps(header) + "\n")
        stream.flush()
        return cls(path, stream, {}, run_id=run_id)

    def write(self, template: str, shots: int, result: ItemResult) -> None:
        """Append one item's result and flush it to the file."""
        line = {"template": template, "shots": shots, "result": result.model_dump(mode="json")}
        self._stream.write(json.dumps(line) + "\n")
        self._stream.flush()
        self.done.setdefault(template, {})[(shots, result.line)] = result

    def close(self) -> None:
        """Close the file."""
        self._stream.close()

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _read(
    path: Path,
) -> tuple[dict[str, Any], dict[str, dict[tuple[int, int], ItemResult]], int]:
    """The header, the results by template, and how many bytes hold whole lines (a last line
    without its newline was cut short by a kill and is left out)."""
    raw = path.read_bytes()
    kept = raw.rfind(b"\n") + 1
    lines = raw[:kept].decode("utf-8", errors="replace").splitlines()
    where = f"{path}:1"
    try:
        header = json.loads(lines[0]) if lines else None
        if not isinstance(header, dict) or "fingerprint" not in header:
            raise ValueError("the first line is not the run's header (its fingerprint)")
        done: dict[str, dict[tuple[int, int], ItemResult]] = {}
        for number, text in enumerate(lines[1:], start=2):
            where = f"{path}:{number}"
            line = json.loads(text)
            result = ItemResult.model_validate(line["result"])
            done.setdefault(str(line["template"]), {})[(int(line["shots"]), result.line)] = result
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ConfigurationError(
            f"{where}: not a line of an evaluation run's results ({detail}); remove "
            f"{RESULTS_FILE} to start afresh"
        ) from None
    return header, done, kept
