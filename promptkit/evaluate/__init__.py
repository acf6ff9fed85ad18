"""Evaluating a template on a dataset, for several shot counts; comparing two templates.

A dataset is JSONL: each line an object holding the template's input fields and the expected
output under ``expected`` (configurable). Demonstrations come from a separate pool (the
template's own examples by default, or a JSONL file in the same format) and never from the item
being evaluated (a pool example with the same input is left out for that item).

Per shot count the report gives accuracy (exact match; for records also the share of fields
that match), validity (answers that parsed and validated), mean attempts, tokens and latency,
and every item's inputs, prediction, raw text and attempts. Two templates on the same data are
compared with McNemar's exact test on the items each got right (paired: the same items, the
same backend); :func:`plan_evaluation` and :func:`run_evaluation` are the ``eval`` command's
steps. ``report.json`` is a :class:`Report` (``schema_version`` "1"): read one back
with ``Report.model_validate_json(path.read_text())``.
"""

from __future__ import annotations

from ._metrics import compare_runs, mcnemar
from ._plan import EvalOutcome, EvalPlan, plan_evaluation, run_evaluation
from ._report import comparison_line, markdown, model_calls, write_report
from ._runs import EvalItem, check_shots, evaluate, load_dataset, pool_from
from ._schema import (
    REPORT_SCHEMA_VERSION,
    AttemptRecord,
    Comparison,
    ItemResult,
    Report,
    ShotReport,
)

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "AttemptRecord",
    "Comparison",
    "EvalItem",
    "EvalOutcome",
    "EvalPlan",
    "ItemResult",
    "Report",
    "ShotReport",
    "check_shots",
    "compare_runs",
    "comparison_line",
    "evaluate",
    "load_dataset",
    "markdown",
    "mcnemar",
    "model_calls",
    "plan_evaluation",
    "pool_from",
    "run_evaluation",
    "write_report",
]
