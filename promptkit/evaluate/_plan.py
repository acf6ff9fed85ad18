"""An evaluation as the ``eval`` command runs it: one template, or two to compare, on one
dataset for several shot counts.

Everything that can be checked without a model is checked when the plan is made (the
templates, every dataset and pool line, the shot counts), so a mistake fails before any
backend is built; :func:`run_evaluation` then runs each template and pairs two with McNemar's
test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from .._demos import Selection, Strategy
from .._files import load_prompt
from .._prompt import Example, Prompt
from ..backends._base import Backend, GenerationConfig
from ..errors import UsageError
from ._metrics import compare_runs
from ._resume import ResultsLog
from ._runs import EvalItem, check_shots, evaluate, load_dataset, pool_from
from ._sandbox import Sandbox
from ._schema import Comparison, ShotReport

__all__ = ["EvalOutcome", "EvalPlan", "plan_evaluation", "run_evaluation"]


@dataclass(frozen=True)
class EvalPlan:
    """The templates to evaluate, by name, each with its dataset items and demonstration pool
    (all validated), and the shot counts (each within every pool)."""

    prompts: dict[str, Prompt[Any]]
    items: dict[str, list[EvalItem]]
    pools: dict[str, list[Example]]
    shots: tuple[int, ...]

    @property
    def first(self) -> tuple[str, Prompt[Any]]:
        """The first template's name and prompt (its model.configuration is the default
        backend's, its name the default report folder's)."""
        return next(iter(self.prompts.items()))

    @property
    def assertion_types(self) -> set[str]:
        """The assertion types (without ``not-``) the items use, e.g. to know whether a grader
        or the sandbox is needed before building anything."""
        return {a.base for items in self.items.values() for i in items for a in i.assertions}

    @property
    def total(self) -> int:
        """How many item runs the plan holds: every item of every template per shot count."""
        return sum(len(items) for items in self.items.values()) * len(self.shots)


@dataclass(frozen=True)
class EvalOutcome:
    """Each template's reports (one per shot count) and, for two, their comparisons."""

    runs: dict[str, list[ShotReport]]
    comparisons: list[Comparison]


def plan_evaluation(
    templates: Sequence[str | Path],
    data: str | Path,
    *,
    shots: Sequence[int],
    pool: str | Path | None = None,
    expected_key: str = "expected",
) -> EvalPlan:
    """Load one template, or two to compare, and for each its dataset ``data`` and its
    demonstration pool (the JSONL file ``pool``, else the template's own examples).

    A template's name is its ``name``, else its file's stem. Raises UsageError for no or more
    than two templates, two with the same name, or a shot count larger than a pool;
    InputValidationError naming the file and line of a bad dataset or pool line; and whatever
    loading a template raises (TemplateError, ...).
    """
    if not 1 <= len(templates) <= 2:
        raise UsageError(f"evaluate one template, or two to compare; got {len(templates)}")
    prompts = {}
    for path in templates:
        prompt = load_prompt(path)
        prompts[prompt.name or Path(path).stem] = prompt
    if len(prompts) < len(templates):
        raise UsageError("the two templates have the same name; rename one to compare them")
    items, pools = {}, {}
    for name, prompt in prompts.items():
        items[name] = load_dataset(data, prompt, expected_key=expected_key)
        pools[name] = (
            pool_from(load_dataset(pool, prompt, expected_key=expected_key, require_expected=True))
            if pool
            else list(prompt.examples)
        )
        check_shots(shots, pools[name])
    return EvalPlan(prompts, items, pools, tuple(shots))


def run_evaluation(
    plan: EvalPlan,
    *,
    backend: Backend,
    select: Selection | Strategy | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_attempts: int = 1,
    method: Literal["generate", "score"] = "generate",
    on_item: Callable[[], None] | None = None,
    grader: Backend | None = None,
    sandbox: Sandbox | None = None,
    concurrency: int = 1,
    log: ResultsLog | None = None,
) -> EvalOutcome:
    """Run every template of ``plan`` on its items for each shot count (see :func:`evaluate`;
    ``max_tokens``, ``temperature`` and ``top_p``, when given, override each template's own)
    and compare two templates item by item. ``grader`` judges llm-rubric assertions,
    ``sandbox`` runs python ones.

    ``concurrency`` items run at once (API backends). With ``log`` every result is written to
    it as it comes, and the items it already holds (a resumed run) are not run again.
    Raises what :func:`evaluate` raises before its first item (UsageError,
    UnsupportedCapabilityError, ConfigurationError); an item's own failure is recorded in its
    report.
    """
    runs = {}
    for name, prompt in plan.prompts.items():
        config = plan_config(prompt, max_tokens, temperature, top_p)
        runs[name] = evaluate(
            prompt,
            plan.items[name],
            backend=backend,
            shots=plan.shots,
            pool=plan.pools[name],
            select=select,
            config=config,
            max_attempts=max_attempts,
            on_item=on_item,
            method=method,
            grader=grader,
            sandbox=sandbox,
            concurrency=concurrency,
            done=log.done.get(name) if log is not None else None,
            on_result=partial(log.write, name) if log is not None else None,
        )
    comparisons = compare_runs(*runs.values()) if len(runs) == 2 else []
    return EvalOutcome(runs, comparisons)


def plan_config(
    prompt: Prompt[Any], max_tokens: int | None, temperature: float | None, top_p: float | None
) -> GenerationConfig:
    """The template's generation config with the given sampling settings put over it."""
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
    config = prompt.config or GenerationConfig()
    return config.replace(**{k: v for k, v in sampling.items() if v is not None})
