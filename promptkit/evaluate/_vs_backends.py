"""Backends side by side (``promptkit eval --vs-backend SPEC``): one template on one data set,
the main backend's few-shot curve beside other backends, as GPT-3 put fine-tuned models beside
its 0/1/4/8-shot curves.

A fine-tuned model's folder (``promptkit finetune``'s ``scratch:DIR`` or ``hf:DIR``) records the
shot count it was trained with; it runs at that count unless ``--shots`` is given, and then at
those counts like every backend. Each other backend is compared with McNemar's exact test
against the best few-shot baseline: the main backend at its most accurate shot count (of equals,
the fewest shots), the other at its recorded count (else its most accurate one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..backends._base import Backend
from ._metrics import mcnemar
from ._plan import EvalPlan, run_evaluation
from ._runs import check_shots
from ._schema import BackendComparison, BackendRun, ShotReport

__all__ = [
    "VsBackend",
    "backend_lines",
    "backends_markdown",
    "compare_backends",
    "finetune_record",
    "plan_vs_backends",
    "run_vs_backends",
    "vs_shots",
]

# Where each backend kind's fine-tuned folder records the run: (file, key; None: the whole file).
_RECORDS = (("config.json", "finetune"), ("finetune.json", None))


def finetune_record(spec: str) -> dict[str, Any] | None:
    """The fine-tuning record of the folder a ``scratch:DIR`` or ``hf:DIR`` spec names; None
    for any other spec, or a folder that ``promptkit finetune`` did not write."""
    kind, _, arg = spec.partition(":")
    folder = Path(os.path.expanduser(arg))
    if kind not in ("scratch", "hf") or not arg or not folder.is_dir():
        return None
    for name, key in _RECORDS:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue  # no such file here; a broken model folder fails when its backend loads
        record = data.get(key) if key and isinstance(data, dict) else data
        if isinstance(record, dict) and isinstance(record.get("shots"), int):
            return record
    return None


def vs_shots(
    spec: str, shots: Sequence[int], shots_given: bool
) -> tuple[tuple[int, ...], int | None]:
    """The shot counts ``spec`` runs at, and the count its fine-tuned folder records (None:
    not a fine-tuned folder): the recorded one, unless ``shots_given`` (then ``shots``)."""
    record = finetune_record(spec)
    recorded = None if record is None else int(record["shots"])
    if recorded is None or shots_given:
        return tuple(shots), recorded
    return (recorded,), recorded


@dataclass(frozen=True)
class VsBackend:
    """One ``--vs-backend``: its spec, the shot counts it runs at, and the count its
    fine-tuned folder records (None: not a fine-tuned folder)."""

    spec: str
    shots: tuple[int, ...]
    recorded: int | None


def plan_vs_backends(plan: EvalPlan, specs: Sequence[str], *, shots_given: bool) -> list[VsBackend]:
    """Each spec's shot counts (:func:`vs_shots`), checked against the first template's
    demonstration pool before anything runs: raises UsageError for a count larger than it."""
    name, _ = plan.first
    planned = [VsBackend(spec, *vs_shots(spec, plan.shots, shots_given)) for spec in specs]
    for vs in planned:
        check_shots(vs.shots, plan.pools[name])
    return planned


def run_vs_backends(
    plan: EvalPlan, backends: Sequence[tuple[VsBackend, Backend]], **options: Any
) -> list[BackendRun]:
    """Run the plan's first template on each backend at its planned shot counts;
    ``options`` as for :func:`run_evaluation`, which says what this raises."""
    name, prompt = plan.first
    runs = []
    for vs, backend in backends:
        single = replace(
            plan,
            prompts={name: prompt},
            items={name: plan.items[name]},
            pools={name: plan.pools[name]},
            shots=vs.shots,
        )
        outcome = run_evaluation(single, backend=backend, **options)
        runs.append(
            BackendRun(
                backend=backend.name, finetuned_shots=vs.recorded, reports=outcome.runs[name]
            )
        )
    return runs


def _best(reports: Sequence[ShotReport]) -> ShotReport:
    """The most accurate report (of equals, the one with the fewest shots)."""
    return max(reports, key=lambda r: (r.accuracy, -r.shots))


def compare_backends(
    baseline: str, reports: Sequence[ShotReport], runs: Sequence[BackendRun]
) -> list[BackendComparison]:
    """McNemar's test between the best few-shot baseline (``baseline``'s most accurate of
    ``reports``) and each run: at its recorded shot count when it ran at it, else at its most
    accurate."""
    best = _best(reports)
    comparisons = []
    for run in runs:
        recorded = [r for r in run.reports if r.shots == run.finetuned_shots]
        chosen = recorded[0] if recorded else _best(run.reports)
        test = mcnemar(best.correct, chosen.correct)
        comparisons.append(
            BackendComparison(
                baseline=baseline,
                baseline_shots=best.shots,
                backend=run.backend,
                shots=chosen.shots,
                only_baseline=test.only_first,
                only_backend=test.only_second,
                p_value=test.p_value,
            )
        )
    return comparisons


def backends_markdown(
    runs: Sequence[BackendRun],
    comparisons: Sequence[BackendComparison],
    table: Callable[[str, Sequence[ShotReport]], str],
) -> list[str]:
    """The report's sections for the other backends: each one's table (drawn by ``table``)
    and the McNemar tests against the best few-shot baseline."""
    parts = []
    for run in runs:
        tuned = run.finetuned_shots
        recorded = "" if tuned is None else f" (fine-tuned with {tuned} shots)"
        parts.append(table(f"{run.backend}{recorded}", run.reports))
    if comparisons:
        parts.append(
            "### Best few-shot vs the other backends (McNemar's exact test)\n\n"
            "| baseline | shots | backend | shots | only baseline right | only backend right | "
            "p-value |\n| --- | ---: | --- | ---: | ---: | ---: | ---: |\n"
            + "".join(
                f"| {c.baseline} | {c.baseline_shots} | {c.backend} | {c.shots} | "
                f"{c.only_baseline} | {c.only_backend} | {c.p_value:.3g} |\n"
                for c in comparisons
            )
        )
    return parts


def backend_lines(
    runs: Sequence[BackendRun],
) -> tuple[dict[str, tuple[list[int], list[float]]], dict[str, float]]:
    """Each other backend for the plot: the curves of those that ran at several shot counts,
    and the levels (accuracy, drawn across the chart) of those that ran at one, such as a
    fine-tuned model at its recorded count."""
    lines, levels = {}, {}
    for run in runs:
        tuned = "" if run.finetuned_shots is None else "fine-tuned, "
        if len(run.reports) == 1:
            (report,) = run.reports
            levels[f"{run.backend} ({tuned}{report.shots} shots)"] = report.accuracy
        else:
            label = f"{run.backend}{' (fine-tuned)' if tuned else ''}"
            lines[label] = ([r.shots for r in run.reports], [r.accuracy for r in run.reports])
    return lines, levels
