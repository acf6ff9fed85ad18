"""The schema of ``report.json``, defined once: the models below are both what
:func:`~promptkit.evaluate.evaluate` returns and what :func:`~promptkit.evaluate.write_report`
writes, so a report on disk is ``Report.model_validate_json(text)``.

``schema_version`` changes only when a field changes meaning or goes away; new fields (later
work: fine-tuned variants, pass@k, assertions, HTML) are added with defaults, so a version-1
reader still reads them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "AttemptRecord",
    "Comparison",
    "ItemResult",
    "Report",
    "ShotReport",
]

REPORT_SCHEMA_VERSION: Literal["1"] = "1"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttemptRecord(_Record):
    """One answer the model generated for an item, kept whole."""

    text: str = Field(description="the raw text the model returned")
    error: str | None = Field(description="why it was refused and re-asked; null: accepted")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_s: float = Field(ge=0)


class ItemResult(_Record):
    """One dataset item at one shot count: what went in, what came out, and whether it is right."""

    line: int = Field(ge=1, description="the item's line in the dataset file")
    inputs: dict[str, Any]
    expected: Any = Field(description="the expected output, as JSON")
    prediction: Any = Field(
        description="the validated output, as JSON; null when no answer validated"
    )
    text: str | None = Field(
        description="raw text of the accepted answer (else of the last attempt); null for "
        "method score, which generates nothing"
    )
    valid: bool = Field(description="an answer parsed and validated")
    correct: bool = Field(description="the prediction equals the expected output")
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


class Report(_Record):
    """The whole of ``report.json``."""

    schema_version: Literal["1"] = REPORT_SCHEMA_VERSION
    backend: str = Field(description="the backend's name (never a key)")
    data: str = Field(description="the dataset file")
    method: Literal["generate", "score"]
    templates: dict[str, list[ShotReport]] = Field(
        description="per template name, one report per shot count"
    )
    comparisons: list[Comparison] = Field(default_factory=list)
