"""Backends: one interface to every model, resolved from a spec string by :func:`get_backend`.

Backends that need heavy libraries (torch, transformers, openai) are imported only when a spec
asks for them, so ``import promptkit`` stays light.
"""

from __future__ import annotations

import importlib
import logging
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
    "DefaultBackend",
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
    "default_backend",
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
    "openai": _Builtin("promptkit.backends._openai_spec", "from_spec", "openai", "openai:MODEL"),
    "azure": _Builtin(
        "promptkit.backends._openai_spec", "azure_from_spec", "openai", "azure:DEPLOYMENT"
    ),
}


def available_backends() -> dict[str, str]:
    """Every backend name that :func:`get_backend` knows, with its spec shape."""
    from importlib.metadata import entry_points

    names = {name: b.usage for name, b in _BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, f"{ep.name}[:ARG] (plugin {ep.value})")
    return names


DEFAULT_MODEL = "smollm2-135m-instruct"  # the real model used by default once pulled
DEFAULT_SPEC = "scratch"  # promptkit-mini, shipped in the package: the fallback

_logger = logging.getLogger("promptkit")


class DefaultBackend(NamedTuple):
    """What :func:`get_backend` uses when no spec is given, and the one-line note that says
    which model that is (and, for the fallback, how to get the real one)."""

    spec: str
    note: str
    fallback: bool  # promptkit-mini, because the real model is not pulled


def default_backend() -> DefaultBackend:
    """The default when nothing is configured: SmolLM2-135M-Instruct on the scratch decoder
    when it is in the model cache (``promptkit pull smollm2-135m-instruct``), else the shipped
    promptkit-mini. Never downloads anything (``$PROMPTKIT_BACKEND`` is the caller's to read).

    Raises ConfigurationError when neither is there (a copy of promptkit without
    promptkit-mini), saying how to get the real model.
    """
    from ..models import mini_path
    from ..models._registry import REGISTRY, pulled_path

    (model,) = (known for known in REGISTRY if known.name == DEFAULT_MODEL)
    path = pulled_path(model)
    if path.is_file() and path.stat().st_size == model.size:  # loading verifies its sha256
        spec = f"scratch:{DEFAULT_MODEL}"
        note = (
            f"promptkit: answered by {spec} (the default; --backend or PROMPTKIT_BACKEND "
            "picks another)"
        )
        return DefaultBackend(spec, note, fallback=False)
    get = (
        f"`promptkit pull {DEFAULT_MODEL}` ({model.size / 1e6:.0f} MB) gets a real model, the "
        "default once pulled"
    )
    if mini_path() is None:
        raise ConfigurationError(
            f"no backend configured and no model to fall back on: {get}, or pass a spec "
            "(--backend SPEC, PROMPTKIT_BACKEND, or get_backend(SPEC))"
        )
    note = (
        "promptkit: answered by promptkit-mini, a tiny embedded model that is right only on "
        f"the formats it was trained on; {get}"
    )
    return DefaultBackend(DEFAULT_SPEC, note, fallback=True)


def get_backend(spec: str | None = None, **options: Any) -> Backend:
    """Build a backend from a spec string such as ``"scripted"`` or ``"hf:gpt2"``.

    Without a spec: ``$PROMPTKIT_BACKEND``, else SmolLM2-135M-Instruct when it has been pulled,
    else the shipped promptkit-mini (:func:`default_backend`; the fallback logs a warning on
    the ``promptkit`` logger saying how to get the real model, which Python's logging prints
    on stderr when nothing else is configured).

    The part before the first ``:`` names the backend, the rest is its argument (a model name,
    path or deployment). ``options`` go to the backend's constructor. Third-party backends
    register a factory under the ``promptkit.backends`` entry-point group.

    Raises ConfigurationError for an unknown name or a backend whose dependencies are not
    installed (naming the extra to install).
    """
    if spec is None:
        import os

        spec = os.environ.get("PROMPTKIT_BACKEND")
        if not spec:
            default = default_backend()
            spec = default.spec
            _logger.log(logging.WARNING if default.fallback else logging.INFO, default.note)
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
