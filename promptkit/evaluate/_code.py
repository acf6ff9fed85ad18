"""pass@k on code problems: sample completions (or read them from a samples file), run each
against its problem's tests in a :class:`~promptkit.evaluate.Sandbox`, and estimate pass@k.

A completion-style template's generated text is the completion (the function's body), cut at
Codex's five stop sequences as well as the template's own (the request carries only the
template's: the OpenAI API takes at most four); a chat template's answer has its code fences
stripped, and an answer that defines the entry point is used whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._item_progress import ItemProgress
from .._prompt import Prompt
from ..backends._base import Backend, GenerationConfig, cut_at_stop
from ..errors import BackendError, UsageError
from ._html import write_html
from ._humaneval import (
    CODEX_STOPS,
    CodeProblem,
    completion_from_answer,
    load_problems,
    load_samples,
    program_for,
)
from ._passk import mean_pass_at_k, pass_at_k
from ._report import line_plot
from ._sandbox import Execution, Sandbox, SandboxLimits
from ._schema import PassAtKReport, ProblemResult, Report, SampleRecord

__all__ = [
    "Candidate",
    "PassAtKOptions",
    "completion_stops",
    "generate_candidates",
    "pass_at_k_markdown",
    "run_pass_at_k",
    "sampling_config",
    "score_candidates",
    "write_pass_at_k_report",
]

_TAIL = 2000


@dataclass(frozen=True)
class Candidate:
    """One completion to check: the code after the prompt, the model's raw text (None when
    read from a file), its cost, and the error when the backend gave no answer."""

    completion: str
    text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None


def sampling_config(
    prompt: Prompt[Any], *, samples: int, temperature: float | None, top_p: float | None
) -> GenerationConfig:
    """The template's generation settings with the sampling options applied. Raises
    UsageError for several samples at temperature 0 (they would all be the same greedy
    answer)."""
    config = prompt.config or GenerationConfig()
    if temperature is not None:
        config = config.replace(temperature=temperature)
    if top_p is not None:
        config = config.replace(top_p=top_p)
    if samples > 1 and config.temperature == 0:
        raise UsageError(
            f"--samples {samples} at temperature 0 gives {samples} copies of the greedy answer; "
            "pass --temperature > 0 (e.g. 0.8) or --samples 1"
        )
    return config


def completion_stops(prompt: Prompt[Any], config: GenerationConfig) -> tuple[str, ...]:
    """Where a generated completion is cut: a completion template's stops and Codex's; none
    for a chat template (its answer's code block is taken instead)."""
    if prompt.style == "chat":
        return ()
    return tuple(dict.fromkeys([*config.stop, *CODEX_STOPS]))


def generate_candidates(
    prompt: Prompt[Any],
    problems: Sequence[CodeProblem],
    *,
    backend: Backend,
    samples: int,
    config: GenerationConfig,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, list[Candidate]]:
    """``samples`` completions per problem; sample j is drawn with seed ``config.seed + j``
    (0 + j without a seed), so a run is repeatable and the response cache keeps each sample.
    A problem's samples are drawn together (:meth:`Backend.generate_samples`: one batch on
    local backends).

    A backend failure (BackendError) becomes a candidate with ``error`` set for each of the
    problem's samples (they count as not passed); errors of use are raised:
    InputValidationError when the template's inputs do not fit the problems,
    UnsupportedCapabilityError, ConfigurationError.
    """
    fields = set(prompt.input_type.model_fields)
    chat = prompt.style == "chat"
    stops = completion_stops(prompt, config)
    candidates: dict[str, list[Candidate]] = {}
    for problem in problems:
        rendered = prompt.render({k: v for k, v in problem.inputs().items() if k in fields})
        began = time.perf_counter()
        try:
            if config.temperature > 0:
                seeds = [(config.seed or 0) + j for j in range(samples)]
                answers = backend.generate_samples(rendered, config, seeds)
            else:
                answers = [backend.generate(rendered, config) for _ in range(samples)]
        except BackendError as exc:
            error = " ".join(str(exc).split())
            candidates[problem.task_id] = [Candidate("", None, error=error)] * samples
        else:
            latency = (time.perf_counter() - began) / samples
            candidates[problem.task_id] = [
                Candidate(
                    completion=completion_from_answer(problem, answer.text)
                    if chat
                    else cut_at_stop(answer.text, stops)[0],
                    text=answer.text,
                    prompt_tokens=answer.usage.prompt_tokens,
                    completion_tokens=answer.usage.completion_tokens,
                    latency_s=latency,
                )
                for answer in answers
            ]
        if on_sample is not None:
            for _ in range(samples):
                on_sample()
    return candidates


def score_candidates(
    problems: Sequence[CodeProblem],
    candidates: Mapping[str, Sequence[Candidate]],
    *,
    sandbox: Sandbox,
    ks: Sequence[int],
    template: str,
    workers: int = 1,
    on_sample: Callable[[], None] | None = None,
    config: GenerationConfig | None = None,
    samples_per_problem: int | None = None,
    samples_file: str | None = None,
) -> PassAtKReport:
    """Run every candidate against its problem's tests (``workers`` programs at a time) and
    estimate pass@k for each k.

    Problems without candidates are listed in ``unsampled``. ``config`` and
    ``samples_per_problem`` describe generated samples (``config.stop``: where completions
    were cut), ``samples_file`` read ones.

    Raises UsageError when a k exceeds some problem's number of samples (naming it),
    ConfigurationError when the sandbox cannot isolate programs; both before anything runs.
    """
    began = time.perf_counter()
    if not ks or min(ks) < 1:
        raise UsageError(f"pass@k needs one or more k >= 1, got {list(ks)}")
    chosen = [p for p in problems if candidates.get(p.task_id)]
    if not chosen:
        raise UsageError("no problem has a sample to check")
    for problem in chosen:
        n = len(candidates[problem.task_id])
        if n < max(ks):
            raise UsageError(
                f"pass@{max(ks)} needs at least {max(ks)} samples per problem, but "
                f"{problem.task_id} has {n}; draw more samples or lower --k"
            )
    sandbox.check()
    jobs = [(p, c) for p in chosen for c in candidates[p.task_id]]

    def check(job: tuple[CodeProblem, Candidate]) -> SampleRecord:
        problem, candidate = job
        record = _record(candidate, sandbox, problem)
        if on_sample is not None:
            on_sample()
        return record

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        records = list(pool.map(check, jobs))
    results = []
    at = 0
    for problem in chosen:
        n = len(candidates[problem.task_id])
        mine, at = records[at : at + n], at + n
        c = sum(r.passed for r in mine)
        results.append(
            ProblemResult(
                task_id=problem.task_id,
                line=problem.line,
                samples=n,
                correct=c,
                pass_at_k={f"pass@{k}": pass_at_k(n, c, k) for k in ks},
                results=mine,
            )
        )
    counts = [(r.samples, r.correct) for r in results]
    return PassAtKReport(
        template=template,
        k=list(ks),
        isolation=sandbox.isolation,
        limits={name: float(value) for name, value in asdict(sandbox.limits).items()},
        pass_at_k={f"pass@{k}": mean_pass_at_k(counts, k) for k in ks},
        problems=results,
        unsampled=[p.task_id for p in problems if not candidates.get(p.task_id)],
        wall_s=time.perf_counter() - began,
        source="samples-file" if samples_file else "generated",
        samples_file=samples_file,
        samples_per_problem=samples_per_problem,
        temperature=None if config is None else config.temperature,
        top_p=None if config is None else config.top_p,
        stop=[] if config is None else list(config.stop),
    )


def _record(candidate: Candidate, sandbox: Sandbox, problem: CodeProblem) -> SampleRecord:
    cost = {
        "prompt_tokens": candidate.prompt_tokens,
        "completion_tokens": candidate.completion_tokens,
        "latency_s": candidate.latency_s,
    }
    if candidate.error is not None:
        return SampleRecord(
            completion="",
            text=None,
            status="error",
            passed=False,
            detail=f"no completion: {candidate.error}",
            output_tail="",
            exec_s=0.0,
            **cost,
        )
    ran: Execution = sandbox.run(program_for(problem, candidate.completion))
    return SampleRecord(
        completion=candidate.completion,
        text=candidate.text,
        status=ran.status,
        passed=ran.passed,
        detail=ran.detail,
        output_tail=ran.output[-_TAIL:],
        exec_s=ran.duration_s,
        **cost,
    )


def pass_at_k_markdown(run: PassAtKReport) -> str:
    """A Markdown summary: pass@k for each k, then one row per problem."""
    ks = list(run.pass_at_k)
    lines = [
        f"### {run.template}: pass@k ({run.source}, sandbox: {run.isolation})",
        "",
        "| " + " | ".join(ks) + " | problems | samples | wall time (s) |",
        "| " + " | ".join("---:" for _ in ks) + " | ---: | ---: | ---: |",
        "| "
        + " | ".join(f"{run.pass_at_k[k]:.1%}" for k in ks)
        + f" | {len(run.problems)} | {sum(p.samples for p in run.problems)} | {run.wall_s:.1f} |",
        "",
        "| task | passed | " + " | ".join(ks) + " | first failure |",
        "| --- | ---: | " + " | ".join("---:" for _ in ks) + " | --- |",
    ]
    for p in run.problems:
        failure = next((r.detail for r in p.results if not r.passed), "")
        failure = failure.replace("|", "\\|")[:80]
        figures = " | ".join(f"{p.pass_at_k[k]:.2f}" for k in ks)
        lines.append(f"| {p.task_id} | {p.correct}/{p.samples} | {figures} | {failure} |")
    if run.unsampled:
        shown = ", ".join(run.unsampled[:10])
        more = f" and {len(run.unsampled) - 10} more (report.json lists them)"
        shown += more if len(run.unsampled) > 10 else ""
        lines += ["", f"No samples for {len(run.unsampled)} problem(s): {shown}"]
    return "\n".join(lines) + "\n"


def write_pass_at_k_report(
    out: str | Path, run: PassAtKReport, *, backend: str, data: str
) -> list[Path]:
    """Write ``report.json`` (a :class:`Report` with ``metric: "pass@k"``), ``report.md``,
    ``pass_at_k.png`` (left out, with a note in the Markdown, without matplotlib) and
    ``report.html`` (every problem and sample) into ``out``; returns the paths written. Raises
    OSError when the folder cannot be written."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    report = Report(
        backend=backend,
        data=data,
        method="samples" if run.source == "samples-file" else "generate",
        templates={},
        metric="pass@k",
        pass_at_k=run,
    )
    written = [folder / "report.json", folder / "report.md"]
    written[0].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    text = f"# pass@k on {data} with {backend}\n\n" + pass_at_k_markdown(run)
    plot = folder / "pass_at_k.png"
    drawn = _plot(plot, run)
    if drawn:
        written.append(plot)
        text += "\n![pass@k against k](pass_at_k.png)\n"
    else:
        text += "\n(No plot: install matplotlib, e.g. pip install 'promptkit[eval]'.)\n"
    text += "\nEvery problem and sample, with filters and details: [report.html](report.html)\n"
    written[1].write_text(text, encoding="utf-8")
    html = write_html(folder / "report.html", report, plot.read_bytes() if drawn else None)
    return [*written, html]


def _plot(path: Path, run: PassAtKReport) -> bool:
    ys = [run.pass_at_k[f"pass@{k}"] for k in run.k]
    return line_plot(
        path,
        {run.template: (run.k, ys)},
        x_label="k (samples allowed)",
        y_label="pass@k",
        x_ticks=run.k,
        log_x=True,
    )


@dataclass(frozen=True)
class PassAtKOptions:
    """What a ``promptkit eval --metric pass@k`` run does."""

    ks: tuple[int, ...] = (1,)  # the k of each pass@k reported
    samples: int = 1  # completions drawn per problem (n)
    temperature: float | None = None  # None: the template's
    top_p: float | None = None  # None: the template's
    max_tokens: int | None = None  # None: the template's
    samples_file: str | None = None  # score these completions instead of generating
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    unsafe_exec: bool = False  # run without isolation when bubblewrap cannot work
    bwrap: str = "bwrap"  # the bubblewrap executable
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))


def run_pass_at_k(
    prompt: Prompt[Any],
    data: str,
    *,
    backend: Backend | None,
    options: PassAtKOptions,
    out: str | Path,
) -> tuple[PassAtKReport, list[Path]]:
    """Evaluate ``prompt`` by pass@k on the problems in ``data`` (HumanEval format), and write
    the report into ``out``. ``backend`` generates the samples (None with a samples file).

    Raises InputValidationError for bad problems or samples files, UsageError for options
    that cannot work together, ConfigurationError when code cannot run isolated (and
    ``unsafe_exec`` is off) — all before any sample is generated.
    """
    problems = load_problems(data)
    sandbox = Sandbox(options.limits, bwrap=options.bwrap, unsafe=options.unsafe_exec)
    name = prompt.name or "template"
    if options.samples_file is not None:
        sampling = {
            "--samples": options.samples != 1,
            "--temperature": options.temperature is not None,
            "--top-p": options.top_p is not None,
            "--max-tokens": options.max_tokens is not None,
        }
        given = [flag for flag, used in sampling.items() if used]
        if given:
            raise UsageError(
                f"--samples-file scores the completions in the file; {', '.join(given)} "
                "apply only when generating"
            )
        read = load_samples(options.samples_file, {p.task_id for p in problems})
        candidates = {task: [Candidate(c) for c in texts] for task, texts in read.items()}
        total = sum(len(texts) for texts in read.values())
        with ItemProgress(total, label="run") as progress:
            run = score_candidates(
                problems,
                candidates,
                sandbox=sandbox,
                ks=options.ks,
                template=name,
                workers=options.workers,
                on_sample=progress.advance,
                samples_file=options.samples_file,
            )
        return run, write_pass_at_k_report(out, run, backend="samples file", data=data)
    if backend is None:
        raise UsageError("pass@k without --samples-file needs a backend to generate samples")
    if options.samples < max(options.ks):
        raise UsageError(
            f"pass@{max(options.ks)} needs --samples >= {max(options.ks)}, got "
            f"--samples {options.samples}"
        )
    config = sampling_config(
        prompt, samples=options.samples, temperature=options.temperature, top_p=options.top_p
    )
    if options.max_tokens is not None:
        config = config.replace(max_tokens=options.max_tokens)
    sandbox.check()
    with ItemProgress(len(problems) * options.samples, label="generate") as progress:
        candidates = generate_candidates(
            prompt,
            problems,
            backend=backend,
            samples=options.samples,
            config=config,
            on_sample=progress.advance,
        )
    with ItemProgress(len(problems) * options.samples, label="run") as progress:
        run = score_candidates(
            problems,
            candidates,
            sandbox=sandbox,
            ks=options.ks,
            template=name,
            workers=options.workers,
            on_sample=progress.advance,
            config=config.replace(stop=completion_stops(prompt, config)),
            samples_per_problem=options.samples,
        )
    return run, write_pass_at_k_report(out, run, backend=backend.name, data=data)
