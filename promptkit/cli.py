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

from ._cli_options import (
    backend_for,
    backend_option,
    collect_inputs,
    input_options,
    read_at,
    shot_counts,
    with_cache,
)
from .errors import BackendError, OutputValidationError, PromptkitError, UsageError

EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (OutputValidationError, 3),
    (BackendError, 4),
    (UsageError, 2),
    (PromptkitError, 1),
)

if TYPE_CHECKING:
    from .backends.base import Backend


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


@cli.command("templates")
def templates_command() -> None:
    """List the bundled templates with one-line descriptions."""
    from .files import bundled_templates, load_prompt

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
    from .check import check_template

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
    from .files import load_prompt

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
    when they were asked before (see promptkit.cache); --no-cache turns it off.
    """
    from .backends.base import GenerationConfig
    from .files import load_prompt

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


@cli.command("train")
@click.option(
    "--corpus",
    help="A text file, a folder of .txt files, or a .jsonl file (required unless --preset mini, "
    "which generates its own).",
)
@click.option("--out", required=True, help="Folder for the checkpoint (model, config, tokenizer).")
@click.option("--preset", default="small", show_default=True, help="Model shape.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--grad-accum",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Micro-batches per optimizer step.",
)
@click.option("--context-length", type=click.IntRange(min=8), help="Sequence length.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--warmup", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--tokenizer", help="Folder holding a tokenizer to use (default: train a BPE).")
@click.option("--vocab-size", type=click.IntRange(min=257), default=4096, show_default=True)
@click.option(
    "--bare-capitals/--no-bare-capitals",
    default=False,
    show_default=True,
    help="The trained BPE keeps the space before a capitalised word out of its tokens (a name "
    "is then the same tokens in a sentence and in a JSON string).",
)
@click.option(
    "--answer-weight",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help='Extra loss on answer tokens (a .jsonl corpus\'s "answer" offsets); 0: plain LM.',
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Arithmetic of training: bfloat16 autocasts matrix products (weights stay float32).",
)
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--seed", type=int, default=1337, show_default=True)
@click.option("--device", help="cpu or cuda (default: cuda when available).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.pass_context
def train_command(ctx: click.Context, /, **options: Any) -> None:
    """Pretrain promptkit's own GPT on a corpus (next-token prediction).

    --preset mini is the recipe of promptkit-mini: it generates the corpus and uses the
    recipe's settings unless they are given here.
    """
    from .training import run_training

    given = {
        name
        for name in options
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    result = run_training(options, given=given, progress=True)
    last = result.history[-1] if result.history else {}
    click.echo(
        f"saved {result.out} after {result.steps} steps ({result.tokens_seen:,} tokens); "
        f"validation perplexity {last.get('val_perplexity', float('nan')):.2f} vs unigram "
        f"baseline {result.unigram_perplexity:.2f}"
    )


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
    stats_of = getattr(backend, "perplexity_stats", None)
    if stats_of is None:
        backend.require("perplexity")
        figures: dict[str, Any] = {"perplexity": backend.perplexity(text, stride=stride)}
    else:
        stats = stats_of(text, stride=stride)
        figures = {
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
@click.option("--data", "data_path", required=True, help="JSONL dataset: inputs + expected.")
@backend_option(template=True)
@click.option(
    "--shots", default="0", show_default=True, help="Shot counts to evaluate, e.g. 0,1,3."
)
@click.option("--out", "out_dir", help="Folder for report.json, report.md and accuracy.png.")
@click.option("--pool", "pool_path", help="JSONL demonstrations (default: the template's).")
@click.option("--expected-key", default="expected", show_default=True, help="Field of the answer.")
@click.option("--vs", "other_file", help="A second template to compare on the same data.")
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
def eval_command(
    file: str,
    data_path: str,
    backend_spec: str | None,
    shots: str,
    out_dir: str | None,
    pool_path: str | None,
    expected_key: str,
    other_file: str | None,
    select: str,
    balanced: bool,
    method: str,
    max_tokens: int | None,
    max_attempts: int,
    no_cache: bool,
    cache_size: int,
) -> None:
    """Evaluate template FILE on a dataset for each shot count; write a report."""
    from .demos import Selection
    from .evaluate import (
        comparison_line,
        markdown,
        model_calls,
        plan_evaluation,
        run_evaluation,
        write_report,
    )
    from .item_progress import ItemProgress

    kind: Literal["generate", "score"] = "score" if method == "score" else "generate"
    templates = [file, *([other_file] if other_file else [])]
    plan = plan_evaluation(
        templates, data_path, shots=shot_counts(shots), pool=pool_path, expected_key=expected_key
    )
    name, first = plan.first
    backend: Backend = with_cache(backend_for(backend_spec, first), not no_cache, cache_size)
    with ItemProgress(plan.total) as progress:
        outcome = run_evaluation(
            plan,
            backend=backend,
            select=Selection(select, balanced=balanced),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            max_attempts=max_attempts,
            method=kind,
            on_item=progress.advance,
        )
    written = write_report(
        Path(out_dir or f"eval-{name}"),
        outcome.runs,
        backend=backend.name,
        data=data_path,
        comparisons=outcome.comparisons,
        method=kind,
    )
    for template, reports in outcome.runs.items():
        click.echo(markdown(template, reports))
    for comparison in outcome.comparisons:
        click.echo(comparison_line(comparison))
    calls = getattr(backend, "calls", None)
    note = model_calls(outcome.runs, calls, scoring=kind == "score")
    click.echo(f"wrote {', '.join(str(p) for p in written)}; {note}")


@cli.command("corpus")
@click.option("--out", "out_path", required=True, help="The JSONL file to write.")
@click.option("--documents", type=click.IntRange(min=1), default=20000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--split",
    type=click.Choice(["train", "heldout"]),
    default="train",
    show_default=True,
    help="Which names, label words and phrasings to use (held out ones are for evaluation).",
)
@click.option("--family", "families", multiple=True, help="Only these task families.")
@click.option("--eval-dir", help="Also write held-out evaluation sets into this folder.")
def corpus_command(
    out_path: str,
    documents: int,
    seed: int,
    split: str,
    families: Sequence[str],
    eval_dir: str | None,
) -> None:
    """Generate a training corpus in the formats promptkit renders (see promptkit.training)."""
    from .training.corpus import write_corpus
    from .training.evalsets import write_eval_tasks

    if eval_dir:
        files = write_eval_tasks(eval_dir, seed=seed)
        click.echo(f"wrote {len(files)} evaluation files to {eval_dir}")

    path = write_corpus(
        out_path,
        documents,
        seed=seed,
        split="heldout" if split == "heldout" else "train",
        families=list(families) or None,
    )
    click.echo(f"wrote {documents} documents to {path}")


@cli.command("serve")
@backend_option(template=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="PROMPTKIT_API_KEY",
    help="Require this key from clients (env: PROMPTKIT_API_KEY).",
)
@click.option("--model-name", help="The model name clients ask for (default: the spec).")
@click.option(
    "--max-body",
    type=click.IntRange(min=1024),
    default=1024 * 1024,
    show_default=True,
    help="Largest request body in bytes.",
)
def serve_command(
    backend_spec: str | None,
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
    max_body: int,
) -> None:
    """Serve a backend as an OpenAI-compatible API (/v1/chat/completions, /v1/completions)."""
    try:
        import uvicorn

        from .server import create_app
    except ImportError as exc:
        raise UsageError(
            f"promptkit serve needs FastAPI and uvicorn ({exc}); pip install 'promptkit[serve]'"
        ) from None
    backend = backend_for(backend_spec)
    app = create_app(backend, model_name=model_name, api_key=api_key, max_body_bytes=max_body)
    click.echo(
        f"serving {backend.name} as {model_name or backend.name!r} on http://{host}:{port}/v1"
        + (" (API key required)" if api_key else ""),
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _print_attempts(attempts: Sequence[Any]) -> None:
    for number, attempt in enumerate(attempts, start=1):
        verdict = attempt.error or "accepted"
        click.echo(f"--- attempt {number}: {verdict}\n{attempt.text}", err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``promptkit`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="promptkit")
