"""Running a template on a dataset, for several shot counts.

See :mod:`promptkit.evaluate` for the dataset format and what is measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from .._batch import run_as_completed
from .._demos import Selection, Strategy
from .._prompt import Example, Prompt
from .._runloop import Result
from ..backends._base import Backend, GenerationConfig, PromptInput
from ..errors import (
    AttemptRecord as _Attempt,
)
from ..errors import (
    InputValidationError,
    OutputValidationError,
    PromptkitError,
    UsageError,
)
from ._assertions import (
    Assertion,
    assertion_pass_rates,
    assertions_pass,
    parse_assertions,
    record_fields,
)
from ._grading import Grading
from ._jsonl import jsonl_records
from ._sandbox import Sandbox
from ._schema import AttemptRecord, ItemResult, ShotReport


@dataclass(frozen=True)
class EvalItem:
    """One dataset line: its number, the inputs, the expected output (validated; None and
    ``has_expected`` False when the line gives only assertions), its assertions, the
    weighted score they must reach (None: every one must pass) and its ``metadata`` (carried
    into the report, never shown to the model)."""

    line: int
    inputs: dict[str, Any]
    expected: Any
    assertions: tuple[Assertion, ...] = ()
    threshold: float | None = None
    has_expected: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


def load_dataset(
    path: str | Path,
    prompt: Prompt[Any],
    *,
    expected_key: str = "expected",
    require_expected: bool = False,
) -> list[EvalItem]:
    """Read and validate a JSONL dataset for ``prompt``: each line the inputs, and the expected
    output, or assertions under ``assert`` (with an optional ``threshold``; see
    :mod:`promptkit.evaluate._assertions`), or both; an optional ``metadata`` object is kept
    with the item's result. ``threshold`` and ``metadata`` are inputs instead when the prompt
    has inputs of those names. ``require_expected``: every line must give the expected output
    (demonstration pools).

    Raises InputValidationError naming the file, line and field (or assertion) of the first
    bad line.
    """
    items = []
    fields = record_fields(prompt.output)
    for where, number, record in jsonl_records(Path(path), "dataset"):
        assertions, threshold = _assertions_of(record, where, prompt, fields)
        metadata = _metadata_of(record, where, prompt)
        if expected_key not in record:
            if assertions and not require_expected:
                _check_inputs(prompt, record, where)
                items.append(EvalItem(number, record, None, assertions, threshold, False, metadata))
                continue
            raise InputValidationError(
                f"{where}: no {expected_key!r} field (the expected output)"
                f"{'' if require_expected else ' and no assert list'}; fields: "
                f"{', '.join(sorted(record))}. Use --expected-key to name another field"
            )
        expected = record.pop(expected_key)
        _check_inputs(prompt, record, where)
        try:
            expected = prompt.output.validate(expected)
        except (ValidationError, PromptkitError) as exc:
            raise InputValidationError(
                f"{where}: field {expected_key!r} is not a valid output: {_one_line(exc)}"
            ) from None
        items.append(EvalItem(number, record, expected, assertions, threshold, True, metadata))
    if not items:
        raise InputValidationError(f"the dataset {str(path)!r} has no items")
    return items


def _check_inputs(prompt: Prompt[Any], record: dict[str, Any], where: str) -> None:
    """Check that ``record`` (a line less its expected output and assertions) holds valid
    inputs for ``prompt``; raises InputValidationError naming ``where``."""
    try:
        prompt.validate_inputs(record)
    except InputValidationError as exc:
        raise InputValidationError(f"{where}: {exc}") from None


def _metadata_of(record: dict[str, Any], where: str, prompt: Prompt[Any]) -> dict[str, Any]:
    """Take a line's ``metadata`` object out of ``record`` (unless it is an input)."""
    if "metadata" not in record or "metadata" in prompt.input_type.model_fields:
        return {}
    metadata = record.pop("metadata")
    if not isinstance(metadata, dict):
        raise InputValidationError(
            f"{where}: 'metadata' (kept with the item's result, never shown to the model) must "
            f"be an object, got {metadata!r:.80}"
        )
    return metadata


def _assertions_of(
    record: dict[str, Any], where: str, prompt: Prompt[Any], fields: list[str] | None
) -> tuple[tuple[Assertion, ...], float | None]:
    """Take a line's ``assert`` list and ``threshold`` out of ``record``, checked. A
    ``threshold`` stays an input when the prompt has an input of that name."""
    is_input = "threshold" in prompt.input_type.model_fields
    if "assert" not in record:
        if "threshold" in record and not is_input:
            raise InputValidationError(
                f"{where}: 'threshold' (the weighted score the assertions must reach) needs an "
                "'assert' list on the same line"
            )
        return (), None
    assertions = parse_assertions(record.pop("assert"), where, fields=fields)
    if "threshold" not in record or is_input:
        return assertions, None
    threshold = record.pop("threshold")
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if not (number and math.isfinite(threshold)):
        raise InputValidationError(
            f"{where}: 'threshold' (the weighted score the assertions must reach) must be a "
            f"finite number, got {threshold!r}"
        )
    return assertions, float(threshold)


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
    grader: Backend | None = None,
    sandbox: Sandbox | None = None,
    concurrency: int = 1,
    done: Mapping[tuple[int, int], ItemResult] | None = None,
    on_result: Callable[[int, ItemResult], None] | None = None,
) -> list[ShotReport]:
    """Run ``prompt`` on every item for each shot count; ``on_item`` is called after each run.

    ``method="score"`` chooses a label by likelihood (:meth:`Prompt.classify`) instead of
    generating an answer: label output types only, on backends that score. Items' assertions
    are checked on each answer: ``python`` ones in ``sandbox`` (default: a bubblewrap
    :class:`Sandbox`), ``llm-rubric`` ones by the ``grader`` backend.
    ``concurrency`` items run at once (in threads; more than 1 on backends that declare
    ``concurrent``, i.e. APIs). ``done`` holds results of an earlier run by (shot count, dataset
    line): those items are not run again. ``on_result(shots, result)`` is called with each new
    result as it comes (in the calling thread), e.g. to write it down at once.
    Raises UsageError when a shot count exceeds the pool (or the pool is empty), for
    ``score`` on an output type that is not a label set, for llm-rubric assertions without
    a grader, or for ``concurrency`` above 1 on a backend that is not ``concurrent``;
    UnsupportedCapabilityError for ``score`` on a backend that cannot score;
    ConfigurationError for python assertions where the sandbox cannot isolate code (all
    before any item runs).
    """
    if method not in ("generate", "score"):
        raise UsageError(f"method must be 'generate' or 'score', got {method!r}")
    if method == "score":
        if prompt.output.kind != "label":
            raise UsageError("method 'score' needs a label output type (labels, Literal or Enum)")
        backend.require("loglikelihood")
    pool = list(prompt.examples if pool is None else pool)
    check_shots(shots, pool)
    check_concurrency(concurrency, backend)
    grading = Grading(sandbox or Sandbox(), grader)
    grading.prepare(item.assertions for item in items)
    run = ItemRun(prompt, backend, select, config, max_attempts, method, grading)
    demonstrations = PoolPrompts(prompt, pool)
    earlier = done or {}
    reports = []
    for count in shots:
        todo = [  # each item's prompt is chosen here, in one thread
            (demonstrations.for_item(item) if count else demonstrations.whole, item)
            for item in items
            if (count, item.line) not in earlier
        ]

        def one(job: tuple[Prompt[Any], EvalItem], count: int = count) -> ItemResult:
            runner, item = job
            return run(runner, item, min(count, len(runner.examples)))

        def finished(index: int, result: ItemResult, count: int = count) -> None:
            if on_result is not None:
                on_result(count, result)
            if on_item is not None:
                on_item()

        fresh = run_as_completed(one, todo, concurrency=concurrency, on_done=finished)
        known = {**earlier, **{(count, result.line): result for result in fresh}}
        results = [known[(count, item.line)] for item in items]
        reports.append(summarize(count, items, results, records=prompt.output.is_object))
    return reports


def check_concurrency(concurrency: int, backend: Backend) -> None:
    """Raise UsageError unless ``concurrency`` is a positive integer, and 1 on a backend that
    does not declare ``concurrent`` (a local model runs one request at a time)."""
    if not isinstance(concurrency, int) or concurrency < 1:
        raise UsageError(f"concurrency must be a positive integer, got {concurrency!r}")
    if concurrency > 1 and not backend.capabilities.concurrent:
        raise UsageError(
            f"--concurrency {concurrency}: {backend.name} runs one request at a time; "
            "concurrency is for API backends (openai:, azure:) and scratch:"
        )


class PoolPrompts:
    """The prompt with the pool as its examples, less, for an item, the pool examples with the
    item's own input (an item is never its own demonstration); one copy per exclusion."""

    def __init__(self, prompt: Prompt[Any], pool: list[Example]):
        self._prompt = prompt
        self._pool = pool
        self.whole = prompt.with_examples(pool)
        self._copies: dict[tuple[int, ...], Prompt[Any]] = {(): self.whole}

    def for_item(self, item: EvalItem) -> Prompt[Any]:
        excluded = tuple(i for i, e in enumerate(self._pool) if _same_input(e, item))
        if excluded not in self._copies:
            kept = [e for i, e in enumerate(self._pool) if i not in excluded]
            self._copies[excluded] = self._prompt.with_examples(kept)
        return self._copies[excluded]


@dataclass(frozen=True)
class ItemRun:
    """Runs one item (generating or scoring) and records everything about it."""

    prompt: Prompt[Any]
    backend: Backend
    select: Selection | Strategy | None
    config: GenerationConfig | None
    max_attempts: int
    method: Literal["generate", "score"]
    grading: Grading

    def __call__(self, runner: Prompt[Any], item: EvalItem, shots: int) -> ItemResult:
        began = time.perf_counter()
        try:
            if self.method == "score":
                return self._score(runner, item, shots, began)
            result = runner.run(
                item.inputs,
                backend=self.backend,
                shots=shots,
                config=self.config,
                max_attempts=self.max_attempts,
                select=self.select,
            )
        except PromptkitError as exc:
            return self.failed(item, began, exc)
        return self.succeeded(item, began, result)

    def succeeded(self, item: EvalItem, began: float, result: Result[Any]) -> ItemResult:
        """The record of an item whose answer validated (``began``: its perf_counter start)."""
        return self._record(item, began, result.output, result.text, result.attempts)

    def failed(self, item: EvalItem, began: float, exc: PromptkitError) -> ItemResult:
        """The record of an item that failed: every attempt of an OutputValidationError, the
        one-line message of another error."""
        if isinstance(exc, OutputValidationError):
            last = exc.attempts[-1].text if exc.attempts else None
            return self._record(item, began, None, last, exc.attempts, valid=False)
        return self._record(item, began, None, None, (), valid=False, error=_one_line(exc))

    def _score(self, runner: Prompt[Any], item: EvalItem, shots: int, began: float) -> ItemResult:
        chosen = runner.classify(item.inputs, backend=self.backend, shots=shots, select=self.select)
        context = runner.render(item.inputs, shots, style="completion", select=self.select)
        assert isinstance(context, str)  # the completion style renders one string
        return self._record(
            item,
            began,
            chosen.label,
            None,
            (),
            scores=dict(zip(chosen.labels, chosen.scores, strict=True)),
            requests=1,
            prompt_tokens=self.backend.count_tokens(context),
            prompt=context,
        )

    def _record(
        self,
        item: EvalItem,
        began: float,
        output: Any,
        text: str | None,
        attempts: Sequence[_Attempt],
        *,
        valid: bool = True,
        error: str | None = None,
        scores: dict[str, float] | None = None,
        requests: int | None = None,
        prompt_tokens: int | None = None,
        prompt: PromptInput | None = None,
    ) -> ItemResult:
        dump = self.prompt.output.adapter.dump_python
        prediction = dump(output, mode="json") if valid else None
        checked = self.grading.check(
            item.assertions, text=text, prediction=prediction, valid=valid, inputs=item.inputs
        )
        matches = output == item.expected if item.has_expected else True
        records = [
            AttemptRecord(
                text=a.text,
                error=a.error,
                prompt_tokens=a.usage.prompt_tokens,
                completion_tokens=a.usage.completion_tokens,
                latency_s=a.latency_s,
            )
            for a in attempts
        ]
        return ItemResult(
            line=item.line,
            inputs=item.inputs,
            expected=dump(item.expected, mode="json") if item.has_expected else None,
            prediction=prediction,
            text=text,
            valid=valid,
            correct=valid and matches and assertions_pass(checked, item.threshold),
            field_share=(_field_share(output, item.expected) if valid else 0.0)
            if self.prompt.output.is_object and item.has_expected
            else None,
            scores=scores,
            attempts=records,
            requests=len(records) if requests is None else requests,
            prompt_tokens=(
                sum(r.prompt_tokens for r in records) if prompt_tokens is None else prompt_tokens
            ),
            completion_tokens=sum(r.completion_tokens for r in records),
            latency_s=time.perf_counter() - began,
            error=error,
            assertions=checked,
            metadata=item.metadata,
            prompt=_sent(attempts[0].prompt if attempts else prompt),
        )


def summarize(
    shots: int, items: Sequence[EvalItem], results: list[ItemResult], *, records: bool
) -> ShotReport:
    """One shot count's figures over its items' results (both in dataset order)."""
    n = len(results)
    return ShotReport(
        shots=shots,
        items=n,
        accuracy=sum(r.correct for r in results) / n,
        field_accuracy=_mean([r.field_share for r in results if r.field_share is not None])
        if records
        else None,
        validity=sum(r.valid for r in results) / n,
        mean_attempts=sum(r.requests for r in results) / n,
        requests=sum(r.requests for r in results),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=sum(r.completion_tokens for r in results),
        mean_latency_s=sum(r.latency_s for r in results) / n,
        errors=[f"line {r.line}: {r.error}" for r in results if r.error is not None],
        results=results,
        assertion_pass_rates=assertion_pass_rates([i.assertions for i in items], results),
    )


def check_shots(shots: Sequence[int], pool: Sequence[Example]) -> None:
    """Raise UsageError unless every shot count is between 0 and the pool's size."""
    for count in shots:
        if count < 0:
            raise UsageError(f"shots must be >= 0, got {count}")
        if count > len(pool):
            what = "the demonstration pool is empty" if not pool else f"the pool has {len(pool)}"
            raise UsageError(f"shots={count} but {what}; give a larger --pool or fewer shots")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _sent(
    prompt: PromptInput | Sequence[Mapping[str, object]] | None,
) -> str | list[dict[str, Any]] | None:
    """A rendered prompt as report.json keeps it: the text, or the chat messages as dicts."""
    if prompt is None or isinstance(prompt, str):
        return prompt
    return [dict(message) for message in prompt]


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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
