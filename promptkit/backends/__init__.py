"""Backends: one interface to every model, resolved from a spec string by :func:`get_backend`.

Backends that need heavy libraries (torch, transformers, openai) are imported only when a spec
asks for them, so ``import promptkit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

from ..errors import ConfigurationError
from ._base import (
    Backend,
    Capabilities,
    Completion,
    GenerationConfig,
    Message,
    PromptInput,
    Usage,
)
from ._scripted import Request, ScriptedBackend
from ._tool_calls import FunctionCall, ToolChoice, ToolSpec

__all__ = [
    "Backend",
    "Capabilities",
    "Completion",
    "FunctionCall",
    "GenerationConfig",
    "Message",
    "PromptInput",
    "Request",
    "ScriptedBackend",
    "ToolChoice",
    "ToolSpec",
    "Usage",
    "available_backends",
    "get_backend",
]

ENTRY_POINT_GROUP = "promptkit.backends"


class _Builtin(NamedTuple):
    module: str  # where the factory lives (imported on first use)
    factory: str  # a callable (arg: str, **options) -> Backend
    extra: str | None  # the pip extra that installs its dependencies
    usage: str  # the spec's shape, for error messages


_BUILTIN: dict[str, _Builtin] = {
    "scripted": _Builtin(
        "promptkit.backends._scripted", "from_spec", None, "scripted[:REPLIES.json]"
    ),
    "hf": _Builtin("promptkit.backends._hf", "from_spec", "local", "hf:NAME_OR_FOLDER"),
    "scratch": _Builtin(
        "promptkit.backends.scratch._spec", "from_spec", "local", "scratch:MODEL_FOLDER"
    ),
    "openai": _Builtin("promptkit.backends._openai", "from_spec", "openai", "openai:MODEL"),
    "azure": _Builtin(
        "promptkit.backends._openai", "azure_from_spec", "openai", "azure:DEPLOYMENT"
    ),
}


def available_backends() -> dict[str, str]:
    """Every backend name that :func:`get_backend` knows, with its spec shape."""
    from importlib.metadata import entry_points

    names = {name: b.usage for name, b in _BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, f"{ep.name}[:ARG] (plugin {ep.value})")
    return names


DEFAULT_SPEC = "scratch"  # promptkit-mini, shipped in the package


def get_backend(spec: str | None = None, **options: Any) -> Backend:
    """Build a backend from a spec string such as ``"scripted"`` or ``"hf:gpt2"``.

    Without a spec: ``$PROMPTKIT_BACKEND``, else the shipped promptkit-mini (``scratch``).

    The part before the first ``:`` names the backend, the rest is its argument (a model name,
    path or deployment). ``options`` go to the backend's constructor. Third-party backends
    register a factory under the ``promptkit.backends`` entry-point group.

    Raises ConfigurationError for an unknown name or a backend whose dependencies are not
    installed (naming the extra to install).
    """
    if spec is None:
        import os

        spec = os.environ.get("PROMPTKIT_BACKEND") or DEFAULT_SPEC
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError(
            f"a backend spec must be a non-empty string such as 'scripted', got {spec!r}"
        )
    name, _, arg = spec.strip().partition(":")
    builtin = _BUILTIN.get(name)
    if builtin is not None:
        try:
            module = importlib.import_module(builtin.module)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            extra = f"pip install 'promptkit[{builtin.extra}]'" if builtin.extra else ""
            raise ConfigurationError(
                f"backend {name!r} needs {missing!r}, which is not installed; {extra}".rstrip("; ")
            ) from exc
        factory = getattr(module, builtin.factory)
    else:
        from importlib.metadata import entry_points

        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not matches:
            known = ", ".join(sorted(available_backends().values()))
            raise ConfigurationError(f"unknown backend {name!r} in spec {spec!r}; known: {known}")
        factory = matches[0].load()
    backend = factory(arg, **options)
    if not isinstance(backend, Backend):
        raise ConfigurationError(
            f"backend factory for {name!r} returned {type(backend).__name__}, not a Backend"
        )
    return backend
