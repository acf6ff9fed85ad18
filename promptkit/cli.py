"""The ``promptkit`` command: parses arguments, calls the library, turns errors into exit codes.

Every error is one line on stderr (``error: ...``) and a non-zero exit code, never a traceback
(set ``PROMPTKIT_DEBUG=1`` to see one):

    1  other promptkit errors        3  the output never validated
    2  bad usage, input or template  4  the backend failed

Every command that needs a backend (run, eval, perplexity, serve) chooses it by one rule:
``--backend SPEC``, then ``$PROMPTKIT_BACKEND``, then (for a command with a template) the
template's ``model.configuration``, then the shipped promptkit-mini.
"""

from __future__ import annotations

import json
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from ._cli_assertions import assertion_sandbox
from ._cli_models import models_command, pull_command
from ._cli_options import (
    backend_for,
    backend_option,
    collect_inputs,
    input_options,
    read_at,
    shot_counts,
    with_cache,
)
from ._cli_serve import serve_command
from ._cli_training import corpus_command, finetune_command, train_command
from .errors import BackendError, OutputValidationError, PromptkitError, UsageError

EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (OutputValidationError, 3),
    (BackendError, 4),
    (UsageError, 2),
    (PromptkitError, 1),
)

if TYPE_CHECKING:
    from .backends._base import Backend


class _Group(click.Group):
    """Converts library errors into one line and an exit code, at the edge only."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except PromptkitError as exc:
            _fail(str(exc), next(code for kind, code in EXIT_CODES if isinstance(exc, kind)))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except OSError as exc:  # the file system refused (a path, a permission, a full disk)
            where = f" {exc.filename!r}" if exc.filename else ""
            _fail(f"cannot use{where}: {exc.strerror or exc}", 1)
        except Exception as exc:
            if os.environ.get("PROMPTKIT_DEBUG"):
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {exc} (set PROMPTKIT_DEBUG=1 for a "
                "traceback, and please report it)",
                70,
            )


def _fail(message: str, code: int) -> typing.NoReturn:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="promptkit")
def cli() -> None:
    """promptkit: typed prompt templates for GPT-style models."""


_COMMANDS = (
    corpus_command,
    finetune_command,
    models_command,
    pull_command,
    serve_command,
    train_command,
)
for _command in _COMMANDS:
    cli.add_command(_command)


@cli.command("templates")
def templates_command() -> None:
    """List the bundled templates with one-line descriptions."""
    from ._files import bundled_templates, load_prompt

    bundled = bundled_templates()
    width = max((len(name) for name in bundled), default=0)
    for name, path in bundled.items():
        description = load_prompt(path).description or ""
        click.echo(f"{name:<{width}}  {' '.join(description.split())}")


@cli.command("check")
@click.argument("files", nargs=-1, required=True)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def check_command(files: Sequence[str], strict: bool) -> None:
    """Validate template FILES; print each problem with its line number."""
    from ._check import check_template

    failed = False
    for file in files:
        problems = check_template(file)
        for problem in problems:
            click.echo(str(problem), err=problem.severity == "error")
        failed |= any(p.severity == "error" or strict for p in problems)
        if not problems:
            click.echo(f"{file}: ok")
    if failed:
        sys.exit(2)


@cli.command("render")
@input_options
@click.option(
    "--style",
    type=click.Choice(["chat", "completion"]),
    help="Render as chat messages or one completion string (default: the template's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rendering as JSON.")
def render_command(
    file: str,
    input_pairs: Sequence[str],
    inputs_json: str | None,
    sample: bool,
    shots: int | None,
    style: str | None,
    as_json: bool,
) -> None:
    """Render template FILE with the given inputs and print it."""
    from ._files import load_prompt

    prompt = load_prompt(file)
    inputs = collect_inputs(prompt, input_pairs, inputs_json, sample)
    rendered = prompt.render(inputs, shots=shots, style=style)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(rendered, ensure_ascii=False, indent=2))
    elif isinstance(rendered, str):
        click.echo(rendered)
    else:
        click.echo("\n\n".join(f"{m['role']}:\n{m['content']}" for m in rendered))


@cli.command("run")
@input_options
@backend_option(template=True)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Answers to try before giving up (re-asking with the error).",
)
@click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens to generate.")
@click.option("--temperature", type=click.FloatRange(min=0), help="Sampling temperature.")
@click.option("--seed", type=int, help="Seed for sampling.")
@click.option("--json", "as_json", is_flag=True, help="Print the validated output as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Print every attempt to stderr.")
@click.option("--no-cache", is_flag=True, help="Do not use the response cache.")
def run_command(
    file: str,
    input_pairs: Sequence[str],
    inputs_json: str | None,
    sample: bool,
    shots: int | None,
    backend_spec: str | None,
    max_attempts: int,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    as_json: bool,
    verbose: bool,
    no_cache: bool,
) -> None:
    """Run template FILE on a backend and print the validated output.

    Deterministic requests (temperature 0, or a --seed) are answered from the response cache
    when they were asked before (see promptkit.CachedBackend); --no-cache turns it off.
    """
    from ._files import load_prompt
    from .backends._base import GenerationConfig

    prompt = load_prompt(file)
    inputs = collect_inputs(prompt, input_pairs, inputs_json, sample)
    backend = with_cache(backend_for(backend_spec, prompt), not no_cache)
    changes = {
        k: v
        for k, v in (("max_tokens", max_tokens), ("temperature", temperature), ("seed", seed))
        if v is not None
    }
    config = (prompt.config or GenerationConfig()).replace(**changes)
    try:
        result = prompt.run(
            inputs, backend=backend, shots=shots, max_attempts=max_attempts, config=config
        )
    except OutputValidationError as exc:
        if verbose:
            _print_attempts(exc.attempts)
        raise
    if verbose:
        _print_attempts(result.attempts)
    value = prompt.output.adapter.dump_python(result.output, mode="json")
    if as_json:
        click.echo(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, str):
        click.echo(value)
    else:
        click.echo(json.dumps(value, ensure_ascii=False, indent=2))


@cli.command("perplexity")
@click.argument("path")
@backend_option(template=False)
@click.option("--stride", type=click.IntRange(min=1), help="Tokens each window advances.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def perplexity_command(
    path: str, backend_spec: str | None, stride: int | None, as_json: bool
) -> None:
    """Perplexity of the text file PATH under a model (sliding window)."""
    text = read_at("@" + path, "PATH")
    backend = backend_for(backend_spec)
    stats = backend.perplexity_stats(text, stride=stride)
    figures: dict[str, Any] = {
        "tokens": stats.tokens,
        "mean_nll": stats.mean_nll,
        "perplexity": stats.perplexity,
    }
    if as_json:
        click.echo(json.dumps(figures))
    else:
        click.echo(
            "  ".join(
                f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in figures.items()
            )
        )


@cli.command("eval")
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
@click.option("--out", "out_dir", help="Folder for report.json, report.md and accuracy.png.")
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
            "--concurrency": concurrency != 1,
            "--resume": resume,
            "--batch-api": batch_api,
        }
        eval_pass_at_k(
            file,
            data_path,
            backend_spec,
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
    backend: Backend = backend_for(backend_spec, first)
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
        if api is not None:
            outcome = run_batch_evaluation(
                plan,
                backend=backend,
                api=api,
                log=log,
                select=selection,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                max_attempts=max_attempts,
                on_item=progress.advance,
                grader=grader,
                sandbox=sandbox,
            )
        else:
            outcome = run_evaluation(
                plan,
                backend=backend,
                select=selection,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                max_attempts=max_attempts,
                method=kind,
                on_item=progress.advance,
                concurrency=concurrency,
                log=log,
                grader=grader,
                sandbox=sandbox,
            )
        vs_runs = run_vs_backends(
            plan,
            others,
            on_item=progress.advance,
            select=selection,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            max_attempts=max_attempts,
            method=kind,
            grader=grader,
            sandbox=sandbox,
        )
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


def _print_attempts(attempts: Sequence[Any]) -> None:
    for number, attempt in enumerate(attempts, start=1):
        verdict = attempt.error or "accepted"
        click.echo(f"--- attempt {number}: {verdict}\n{attempt.text}", err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``promptkit`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="promptkit")
