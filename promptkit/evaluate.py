"""Evaluating a template on a dataset, for several shot counts; comparing two templates.

A dataset is JSONL: each line an object holding the template's input fields and the expected
output under ``expected`` (configurable). Demonstrations come from a separate pool (the
template's own examples by default, or a JSONL file in the same format) and never from the item
being evaluated (a pool example with the same input is left out for that item).

Per shot count the report gives accuracy (exact match; for records also the share of fields
that match), validity (answers that parsed and validated), mean attempts, tokens and latency.
Two templates on the same data are compared with McNemar's exact test on the items each got
right (paired: the same items, the same backend).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from .backends.base import Backend, GenerationConfig
from .demos import Selection, Strategy
from .errors import InputValidationError, OutputValidationError, PromptkitError, UsageError
from .prompt import Example, Prompt

__all__ = [
    "Comparison",
    "EvalItem",
    "ShotReport",
    "evaluate",
    "load_dataset",
    "mcnemar",
    "write_report",
]


@dataclass(frozen=True)
class EvalItem:
    """One dataset line: its number, the inputs, and the expected output (validated)."""

    line: int
    inputs: dict[str, Any]
    expected: Any


@dataclass
class ShotReport:
    """The results of one template at one shot count."""

    shots: int
    items: int
    accuracy: float  # exact matches / items
    field_accuracy: float | None  # records: mean share of matching fields
    validity: float  # answers that validated / items
    mean_attempts: float
    prompt_tokens: int
    completion_tokens: int
    mean_latency_s: float
    errors: list[str] = field(default_factory=list)  # items that failed outside validation
    correct: list[bool] = field(default_factory=list)  # per item, in dataset order

    def row(self) -> dict[str, Any]:
        """The report's summary fields (without the per-item list)."""
        data = asdict(self)
        data.pop("correct")
        data["errors"] = len(self.errors)
        return data


@dataclass(frozen=True)
class Comparison:
    """McNemar's exact test between two templates at one shot count."""

    shots: int
    only_first: int  # items only the first template got right
    only_second: int
    p_value: float


def load_dataset(
    path: str | Path, prompt: Prompt[Any], *, expected_key: str = "expected"
) -> list[EvalItem]:
    """Read and validate a JSONL dataset for ``prompt``.

    Raises InputValidationError naming the file, line and field of the first bad line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputValidationError(f"cannot read the dataset {str(path)!r}: {exc}") from None
    items = []
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
        if expected_key not in record:
            raise InputValidationError(
                f"{where}: no {expected_key!r} field (the expected output); fields: "
                f"{', '.join(sorted(record))}. Use --expected-key to name another field"
            )
        expected = record.pop(expected_key)
        try:
            prompt.validate_inputs(record)
        except InputValidationError as exc:
            raise InputValidationError(f"{where}: {exc}") from None
        try:
            expected = prompt.output.validate(expected)
        except (ValidationError, PromptkitError) as exc:
            raise InputValidationError(
                f"{where}: field {expected_key!r} is not a valid output: {_one_line(exc)}"
            ) from None
        items.append(EvalItem(number, record, expected))
    if not items:
        raise InputValidationError(f"the dataset {str(path)!r} has no items")
    return items


def pool_from(items: Sequence[EvalItem]) -> list[Example]:
    """Dataset items as demonstrations."""
    return [Example(input=item.inputs, output=item.expected) for item in items]


def evaluate(
    prompt: Prompt[Any],
    items: Sequence[EvalItem],
    *,
    backend: Backend,
    shots: Sequence[int] = (0,),
    pool: Sequence[Example] | None = None,
    select: Selection | Strategy | None = None,
    config: GenerationConfig | None = None,
    max_attempts: int = 1,
    on_item: Callable[[], None] | None = None,
    method: Literal["generate", "score"] = "generate",
) -> list[ShotReport]:
    """Run ``prompt`` on every item for each shot count; ``on_item`` is called after each run.

    ``method="score"`` chooses a label by likelihood (:meth:`Prompt.classify`) instead of
    generating an answer: label output types only, on backends that score.
    Raises UsageError when a shot count exceeds the pool (or the pool is empty), or for
    ``score`` on an output type that is not a label set.
    """
    if method not in ("generate", "score"):
        raise UsageError(f"method must be 'generate' or 'score', got {method!r}")
    if method == "score" and prompt.output.kind != "label":
        raise UsageError("method 'score' needs a label output type (labels, Literal or Enum)")
    pool = list(prompt.examples if pool is None else pool)
    check_shots(shots, pool)
    base = prompt.with_examples(pool)
    variants: dict[tuple[int, ...], Prompt[Any]] = {(): base}
    reports = []
    for count in shots:
        correct, fields, valid, attempts, latency = [], [], 0, 0, 0.0
        prompt_tokens = completion_tokens = 0
        errors: list[str] = []
        for item in items:
            excluded = tuple(i for i, e in enumerate(pool) if _same_input(e, item)) if count else ()
            if excluded not in variants:
                kept = [e for i, e in enumerate(pool) if i not in excluded]
                variants[excluded] = prompt.with_examples(kept)
            runner = variants[excluded]
            began = time.perf_counter()
            output: Any = None
            ok = False
            try:
                if method == "score":
                    output = runner.classify(
                        item.inputs,
                        backend=backend,
                        shots=min(count, len(runner.examples)),
                        select=select,
                    ).label
                    ok = True
                    attempts += 1
                else:
                    result = runner.run(
                        item.inputs,
                        backend=backend,
                        shots=min(count, len(runner.examples)),
                        config=config,
                        max_attempts=max_attempts,
                        select=select,
                    )
                    output, ok = result.output, True
                    attempts += len(result.attempts)
                    prompt_tokens += result.usage.prompt_tokens
                    completion_tokens += result.usage.completion_tokens
            except OutputValidationError as exc:
                attempts += len(exc.attempts)
                for attempt in exc.attempts:
                    prompt_tokens += attempt.usage.prompt_tokens
                    completion_tokens += attempt.usage.completion_tokens
            except PromptkitError as exc:
                errors.append(f"line {item.line}: {_one_line(exc)}")
            latency += time.perf_counter() - began
            valid += ok
            correct.append(ok and output == item.expected)
            fields.append(_field_share(output, item.expected) if ok else 0.0)
            if on_item is not None:
                on_item()
        n = len(items)
        reports.append(
            ShotReport(
                shots=count,
                items=n,
                accuracy=sum(correct) / n,
                field_accuracy=sum(fields) / n if prompt.output.is_object else None,
                validity=valid / n,
                mean_attempts=attempts / n,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                mean_latency_s=latency / n,
                errors=errors,
                correct=correct,
            )
        )
    return reports


def check_shots(shots: Sequence[int], pool: Sequence[Example]) -> None:
    """Raise UsageError unless every shot count is between 0 and the pool's size."""
    for count in shots:
        if count < 0:
            raise UsageError(f"shots must be >= 0, got {count}")
        if count > len(pool):
            what = "the demonstration pool is empty" if not pool else f"the pool has {len(pool)}"
            raise UsageError(f"shots={count} but {what}; give a larger --pool or fewer shots")


def _same_input(example: Example, item: EvalItem) -> bool:
    given = example.input
    if isinstance(given, BaseModel):
        given = given.model_dump()
    return dict(given) == item.inputs


def _field_share(output: Any, expected: Any) -> float:
    if isinstance(expected, BaseModel) and isinstance(output, BaseModel):
        names = list(type(expected).model_fields)
        if not names:
            return float(output == expected)
        same = sum(bool(getattr(output, n, None) == getattr(expected, n)) for n in names)
        return same / len(names)
    return float(output == expected)


def mcnemar(first: Sequence[bool], second: Sequence[bool], shots: int = 0) -> Comparison:
    """McNemar's exact (binomial) test on paired per-item correctness."""
    if len(first) != len(second):
        raise UsageError("the two runs must cover the same items")
    only_first = sum(a and not b for a, b in zip(first, second, strict=True))
    only_second = sum(b and not a for a, b in zip(first, second, strict=True))
    n = only_first + only_second
    if n == 0:
        return Comparison(shots, 0, 0, 1.0)
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return Comparison(shots, only_first, only_second, min(1.0, 2 * tail))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def markdown(name: str, reports: Sequence[ShotReport]) -> str:
    """A Markdown table of one template's reports."""
    lines = [
        f"### {name}",
        "",
        "| shots | accuracy | field accuracy | valid | mean attempts | prompt tokens | "
        "completion tokens | mean latency (s) | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in reports:
        fields = "-" if r.field_accuracy is None else f"{r.field_accuracy:.1%}"
        lines.append(
            f"| {r.shots} | {r.accuracy:.1%} | {fields} | {r.validity:.1%} | "
            f"{r.mean_attempts:.2f} | {r.prompt_tokens} | {r.completion_tokens} | "
            f"{r.mean_latency_s:.3f} | {len(r.errors)} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    out: str | Path,
    runs: dict[str, list[ShotReport]],
    *,
    backend: str,
    data: str,
    comparisons: Sequence[Comparison] = (),
) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``accuracy.png`` into ``out``; returns the
    paths written (the plot is left out, with a note in the Markdown, when matplotlib is not
    installed)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "backend": backend,
        "data": data,
        "templates": {
            name: [{**r.row(), "error_messages": r.errors, "correct": r.correct} for r in reports]
            for name, reports in runs.items()
        },
        "comparisons": [asdict(c) for c in comparisons],
    }
    written = [folder / "report.json"]
    written[0].write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    parts = [f"# Evaluation on {data} with {backend}\n"]
    parts += [markdown(name, reports) for name, reports in runs.items()]
    if comparisons:
        first, second = list(runs)[:2]
        parts.append(
            f"### {first} vs {second} (McNemar's exact test)\n\n"
            f"| shots | only {first} right | only {second} right | p-value |\n"
            "| ---: | ---: | ---: | ---: |\n"
            + "".join(
                f"| {c.shots} | {c.only_first} | {c.only_second} | {c.p_value:.3g} |\n"
                for c in comparisons
            )
        )
    plot = folder / "accuracy.png"
    if _plot(plot, runs):
        written.append(plot)
        parts.append("![accuracy against shots](accuracy.png)\n")
    else:
        parts.append("(No plot: install matplotlib, e.g. pip install 'promptkit[eval]'.)\n")
    (folder / "report.md").write_text("\n".join(parts))
    written.insert(1, folder / "report.md")
    return written


def _plot(path: Path, runs: dict[str, list[ShotReport]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, reports in runs.items():
        shots = [r.shots for r in reports]
        axes.plot(shots, [r.accuracy for r in reports], marker="o", label=name)
    axes.set_xlabel("demonstrations (shots)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1)
    axes.set_xticks(sorted({r.shots for reports in runs.values() for r in reports}))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True
