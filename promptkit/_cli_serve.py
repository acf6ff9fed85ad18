"""The ``promptkit serve`` command (registered on the ``promptkit`` group in
:mod:`promptkit.cli`): a backend served as an OpenAI-compatible API under the limits its options
set (:class:`promptkit.server.ServerLimits`)."""

from __future__ import annotations

import socket

import click

from ._cli_options import backend_for, backend_option
from .errors import ConfigurationError, UsageError

__all__ = ["serve_command"]


@click.command("serve")
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
    help="Largest request body in bytes (limit max_body_bytes).",
)
@click.option(
    "--max-prompts",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Most prompts in one /v1/completions request.",
)
@click.option(
    "--max-choices",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Most completions one request asks for (prompts x n).",
)
@click.option(
    "--max-request-tokens",
    type=click.IntRange(min=1),
    default=65_536,
    show_default=True,
    help="Most tokens one request may cost: prompt tokens plus n x max_tokens.",
)
def serve_command(
    backend_spec: str | None,
    backend_options: tuple[str, ...],
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
    max_body: int,
    max_prompts: int,
    max_choices: int,
    max_request_tokens: int,
) -> None:
    """Serve a backend as an OpenAI-compatible API (/v1/chat/completions, /v1/completions).

    SIGINT or SIGTERM stops it within a few seconds, cutting any stream still being generated.
    """
    try:
        from .server import ServerLimits, create_app, serve
    except ImportError as exc:
        raise UsageError(
            f"promptkit serve needs FastAPI and uvicorn ({exc}); pip install 'promptkit[serve]'"
        ) from None
    _check_port(host, port)
    backend = backend_for(backend_spec, options=backend_options)
    limits = ServerLimits(
        max_body_bytes=max_body,
        max_prompts=max_prompts,
        max_choices=max_choices,
        max_request_tokens=max_request_tokens,
    )
    app = create_app(backend, model_name=model_name, api_key=api_key, limits=limits)
    backend.warm_up(lambda line: click.echo(line, err=True))  # before the first request
    click.echo(
        f"serving {backend.name} as {model_name or backend.name!r} on http://{host}:{port}/v1"
        + (" (API key required)" if api_key else ""),
        err=True,
    )
    serve(app, host=host, port=port)


def _check_port(host: str, port: int) -> None:
    """Raises ConfigurationError, before the model loads, when ``host:port`` cannot be bound
    (another server listens there, or the address is not this machine's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc}; choose another --port "
                "(or stop what listens there)"
            ) from None
