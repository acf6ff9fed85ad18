"""Models shipped inside the package: promptkit-mini (see ``promptkit train --preset mini``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MINI", "mini_path"]

MINI = Path(__file__).resolve().parent / "mini"


def mini_path() -> Path | None:
    """The folder of the shipped promptkit-mini checkpoint, or None when this copy has none."""
    present = all((MINI / name).is_file() for name in ("config.json", "model.safetensors"))
    return MINI if present else None
