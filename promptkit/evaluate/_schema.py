"""The schema of ``report.json``, defined once: the models below are both what
:func:`~promptkit.evaluate.evaluate` returns and what :func:`~promptkit.evaluate.write_report`
writes, so a report on disk is ``Report.model_validate_json(text)``.

``schema_version`` changes only when a field changes meaning or goes away; new fields (later
work: fine-tuned variants, pass@k, assertions, HTML) are added with defaults, so every
version-1 file still reads. A pass@k run (``metric: "pass@k"``) leaves ``templates`` empty and
fills ``pass_at_k`` (:class:`PassAtKReport`): per problem every sample's completion, raw text
and how its program ended in the sandbox.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "AssertionResult",
    "AttemptRecord",
    "BackendComparison",
    "BackendRun",
    "Comparison",
    "ItemResult",
    "PassAtKReport",
    "ProblemResult",
    "Report",
    "SampleRecord",
    "ShotReport",
]

REPORT_SCHEMA_VERSION: Literal["1"] = "1"


class _Record(BaseModel):
    # JSON has no infinities: a label that cannot be produced scores "-Infinity", read back
    # as -inf (pydantic writes null by default, which these float fields refuse)
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class AttemptRecord(_Record):
    """One answer the model generated for an item, kept whole."""

    text: str = Field(description="the raw text the model returned")
    error: str | None = Field(description="why it was refused and re-asked; null: accepted")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_s: float = Field(ge=0)


class AssertionResult(_Record):
    """One assertion checked against one item's answer."""

    type: str = Field(description="the assertion's type, with its not- prefix if any")
    value: Any = Field(description="its value as the data gave it (null when it has none)")
    passed: bool
    score: float = Field(description="1 or 0, or the grader's or python code's score")
    reason: str = Field(description="why it passed or failed, one line")
    weight: float = Field(ge=0, description="its weight in the item's score (0: reported only)")


class ItemResult(_Record):
    """One dataset item at one shot count: what went in, what came out, and whether it is right."""

    line: int = Field(ge=1, description="the item's line in the dataset file")
    inputs: dict[str, Any]
    expected: Any = Field(
        description="the expected output, as JSON; null when the item has only assertions"
    )
    prediction: Any = Field(
        description="the validated output, as JSON; null when no answer validated"
    )
    text: str | None = Field(
        description="raw text of the accepted answer (else of the last attempt); null for "
        "method score, which generates nothing"
    )
    valid: bool = Field(description="an answer parsed and validated")
    correct: bool = Field(
        description="an answer validated, equals the expected output (when the item gives one) "
        "and passes the item's assertions"
    )
    field_share: float | None = Field(
        default=None, ge=0, le=1, description="records: the share of fields that match"
    )
    scores: dict[str, float] | None = Field(
        default=None, description="method score: each label's summed log-probability"
    )
    attempts: list[AttemptRecord] = Field(default_factory=list)
    requests: int = Field(
        ge=0,
        description="requests sent to the backend: one per generated attempt, one per scoring "
        "(every label scored after the prompt)",
    )
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_s: float = Field(ge=0)
    error: str | None = Field(
        default=None, description="a failure outside validation (e.g. the backend's), one line"
    )
    assertions: list[AssertionResult] = Field(
        default_factory=list, description="the item's assertions, in the data's order"
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="the data line's metadata (never shown to the model)"
    )
    prompt: str | list[dict[str, Any]] | None = Field(
        default=None,
        description="the rendered prompt first sent (text, or chat messages); null when "
        "nothing was sent",
    )


class ShotReport(_Record):
    """One template at one shot count: the summary figures and every item's result."""

    shots: int = Field(ge=0)
    items: int = Field(ge=1)
    accuracy: float = Field(ge=0, le=1, description="exact matches / items")
    field_accuracy: float | None = Field(
        ge=0, le=1, description="records: mean share of matching fields; else null"
    )
    validity: float = Field(ge=0, le=1, description="answers that validated / items")
    mean_attempts: float = Field(ge=0, description="requests per item")
    requests: int = Field(ge=0)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    mean_latency_s: float = Field(ge=0)
    errors: list[str] = Field(description="failures outside validation, 'line N: message'")
    results: list[ItemResult] = Field(description="every item, in dataset order")
    assertion_pass_rates: dict[str, float] = Field(
        default_factory=dict,
        description="per assertion metric name (else type): the share of its checks that passed",
    )

    @model_validator(mode="after")
    def _one_result_per_item(self) -> ShotReport:
        if len(self.results) != self.items:
            raise ValueError(f"items is {self.items} but results holds {len(self.results)}")
        return self

    @property
    def correct(self) -> list[bool]:
        """Per item, in dataset order: whether the prediction was right."""
        return [item.correct for item in self.results]

    def row(self) -> dict[str, Any]:
        """The summary figures (without the items; ``errors`` as a count), for tables."""
        data = self.model_dump(mode="json", exclude={"results"})
        data["errors"] = len(self.errors)
        return data


class Comparison(_Record):
    """McNemar's exact test between two templates at one shot count."""

    shots: int = Field(ge=0)
    only_first: int = Field(ge=0, description="items only the first template got right")
    only_second: int = Field(ge=0)
    p_value: float = Field(ge=0, le=1)


class BackendRun(_Record):
    """The first template on another backend (``--vs-backend``), beside the main backend's."""

    backend: str = Field(description="the backend's name (never a key)")
    finetuned_shots: int | None = Field(
        default=None, ge=0, description="the shot count a fine-tuned model's folder records"
    )
    reports: list[ShotReport] = Field(description="one report per shot count it ran at")


class BackendComparison(_Record):
    """McNemar's exact test between the main backend at its best shot count (the best
    few-shot baseline) and another backend (a fine-tuned model) on the same items."""

    baseline: str = Field(description="the main backend's name")
    baseline_shots: int = Field(ge=0, description="its most accurate shot count")
    backend: str = Field(description="the other backend's name")
    shots: int = Field(ge=0, description="the other backend's shot count compared")
    only_baseline: int = Field(ge=0, description="items only the baseline got right")
    only_backend: int = Field(ge=0, description="items only the other backend got right")
    p_value: float = Field(ge=0, le=1)


class SampleRecord(_Record):
    """One completion of a code problem, and how its program ended in the sandbox."""

    completion: str = Field(description="the code placed after the problem's prompt")
    text: str | None = Field(
        description="the model's raw text (a chat answer with its fences); null for samples "
        "read from a file"
    )
    status: Literal["passed", "failed", "timeout", "output_limit", "error"] = Field(
        description="error: no completion (the backend failed); the others: the program's end"
    )
    passed: bool
    detail: str = Field(description="why it failed, one line, naming the limit it hit")
    output_tail: str = Field(description="the last 2,000 characters the program printed")
    exec_s: float = Field(ge=0, description="seconds the sandboxed program ran")
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    latency_s: float = Field(default=0.0, ge=0, description="seconds generating it")


class ProblemResult(_Record):
    """One problem: its samples, how many passed, and its pass@k estimates."""

    task_id: str
    line: int = Field(ge=1, description="the problem's line in the problems file")
    samples: int = Field(ge=1, description="n: samples of this problem")
    correct: int = Field(ge=0, description="c: samples that passed")
    pass_at_k: dict[str, float] = Field(description='per "pass@k": the unbiased estimate')
    results: list[SampleRecord] = Field(description="every sample, in order")


class PassAtKReport(_Record):
    """A pass@k evaluation: code samples run against each problem's tests."""

    template: str = Field(description="the template the samples were generated with")
    source: Literal["generated", "samples-file"]
    samples_file: str | None = None
    k: list[int]
    samples_per_problem: int | None = Field(description="n asked for; null: from the file")
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = Field(
        default_factory=list, description="where generated completions were cut"
    )
    isolation: str = Field(description="bubblewrap, or none (--unsafe-exec)")
    limits: dict[str, float] = Field(description="the sandbox's limits, by name")
    pass_at_k: dict[str, float] = Field(description='per "pass@k": the mean over problems')
    problems: list[ProblemResult] = Field(description="every problem evaluated, in file order")
    unsampled: list[str] = Field(
        default_factory=list, description="problems of the data file with no sample in the file"
    )
    wall_s: float = Field(ge=0)


class Report(_Record):
    """The whole of ``report.json``."""

    schema_version: Literal["1"] = REPORT_SCHEMA_VERSION
    backend: str = Field(description="the backend's name (never a key)")
    data: str = Field(description="the dataset file")
    method: Literal["generate", "score", "samples"] = Field(
        description="samples: completions read from a samples file, nothing generated"
    )
    templates: dict[str, list[ShotReport]] = Field(
        description="per template name, one report per shot count"
    )
    comparisons: list[Comparison] = Field(default_factory=list)
    metric: Literal["accuracy", "pass@k"] = "accuracy"
    pass_at_k: PassAtKReport | None = Field(default=None, description="metric pass@k: the run")
    fingerprint: dict[str, Any] | None = Field(
        default=None,
        description="what a resumed run must share with this one: digests of the template, "
        "data and pool files, the backend, the settings (see results.jsonl)",
    )
    vs_backends: list[BackendRun] = Field(
        default_factory=list, description="the first template on each --vs-backend"
    )
    backend_comparisons: list[BackendComparison] = Field(
        default_factory=list, description="the best few-shot baseline against each of those"
    )
