"""Progress on stderr: training (its phases, then step, loss, tokens/s and the latest
validation figures), fine-tuning (steps, loss, dev accuracy per epoch) and evaluation (items
done)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import TaskID
    from rich.status import Status

__all__ = ["FinetuneProgress", "TrainingProgress"]


class TrainingProgress:
    """Context manager that shows a training run on stderr: each phase before the steps
    (``phase(text)``: a spinner while it runs, then a lasting line with its duration; in a log,
    also a line as it starts), then a progress bar of the steps (``update(step, metrics)``).

    Nothing is shown until the first phase or step, so errors in the settings, which come
    before both, are never preceded by a display.
    """

    def __init__(self, total_steps: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._total = total_steps
        self._task: TaskID | None = None
        self._phase: tuple[str, float, Status] | None = None
        self._validation = ""

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._end_phase(finished=kind is None and self._task is None)
        if self._task is not None:
            self._progress.stop()

    def phase(self, text: str) -> None:
        """A phase before the steps' bar begins (the previous one, if any, has ended); the last
        one names the steps and lasts until the first of them is done."""
        self._end_phase()
        if not self._console.is_terminal:  # a log: say when the phase starts, too
            self._console.print(f"{text} ...", soft_wrap=True)
        status = self._console.status(text)
        status.start()
        self._phase = (text, time.perf_counter(), status)

    def _end_phase(self, finished: bool = True) -> None:
        """Stop the spinner; ``finished``: print the phase's duration (a phase that gives way
        to the steps' bar has none of its own)."""
        if self._phase is None:
            return
        text, began, status = self._phase
        status.stop()
        self._phase = None
        if finished:
            elapsed = time.perf_counter() - began
            self._console.print(f"{text}: done in {elapsed:.1f} s", soft_wrap=True)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """Step ``step`` of the run has finished with these metrics."""
        if self._task is None:  # the first step: the bar replaces the last phase's spinner
            self._end_phase(finished=False)
            self._task = self._progress.add_task("train", total=self._total, status="")
            self._progress.update(self._task, completed=step)
            self._progress.start()
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


class FinetuneProgress:
    """Context manager that shows a fine-tuning run on stderr: a bar of the optimizer steps
    with the latest loss and dev accuracy (``step(step, total, loss)``), and a lasting line per
    epoch (``epoch(epoch, metrics)``, also in logs)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]finetune"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task: TaskID | None = None
        self._dev = ""

    def __enter__(self) -> FinetuneProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._progress.stop()

    def step(self, step: int, total: int, loss: float) -> None:
        """Optimizer step ``step`` of ``total`` has finished with this answer loss."""
        if self._task is None:  # nothing shows before the first step (errors come before it)
            self._task = self._progress.add_task("finetune", total=total, status="")
            self._progress.start()
        self._progress.update(
            self._task, completed=step, total=total, status=f"loss {loss:.3f}{self._dev}"
        )

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Epoch ``epoch`` has finished: its mean loss and (with dev data) dev accuracy."""
        if "dev_accuracy" in metrics:
            self._dev = f" dev accuracy {metrics['dev_accuracy']:.1%}"
        self._progress.console.print(f"epoch {epoch}: loss {metrics['loss']:.3f}{self._dev}")
