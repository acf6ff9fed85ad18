"""A rich progress bar counting finished items (evaluation runs), silent without rich."""

from __future__ import annotations

from typing import Any

__all__ = ["ItemProgress"]


class ItemProgress:
    """Context manager counting finished items on a rich progress bar (on stderr); silent
    when rich is not installed."""

    def __init__(self, total: int, label: str = "eval"):
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            self._progress: Any = None
            return
        self._progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> ItemProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
