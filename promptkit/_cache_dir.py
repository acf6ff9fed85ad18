"""promptkit's cache directory, shared by the response cache and the model cache (a module of
its own, so the model registry needs nothing of the response cache or the backends)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """promptkit's cache directory (responses, pulled models): ``$PROMPTKIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/promptkit``, else ``~/.cache/promptkit``."""
    folder = os.environ.get("PROMPTKIT_CACHE_DIR")
    if folder:
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "promptkit"
