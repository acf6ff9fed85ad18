"""The options the ``promptkit`` commands share and what they become: a template's inputs,
the backend (by one default rule) and its options, the response cache, shot counts."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .errors import UsageError

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = [
    "backend_for",
    "backend_option",
    "collect_inputs",
    "input_options",
    "read_at",
    "shot_counts",
    "with_cache",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def input_options(function: Any) -> Any:
    """The template FILE argument and the input options (-i, --inputs-json, --sample,
    --shots) of a command that renders a template; see :func:`collect_inputs`."""
    function = click.option(
        "--shots",
        type=click.IntRange(min=0),
        help="Number of demonstrations to show (default: the template's).",
    )(function)
    function = click.option(
        "--sample", is_flag=True, help="Start from the template's sample inputs."
    )(function)
    function = click.option(
        "--inputs-json",
        "inputs_json",
        metavar="JSON",
        help="Inputs as a JSON object (or @path to a JSON file).",
    )(function)
    function = click.option(
        "-i",
        "--input",
        "input_pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="An input value; KEY=@path reads it from a file. Repeatable.",
    )(function)
    return click.argument("file")(function)


# Option names that hold secrets: a command line is seen by every user of the machine (ps) and
# kept in shell histories, so these come from the environment or a template's ${env:VAR}.
_SECRET_WORDS = frozenset(("key", "token", "secret", "password"))


def backend_option(*, template: bool) -> Callable[[_F], _F]:
    """The --backend and --backend-option options of a command that needs a backend (the
    command takes ``backend_spec`` and ``backend_options``); the help states the default rule
    of :func:`backend_for` as it applies to the command."""
    fallback = "the template's model.configuration, else " if template else ""
    spec = click.option(
        "--backend",
        "backend_spec",
        metavar="SPEC",
        help="Backend spec, e.g. hf:gpt2, scratch:DIR or openai:MODEL. Default: "
        f"$PROMPTKIT_BACKEND, else {fallback}SmolLM2-135M-Instruct once pulled (`promptkit "
        "pull smollm2-135m-instruct`), else the shipped promptkit-mini.",
    )
    options = click.option(
        "--backend-option",
        "backend_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="An option of that backend, as get_backend takes it (e.g. prefix_cache_bytes=0, "
        "chat_template=false, device=cpu, timeout=30); VALUE is read as JSON when it parses. "
        "Repeatable.",
    )

    def decorate(function: _F) -> _F:
        return spec(options(function))

    return decorate


def _backend_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """The ``--backend-option KEY=VALUE`` pairs as keyword arguments of ``get_backend``: each
    VALUE read as JSON when it parses (``0``, ``false``, ``30.5``; ``True`` and ``FALSE`` too),
    else kept as text.

    Raises UsageError for a pair without ``=`` or with a KEY that is no Python name, a KEY
    given twice, and a KEY that names a secret (API keys come from the environment).
    """
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep:  # not repeated: it may be a secret given without its KEY=
            raise UsageError(
                "--backend-option takes KEY=VALUE (such as prefix_cache_bytes=0); one was given "
                "without '='"
            )
        if not key.isidentifier():
            raise UsageError(
                f"--backend-option {key!r}=...: the KEY must be an option name such as "
                "prefix_cache_bytes (letters, digits and _)"
            )
        if _SECRET_WORDS.intersection(key.lower().split("_")):
            raise UsageError(
                f"--backend-option {key}: secrets are not taken on the command line, where "
                "other users and shell histories can read them; set the backend's environment "
                "variable (such as OPENAI_API_KEY) or use a template's ${env:VAR}"
            )
        if key in settings:
            raise UsageError(f"--backend-option {key} is given twice; give it once")
        flag = raw.strip().lower()
        settings[key] = flag == "true" if flag in ("true", "false") else _maybe_json(raw)
    return settings


def backend_for(spec: str | None, prompt: Any = None, options: Sequence[str] = ()) -> Backend:
    """The one default-backend rule of every command that needs a backend: --backend when
    given, then $PROMPTKIT_BACKEND, then (for a command with a template) the template's
    model.configuration, then SmolLM2-135M-Instruct when it is pulled, then the shipped
    promptkit-mini. The last two print a one-line note on stderr saying which model answers
    (and, for promptkit-mini, how to get the real one). ``options`` (the --backend-option
    pairs, :func:`_backend_settings`) go to whichever backend the rule picks, over a template's
    own settings.

    Raises UsageError when none applies (a copy of promptkit without promptkit-mini and no
    pulled model) or for a malformed option, and whatever building the backend raises
    (ConfigurationError for a bad spec or an option the backend does not take).
    """
    from .backends import default_backend, get_backend
    from .errors import ConfigurationError

    settings = _backend_settings(options)
    spec = spec or os.environ.get("PROMPTKIT_BACKEND")
    if spec:
        return get_backend(spec, **settings)
    if prompt is not None:
        from ._prompty import backend_from_prompt

        backend = backend_from_prompt(prompt, settings)
        if backend is not None:
            return backend
    try:
        default = default_backend()
    except ConfigurationError as exc:
        declare = ", or declare model.configuration in the template" if prompt is not None else ""
        raise UsageError(f"{exc}{declare}") from None
    given = ", ".join(f"{key}={value!r}" for key, value in settings.items())  # no secrets here
    click.echo(f"{default.note}; with {given}" if given else default.note, err=True)
    return get_backend(default.spec, **settings)


def collect_inputs(
    prompt: Any, pairs: Sequence[str], inputs_json: str | None, sample: bool
) -> dict[str, Any]:
    """The inputs the options give: the template's sample (--sample), then --inputs-json,
    then each -i KEY=VALUE (a value for a non-str input is read as JSON when it parses).

    Raises UsageError for a template without a sample, JSON that is not an object, a pair
    without ``=``, or an @path that cannot be read.
    """
    inputs: dict[str, Any] = {}
    if sample:
        from ._prompty import sample_inputs

        samples = sample_inputs(prompt)
        if samples is None:
            raise UsageError(f"template {prompt.name!r} has no sample inputs; pass -i KEY=VALUE")
        inputs.update(samples)
    if inputs_json:
        text = read_at(inputs_json, "--inputs-json")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--inputs-json is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError("--inputs-json must be a JSON object of input names to values")
        inputs.update(data)
    fields = prompt.input_type.model_fields
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-i expects KEY=VALUE or KEY=@path, got {pair!r}")
        value = read_at(raw, f"-i {key}")
        annotation = fields[key].annotation if key in fields else str
        inputs[key] = value if annotation is str else _maybe_json(value)
    return inputs


def read_at(value: str, what: str) -> str:
    """``value``, or the text of the file it names as ``@path``; raises UsageError naming
    ``what`` when that file cannot be read."""
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what}: cannot read {value[1:]!r}: {exc}") from None


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def with_cache(backend: Any, enabled: bool, size_mb: int = 256) -> Any:
    """The backend behind the response cache, unless disabled."""
    if not enabled:
        return backend
    from ._cache import CachedBackend, ResponseCache

    return CachedBackend(backend, ResponseCache(max_bytes=size_mb * 1024 * 1024))


def shot_counts(text: str) -> list[int]:
    """--shots as a list of counts ("0,1,3"); raises UsageError unless whole numbers >= 0."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--shots takes comma-separated whole numbers, got {text!r}") from None
    if not counts or any(c < 0 for c in counts):
        raise UsageError(f"--shots takes comma-separated whole numbers >= 0, got {text!r}")
    return counts
