"""``promptkit eval``: a template on a dataset for each shot count (or pass@k on code), with
variants side by side (--vs templates, --vs-backend backends), resumable and concurrent runs,
the OpenAI Batch API, and the report folder (report.json, report.md, accuracy.png,
report.html)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from ._cli_assertions import assertion_sandbox
from ._cli_options import (
    backend_for,
    backend_option,
    shot_counts,
    with_cache,
)
from .errors import UsageError

if TYPE_CHECKING:
    from .backends._base import Backend


@click.command("eval")
@click.argument("file")
@click.option(
    "--data",
    "data_path",
    required=True,
    help="JSONL dataset: inputs + expected and/or assert (pass@k: HumanEval problems, "
    ".jsonl or .jsonl.gz).",
)
@backend_option(template=True)
@click.option(
    "--shots",
    help="Shot counts to evaluate, e.g. 0,1,3 [default: 0; a fine-tuned --vs-backend: its own].",
)
@click.option(
    "--out",
    "out_dir",
    help="Folder for report.json, report.md, report.html, accuracy.png and results.jsonl.",
)
@click.option("--pool", "pool_path", help="JSONL demonstrations (default: the template's).")
@click.option("--expected-key", default="expected", show_default=True, help="Field of the answer.")
@click.option("--vs", "other_file", help="A second template to compare on the same data.")
@click.option(
    "--vs-backend",
    "vs_specs",
    multiple=True,
    metavar="SPEC",
    help="Another backend beside --backend on the same data (repeatable); a fine-tuned DIR "
    "runs at the shot count it records unless --shots is given.",
)
@click.option(
    "--select",
    type=click.Choice(["first", "random", "similar", "mmr"]),
    default="first",
    show_default=True,
    help="How demonstrations are chosen for each item.",
)
@click.option("--balanced", is_flag=True, help="Interleave labels among demonstrations.")
@click.option(
    "--method",
    type=click.Choice(["generate", "score"]),
    default="generate",
    show_default=True,
    help="generate an answer, or (labels only) choose the label by likelihood.",
)
@click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens to generate.")
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Answers to try per item (re-asking with the error).",
)
@click.option("--no-cache", is_flag=True, help="Do not use the response cache.")
@click.option(
    "--cache-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Response cache size limit in MB.",
)
@click.option(
    "--metric",
    type=click.Choice(["accuracy", "pass@k"]),
    default="accuracy",
    show_default=True,
    help="pass@k: run code samples against each problem's tests (HumanEval-format --data).",
)
@click.option("--k", "ks", default="1", show_default=True, help="pass@k: the k's, e.g. 1,10.")
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="pass@k: completions drawn per problem (n).",
)
@click.option("--samples-file", help="pass@k: score these completions (task_id, completion).")
@click.option("--temperature", type=click.FloatRange(min=0), help="Sampling temperature.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling.")
@click.option(
    "--unsafe-exec", is_flag=True, help="pass@k, python assertions: run code without isolation."
)
@click.option(
    "--exec-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="pass@k, python assertions: seconds each program may run.",
)
@click.option(
    "--grader",
    "grader_spec",
    metavar="SPEC",
    help="Backend that judges llm-rubric assertions, e.g. openai:gpt-4o-mini.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Items in flight at once (API backends; the SDK retries each request).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out: skip the items its results.jsonl holds (those that "
    "failed with a backend error run again).",
)
@click.option(
    "--batch-api",
    is_flag=True,
    help="openai: send the items through OpenAI's Batch API (cheaper, up to 24 h).",
)
def eval_command(
    file: str,
    data_path: str,
    backend_spec: str | None,
    backend_options: tuple[str, ...],
    shots: str | None,
    out_dir: str | None,
    pool_path: str | None,
    expected_key: str,
    other_file: str | None,
    vs_specs: tuple[str, ...],
    select: str,
    balanced: bool,
    method: str,
    max_tokens: int | None,
    max_attempts: int,
    no_cache: bool,
    cache_size: int,
    metric: str,
    ks: str,
    samples: int,
    samples_file: str | None,
    temperature: float | None,
    top_p: float | None,
    unsafe_exec: bool,
    exec_timeout: float,
    grader_spec: str | None,
    concurrency: int,
    resume: bool,
    batch_api: bool,
) -> None:
    """Evaluate template FILE on a dataset for each shot count; write a report. With
    --metric pass@k (or --samples-file), run code samples in a sandbox and report pass@k."""
    if metric == "pass@k" or samples_file:
        from ._cli_passk import eval_pass_at_k

        unused = {"--vs": other_file, "--pool": pool_path, "--method score": method != "generate"}
        unused["--grader"] = grader_spec
        unused |= {
            "--shots": shots not in (None, "0"),
            "--vs-backend": bool(vs_specs),
            "--backend (with --samples-file)": samples_file and backend_spec,
            "--backend-option (with --samples-file)": bool(samples_file and backend_options),
            "--concurrency": concurrency != 1,
            "--resume": resume,
            "--batch-api": batch_api,
        }
        eval_pass_at_k(
            file,
            data_path,
            backend_spec,
            backend_options,
            out_dir=out_dir,
            ks=ks,
            samples=samples,
            samples_file=samples_file,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            unsafe_exec=unsafe_exec,
            exec_timeout=exec_timeout,
            cache=not no_cache,
            cache_size=cache_size,
            unused=unused,
        )
        return
    from ._cache import CachedBackend
    from ._demos import Selection
    from ._item_progress import ItemProgress
    from .evaluate import (
        ResultsLog,
        comparison_line,
        markdown,
        model_calls,
        plan_evaluation,
        run_batch_evaluation,
        run_evaluation,
        run_fingerprint,
        write_report,
    )
    from .evaluate._vs_backends import (
        backends_markdown,
        compare_backends,
        plan_vs_backends,
        run_vs_backends,
    )

    pass_at_k_only = {"--k": ks != "1", "--samples": samples != 1}
    if any(pass_at_k_only.values()):
        given = ", ".join(k for k, v in pass_at_k_only.items() if v)
        raise UsageError(f"{given}: only with --metric pass@k")
    kind: Literal["generate", "score"] = "score" if method == "score" else "generate"
    if other_file and vs_specs:
        raise UsageError("--vs compares templates, --vs-backend backends: give one of them")
    templates = [file, *([other_file] if other_file else [])]
    plan = plan_evaluation(
        templates,
        data_path,
        shots=shot_counts(shots or "0"),
        pool=pool_path,
        expected_key=expected_key,
    )
    sandbox = assertion_sandbox(plan.assertion_types, grader_spec, unsafe_exec, exec_timeout)
    name, first = plan.first
    if batch_api and (concurrency != 1 or kind == "score"):
        given = "--concurrency" if concurrency != 1 else "--method score"
        raise UsageError(f"{given}: the Batch API sends every generation at once; leave it out")
    backend: Backend = backend_for(backend_spec, first, backend_options)
    grader = with_cache(backend_for(grader_spec), not no_cache, cache_size) if grader_spec else None
    api = backend.batch_api() if batch_api else None  # batches bypass the response cache
    if api is None:
        backend = with_cache(backend, not no_cache, cache_size)
    planned = plan_vs_backends(plan, vs_specs, shots_given=shots is not None)
    if planned and (api is not None or resume):
        given = "--batch-api" if api is not None else "--resume"
        raise UsageError(f"--vs-backend runs each backend directly: leave out {given}")
    others = [(vs, with_cache(backend_for(vs.spec), not no_cache, cache_size)) for vs in planned]
    extra = sum(len(plan.items[name]) * len(vs.shots) for vs in planned)
    settings: dict[str, Any] = {"shots": list(plan.shots), "expected_key": expected_key}
    settings |= {"select": select, "balanced": balanced, "method": kind, "max_tokens": max_tokens}
    settings |= {"temperature": temperature, "top_p": top_p, "max_attempts": max_attempts}
    files = [str(prompt.source) for prompt in plan.prompts.values()]  # bundled ones resolved
    fingerprint = run_fingerprint(
        files, data_path, pool=pool_path, backend=backend, settings=settings
    )
    out = Path(out_dir or f"eval-{name}")
    selection = Selection(select, balanced=balanced)  # type: ignore[arg-type]
    with (
        ResultsLog.open(out, fingerprint, total=plan.total, resume=resume) as log,
        ItemProgress(plan.total - log.count + extra) as progress,
    ):
        common: dict[str, Any] = {
            "select": selection,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "max_attempts": max_attempts,
            "on_item": progress.advance,
            "grader": grader,
            "sandbox": sandbox,
        }
        if api is not None:
            outcome = run_batch_evaluation(plan, backend=backend, api=api, log=log, **common)
        else:
            outcome = run_evaluation(
                plan, backend=backend, method=kind, concurrency=concurrency, log=log, **common
            )
        vs_runs = run_vs_backends(plan, others, method=kind, **common)
    backend_comparisons = compare_backends(backend.name, outcome.runs[name], vs_runs)
    written = write_report(
        out,
        outcome.runs,
        backend=backend.name,
        data=data_path,
        comparisons=outcome.comparisons,
        method=kind,
        fingerprint=fingerprint,
        vs_backends=vs_runs,
        backend_comparisons=backend_comparisons,
    )
    for template, reports in outcome.runs.items():
        click.echo(markdown(template, reports))
    for comparison in outcome.comparisons:
        click.echo(comparison_line(comparison))
    for part in backends_markdown(vs_runs, backend_comparisons, markdown):
        click.echo(part)
    calls = backend.calls if isinstance(backend, CachedBackend) else None
    note = model_calls(outcome.runs, calls, scoring=kind == "score")
    if vs_runs:
        note += f", plus the runs on {len(vs_runs)} other backend(s)"
    click.echo(f"wrote {', '.join(str(p) for p in written)}; {note}")
