"""``${env:...}`` and ``${file:...}`` references in a template file's front matter, confined.

A template file may come from anyone, so its references are held to what a reader expects:

- ``${file:PATH}`` (a whole value) loads JSON or YAML from a *regular* file of at most
  :data:`MAX_DATA_FILE_BYTES`, named by a path relative to the template's folder that stays
  inside the file root: the template's folder, unless ``load_prompt(..., file_root=DIR)`` widens
  it (for ``${file:../data/x.json}``). No absolute paths, no ``..`` or symlink out of the root,
  no devices or fifos. A file's contents are data: references inside it are not resolved.
- ``${env:VAR}`` / ``${env:VAR:default}`` is read only in the connection settings under
  ``model:`` (``model.configuration`` or ``model.connection``), and only when the backend is made,
  so a secret never reaches a prompt, a sample, an example or ``prompt.metadata``. Elsewhere an
  environment reference is an error unless the caller allows that name
  (``load_prompt(..., allow_env=["NAME"])``).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, TemplateError

__all__ = [
    "MAX_DATA_FILE_BYTES",
    "check_model_references",
    "read_confined",
    "resolve_env",
    "resolve_references",
]

MAX_DATA_FILE_BYTES = 2_000_000  # the largest file a ${file:...} reference may load
_REFERENCE = re.compile(r"\$\{(env|file):([^}]*)\}")
_CONNECTION_KEYS = ("configuration", "connection")


def resolve_references(
    value: Any,
    *,
    folder: Path,
    file_root: Path,
    allow_env: Collection[str],
    source: str,
    line: int | None,
    where: str,
) -> Any:
    """``value`` (front matter outside ``model:``) with its references resolved: files loaded
    within ``file_root``, environment variables only those named in ``allow_env``.

    ``where`` names the key for messages (``sample``, ``inputs.text``...). Raises TemplateError
    for a refused reference or an unreadable file, ConfigurationError for an unset variable.
    """
    if isinstance(value, dict):
        return {
            k: resolve_references(
                v,
                folder=folder,
                file_root=file_root,
                allow_env=allow_env,
                source=source,
                line=line,
                where=where,
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            resolve_references(
                v,
                folder=folder,
                file_root=file_root,
                allow_env=allow_env,
                source=source,
                line=line,
                where=where,
            )
            for v in value
        ]
    if not isinstance(value, str):
        return value
    whole = _REFERENCE.fullmatch(value.strip())
    if whole and whole.group(1) == "file":
        return _read_data_file(whole.group(2).strip(), folder, file_root, source, line)

    def substitute(match: re.Match[str]) -> str:
        kind, body = match.groups()
        if kind == "file":
            raise TemplateError(
                f"${{file:{body}}} must be a whole value, not part of a string",
                source=source,
                line=line,
            )
        name = body.partition(":")[0]
        if name not in allow_env:
            raise TemplateError(
                f"${{env:{name}}} in {where!r}: environment references are read only in the "
                "connection settings under 'model:' (elsewhere a secret could reach the prompt); "
                f"write the value itself, or allow this name with "
                f"load_prompt(..., allow_env=[{name!r}])",
                source=source,
                line=line,
            )
        return _env_value(body, source)

    return _REFERENCE.sub(substitute, value)


def check_model_references(model: Mapping[str, Any], *, source: str, line: int | None) -> None:
    """Refuse references under ``model:`` that will never be read: ``${file:...}`` anywhere,
    ``${env:...}`` outside the connection settings. Raises TemplateError."""
    for key, value in model.items():
        connection = key in _CONNECTION_KEYS
        for kind, body in _references_in(value):
            if kind == "file" or not connection:
                raise TemplateError(
                    f"${{{kind}:{body}}} in 'model.{key}': under 'model:' only the connection "
                    "settings ('model.configuration' or 'model.connection') take references, "
                    "and only ${env:VAR}; write the value itself",
                    source=source,
                    line=line,
                )


def resolve_env(value: Any, source: str) -> Any:
    """A connection setting with its ``${env:VAR}`` / ``${env:VAR:default}`` read now.
    Raises ConfigurationError for an unset variable without a default or a ``${file:...}``."""
    if isinstance(value, dict):
        return {k: resolve_env(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, source) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        kind, body = match.groups()
        if kind == "file":
            raise ConfigurationError(
                f"{source}: ${{file:{body}}} in the connection settings: they take "
                "${env:VAR} references only"
            )
        return _env_value(body, source)

    return _REFERENCE.sub(substitute, value)


def _references_in(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [ref for v in value.values() for ref in _references_in(v)]
    if isinstance(value, list):
        return [ref for v in value for ref in _references_in(v)]
    if isinstance(value, str):
        return [(m.group(1), m.group(2)) for m in _REFERENCE.finditer(value)]
    return []


def _env_value(body: str, source: str) -> str:
    name, has_default, default = body.partition(":")
    if name in os.environ:
        return os.environ[name]
    if has_default:
        return default
    raise ConfigurationError(
        f"{source}: environment variable {name!r} is not set; set it, or give a default "
        f"as ${{env:{name}:default}}"
    )


def _read_data_file(
    reference: str, folder: Path, file_root: Path, source: str, line: int | None
) -> Any:
    """Load the JSON/YAML file a ``${file:...}`` names, confined to ``file_root``."""
    import yaml

    shown = f"${{file:{reference}}}"
    target, data = read_confined(reference, folder, file_root, shown, source, line)
    try:
        text = data.decode("utf-8")
        return json.loads(text) if target.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise TemplateError(
            f"{shown} is not valid UTF-8 JSON/YAML: {exc}", source=source, line=line
        ) from None


def read_confined(
    reference: str, folder: Path, file_root: Path, shown: str, source: str, line: int | None
) -> tuple[Path, bytes]:
    """The path and bytes of the file ``reference`` names relative to ``folder``: a regular
    file of at most MAX_DATA_FILE_BYTES inside ``file_root`` (``shown`` names the reference in
    errors). Raises TemplateError for an absolute path, a path out of the root, or a file that
    is missing, not regular or too large."""
    if Path(reference).is_absolute():
        raise TemplateError(
            f"{shown}: absolute paths are not allowed; name the file relative to the "
            f"template's folder ({folder}), and for a file outside that folder, widen the "
            "folder files may be read from with load_prompt(..., file_root=DIR)",
            source=source,
            line=line,
        )
    root = file_root.resolve()
    target = (folder / reference).resolve()  # symlinks and '..' resolved before the check
    if not target.is_relative_to(root):
        raise TemplateError(
            f"{shown} resolves to {target}, outside {root}, the folder template files may read "
            "from; move the file there, or widen it with load_prompt(..., file_root=DIR)",
            source=source,
            line=line,
        )
    return target, _read_regular_file(target, shown, source, line)


def _read_regular_file(path: Path, shown: str, source: str, line: int | None) -> bytes:
    """The bytes of a regular file of at most MAX_DATA_FILE_BYTES; opened without blocking, so
    a fifo cannot hang the load, and checked on the open descriptor."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise TemplateError(
            f"cannot read {shown} ({path}): {exc.strerror}", source=source, line=line
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise TemplateError(
                f"{shown} ({path}) is not a regular file (a device, fifo or folder); "
                "name a JSON or YAML file",
                source=source,
                line=line,
            )
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read(MAX_DATA_FILE_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(data) > MAX_DATA_FILE_BYTES:
        raise TemplateError(
            f"{shown} ({path}) is over the limit of {MAX_DATA_FILE_BYTES:,} bytes for files a "
            "template loads; make it smaller",
            source=source,
            line=line,
        )
    return data
