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
from typing import TYPE_CHECKING, Any

import click

from ._cli_eval import eval_command
from ._cli_models import models_command, pull_command
from ._cli_options import (
    backend_for,
    backend_option,
    collect_inputs,
    input_options,
    read_at,
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
    pass


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
    eval_command,
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
    backend_options: tuple[str, ...],
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
    backend = with_cache(backend_for(backend_spec, prompt, backend_options), not no_cache)
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
    path: str,
    backend_spec: str | None,
    backend_options: tuple[str, ...],
    stride: int | None,
    as_json: bool,
) -> None:
    """Perplexity of the text file PATH under a model (sliding window)."""
    text = read_at("@" + path, "PATH")
    backend = backend_for(backend_spec, options=backend_options)
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


def _print_attempts(attempts: Sequence[Any]) -> None:
    for number, attempt in enumerate(attempts, start=1):
        verdict = attempt.error or "accepted"
        click.echo(f"--- attempt {number}: {verdict}\n{attempt.text}", err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``promptkit`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="promptkit")
