"""Checks of the options the built-in backends' factories take (``get_backend``'s keyword
arguments): a wrong one is a ConfigurationError that names the option, what it takes and how
to fix it, instead of a TypeError or a value silently read as something else (the command
line's ``--backend-option`` gives them as JSON or text). Values of text options are never
repeated in a message, since some of them are secrets."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigurationError

__all__ = ["check_device", "check_known", "flag", "seconds", "text", "whole"]


def check_known(backend: str, unknown: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """Raise ConfigurationError when ``unknown`` (the options a factory did not take) is not
    empty, naming them and the ``accepted`` ones."""
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for {backend}: {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(sorted(accepted))}"
        )


def flag(backend: str, name: str, value: Any) -> bool:
    """``value`` when it is True or False (a string such as ``"no"`` is not)."""
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{backend}: {name} must be true or false, got {type(value).__name__} {value!r:.40}"
        )
    return value


def whole(backend: str, name: str, value: Any, minimum: int) -> int:
    """``value`` when it is a whole number of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"{backend}: {name} must be a whole number >= {minimum}, got {value!r:.40}"
        )
    return value


def seconds(backend: str, name: str, value: Any) -> float:
    """``value`` as a float when it is a finite number of seconds above 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{backend}: {name} must be a number of seconds above 0, got {value!r:.40}"
        )
    return float(value)


def text(backend: str, name: str, value: Any) -> str | None:
    """``value`` when it is text or None (the message never repeats the value)."""
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{backend}: {name} must be text, got {type(value).__name__}")
    return value


def check_device(backend: str, device: str | None) -> None:
    """Raise ConfigurationError unless ``device`` (a PyTorch device string, or None for the
    backend's default) names a device this machine has."""
    if device is None:
        return
    import torch

    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigurationError(
            f"{backend}: device {device!r} is not a device PyTorch knows; use cpu, cuda, "
            "cuda:N or mps"
        ) from None
    if chosen.type == "cuda":
        present = torch.cuda.is_available() and (
            chosen.index is None or chosen.index < torch.cuda.device_count()
        )
    else:
        present = chosen.type == "cpu" or (
            chosen.type == "mps" and torch.backends.mps.is_available()
        )
    if not present:
        raise ConfigurationError(
            f"{backend}: device {device!r} is not available here (this PyTorch, "
            f"{torch.__version__}, sees {'a GPU' if torch.cuda.is_available() else 'no GPU'}); "
            "use device='cpu'"
        )
