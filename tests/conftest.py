from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# pytest-xdist's workers (``-n 2`` in pyproject.toml) share the cores: each gets its share of
# PyTorch's threads, set before any test imports torch (more threads than cores make every
# parallel kernel wait on the others).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))


@pytest.fixture
def write(tmp_path: Path):
    """Write a file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture(autouse=True)
def isolated_response_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch):
    """Each test gets its own response cache (never the user's ~/.cache/promptkit)."""
    monkeypatch.setenv("PROMPTKIT_CACHE_DIR", str(tmp_path_factory.mktemp("response-cache")))


@pytest.fixture(autouse=True)
def offline_models(request: pytest.FixtureRequest, monkeypatch):
    """Fast tests never pull a model (``PROMPTKIT_OFFLINE=1``; their cache directory is the
    temporary one above). Tests marked slow may fetch."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("PROMPTKIT_OFFLINE", "1")


@pytest.fixture(autouse=True)
def leftover_connections_collected(request: pytest.FixtureRequest):
    """After each slow test, the HTTP connections its clients left in reference cycles are
    collected, their ResourceWarning ignored. Otherwise the garbage collector finds one at
    pytest's session end, where ``filterwarnings = error`` turns its ResourceWarning into a
    PytestUnraisableExceptionWarning that fails a run whose tests all passed (seen in two
    ``.ci/run``s: a client socket to one of the local test servers). Slow tests only: a
    collection takes tens of milliseconds."""
    yield
    if request.node.get_closest_marker("slow") is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
