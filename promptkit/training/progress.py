"""A rich progress bar for training: step, loss, tokens/s and the latest validation figures."""

from __future__ import annotations

from types import TracebackType
from typing import Any

__all__ = ["TrainingProgress"]


class TrainingProgress:
    """Context manager whose ``update(step, metrics)`` advances a rich progress bar (on stderr)."""

    def __init__(self, total_steps: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task("train", total=total_steps, status="")
        self._validation = ""

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if "val_loss" in metrics:
            self._validation = (
                f" val loss {metrics['val_loss']:.3f} ppl {metrics['val_perplexity']:.1f}"
            )
            self._progress.console.print(  # a lasting line per evaluation, also in logs
                f"step {step}: loss {metrics['loss']:.3f}{self._validation} "
                f"({metrics['tokens_per_s']:,.0f} tok/s)"
            )
        status = (
            f"loss {metrics['loss']:.3f} {metrics['tokens_per_s']:,.0f} tok/s{self._validation}"
        )
        self._progress.update(self._task, completed=step, status=status)
