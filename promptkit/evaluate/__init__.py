"""Evaluating a template on a dataset, for several shot counts; comparing two templates.

A dataset is JSONL: each line an object holding the template's input fields and the expected
output under ``expected`` (configurable). Demonstrations come from a separate pool (the
template's own examples by default, or a JSONL file in the same format) and never from the item
being evaluated (a pool example with the same input is left out for that item).

A line may instead (or also) carry assertions under ``assert``, in promptfoo's vocabulary
(``equals``, ``contains``, ``icontains``, ``regex``, ``is-json``, ``python``, ``llm-rubric``,
...; see :mod:`promptkit.evaluate._assertions`): an item is then right when its answer also
passes them, each assertion's outcome is in its :class:`AssertionResult`, and each report
gives every assertion's pass rate.

Per shot count the report gives accuracy (exact match; for records also the share of fields
that match), validity (answers that parsed and validated), mean attempts, tokens and latency,
and every item's inputs, prediction, raw text and attempts. Two templates on the same data are
compared with McNemar's exact test on the items each got right (paired: the same items, the
same backend); :func:`plan_evaluation` and :func:`run_evaluation` are the ``eval`` command's
steps. ``report.json`` is a :class:`Report` (``schema_version`` "1"): read one back
with ``Report.model_validate_json(path.read_text())``. A run writes each item's result as it
finishes (:class:`ResultsLog`, ``results.jsonl``) and can be resumed when its fingerprint
(:func:`run_fingerprint`) matches; API backends run items concurrently, and
:func:`run_batch_evaluation` sends them through OpenAI's Batch API instead.

Code templates are measured by pass@k instead (:func:`run_pass_at_k`): completions generated
(or read from a samples file) for HumanEval-format problems run against each problem's tests in
a :class:`Sandbox` (bubblewrap; limits in :class:`SandboxLimits`), and pass@k is estimated
without bias (:func:`pass_at_k`, Chen et al. 2021).
"""

from __future__ import annotations

from ._assertions import ASSERTION_TYPES, Assertion
from ._batch_api import BATCHES_FILE, run_batch_evaluation
from ._code import (
    Candidate,
    PassAtKOptions,
    completion_stops,
    generate_candidates,
    pass_at_k_markdown,
    run_pass_at_k,
    sampling_config,
    score_candidates,
    write_pass_at_k_report,
)
from ._humaneval import (
    CODEX_STOPS,
    CodeProblem,
    completion_from_answer,
    load_problems,
    load_samples,
    program_for,
)
from ._metrics import compare_runs, mcnemar
from ._passk import mean_pass_at_k, parse_ks, pass_at_k
from ._plan import EvalOutcome, EvalPlan, plan_evaluation, run_evaluation
from ._report import comparison_line, markdown, model_calls, write_report
from ._resume import RESULTS_FILE, ResultsLog, run_fingerprint
from ._runs import EvalItem, check_shots, evaluate, load_dataset, pool_from
from ._sandbox import Execution, Sandbox, SandboxLimits
from ._schema import (
    REPORT_SCHEMA_VERSION,
    AssertionResult,
    AttemptRecord,
    Comparison,
    ItemResult,
    PassAtKReport,
    ProblemResult,
    Report,
    SampleRecord,
    ShotReport,
)

__all__ = [
    "ASSERTION_TYPES",
    "BATCHES_FILE",
    "CODEX_STOPS",
    "REPORT_SCHEMA_VERSION",
    "RESULTS_FILE",
    "Assertion",
    "AssertionResult",
    "AttemptRecord",
    "Candidate",
    "CodeProblem",
    "Comparison",
    "EvalItem",
    "EvalOutcome",
    "EvalPlan",
    "Execution",
    "ItemResult",
    "PassAtKOptions",
    "PassAtKReport",
    "ProblemResult",
    "Report",
    "ResultsLog",
    "SampleRecord",
    "Sandbox",
    "SandboxLimits",
    "ShotReport",
    "check_shots",
    "compare_runs",
    "comparison_line",
    "completion_from_answer",
    "completion_stops",
    "evaluate",
    "generate_candidates",
    "load_dataset",
    "load_problems",
    "load_samples",
    "markdown",
    "mcnemar",
    "mean_pass_at_k",
    "model_calls",
    "parse_ks",
    "pass_at_k",
    "pass_at_k_markdown",
    "plan_evaluation",
    "pool_from",
    "program_for",
    "run_batch_evaluation",
    "run_evaluation",
    "run_fingerprint",
    "run_pass_at_k",
    "sampling_config",
    "score_candidates",
    "write_pass_at_k_report",
    "write_report",
]
