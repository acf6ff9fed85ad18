"""``promptkit eval --metric pass@k``: code samples generated (or read from a samples file) for
HumanEval-format problems, run in the sandbox, pass@k reported (see
:func:`promptkit.evaluate.run_pass_at_k`). The ``eval`` command in :mod:`promptkit.cli` parses
the options and calls :func:`eval_pass_at_k`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from ._cli_options import backend_for, with_cache
from .errors import UsageError

__all__ = ["eval_pass_at_k"]


def eval_pass_at_k(
    file: str,
    data_path: str,
    backend_spec: str | None,
    backend_options: tuple[str, ...],
    *,
    out_dir: str | None,
    ks: str,
    samples: int,
    samples_file: str | None,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    unsafe_exec: bool,
    exec_timeout: float,
    cache: bool,
    cache_size: int,
    unused: Mapping[str, object],
) -> None:
    """Run pass@k for template ``file`` on the problems ``data_path`` and print the report.

    ``unused`` maps each accuracy-only option to whether it was given. Raises UsageError
    naming the given ones (pass@k would ignore them), and what
    :func:`~promptkit.evaluate.run_pass_at_k` raises.
    """
    from ._files import load_prompt
    from .evaluate import (
        PassAtKOptions,
        SandboxLimits,
        parse_ks,
        pass_at_k_markdown,
        run_pass_at_k,
    )

    if any(unused.values()):
        raise UsageError(f"pass@k does not use {', '.join(k for k, v in unused.items() if v)}")
    prompt = load_prompt(file)
    options = PassAtKOptions(
        ks=tuple(parse_ks(ks)),
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        samples_file=samples_file,
        unsafe_exec=unsafe_exec,
        limits=SandboxLimits(timeout_s=exec_timeout),
    )
    generator = None
    if not samples_file:
        backend = backend_for(backend_spec, prompt, backend_options)
        generator = with_cache(backend, cache, cache_size)
    out = out_dir or f"eval-{prompt.name or Path(file).stem}"
    run, written = run_pass_at_k(prompt, data_path, backend=generator, options=options, out=out)
    click.echo(pass_at_k_markdown(run))
    click.echo(f"wrote {', '.join(str(p) for p in written)}")
