"""The ``promptkit pull`` and ``promptkit models`` commands (registered on the ``promptkit``
group in :mod:`promptkit.cli`): the known real models of :mod:`promptkit.models._registry`,
fetched into the model cache and listed."""

from __future__ import annotations

import json

import click

__all__ = ["models_command", "pull_command"]


@click.command("pull")
@click.argument("name")
def pull_command(name: str) -> None:
    """Fetch a known real model into the model cache (see `promptkit models`); prints its path."""
    from .models._registry import lookup, pull

    path = pull(name)
    known = lookup(name)
    click.echo(f"{known.name if known else name}: {path}")


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def models_command(as_json: bool) -> None:
    """List the known real models (pulled or not, size, sha256, path) and the adapters shipped
    for them."""
    from .models._registry import SHIPPED_ADAPTERS, ready, status

    rows = [
        {
            "kind": "model",
            "name": row.model.name,
            "aliases": list(row.model.aliases),
            "pulled": row.pulled,
            "size": row.model.size,
            "sha256": row.model.sha256,
            "path": str(row.path),
            "license": row.model.license,
            "description": row.model.description,
        }
        for row in status()
    ]
    rows += [
        {
            "kind": "adapter",
            "name": adapter.name,
            "base": adapter.base,
            "ready": ready(adapter.name),
            "path": str(adapter.folder),
            "description": adapter.description,
        }
        for adapter in SHIPPED_ADAPTERS
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for item in status():
        model = item.model
        state = "pulled" if item.pulled else f"not pulled (promptkit pull {model.name})"
        aliases = f" (also: {', '.join(model.aliases)})" if model.aliases else ""
        click.echo(f"{model.name}{aliases}  {model.size / 1e6:.1f} MB  {state}")
        click.echo(f"    {model.description}; {model.license}")
        click.echo(f"    {item.path}  sha256 {model.sha256}")
    for adapter in SHIPPED_ADAPTERS:
        state = "ready" if ready(adapter.name) else f"needs promptkit pull {adapter.base}"
        click.echo(f"{adapter.name}  adapter of {adapter.base}, shipped  {state}")
        click.echo(f"    {adapter.description}")
        click.echo(f"    {adapter.folder}")
