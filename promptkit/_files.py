"""Template files (``.prompty``): load them into typed :class:`~promptkit.Prompt` s and save back.

A file is YAML front matter between ``---`` lines and a Jinja2 body. Prompty's keys (name,
description, model, inputs, outputs, sample, template) keep their meaning; promptkit's additions
live beside them: ``examples`` (``[{input: {...}, output: ...}]``), ``output`` (``labels: [...]``,
``type: integer|number|boolean|string|array``, ``regex: ...``, ``lark: ...`` or
``schema: {...}``), ``shots`` and
``format_instructions``. Unknown keys are kept (``prompt.metadata``) and written back on save.

In the body, the ``system:`` block is the task instruction, the last ``user:`` block the query
template, and any blocks between them fixed turns. A body without role lines is one query
template (completion style unless ``model.api`` says chat).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from . import _front_matter as front_matter
from . import _prompty as prompty
from ._body import body_parts
from ._conversation import ThreadSlot
from ._prompt import Example, Prompt, Style, TemplateFormat
from ._references import (
    check_model_references,
    read_confined,
    resolve_references,
)
from ._template_folder import split_front_matter
from .errors import PromptkitError, TemplateError

__all__ = [
    "build_prompt",
    "bundled_templates",
    "file_problems",
    "load_prompt",
    "parse_prompty",
    "save_prompt",
    "split_front_matter",
]

# Keys that become parts of the Prompt; every other key is kept in ``prompt.metadata``.
_BUILT_KEYS = {
    "inputSchema",
    "name",
    "description",
    "model",
    "inputs",
    "outputs",
    "examples",
    "output",
    "shots",
    "format_instructions",
}


def bundled_templates() -> dict[str, Path]:
    """The templates that ship with promptkit: name -> path."""
    here = Path(__file__).resolve().parent
    for folder in (here / "_bundled_templates", here.parent / "templates"):
        if folder.is_dir():
            return {p.stem: p for p in sorted(folder.glob("*.prompty"))}
    return {}


def resolve_template_path(path: str | os.PathLike[str]) -> Path:
    """A file path, or the name of a bundled template; raises TemplateError if neither."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    bundled = bundled_templates()
    if str(path) in bundled:
        return bundled[str(path)]
    names = ", ".join(bundled) or "none found"
    raise TemplateError(
        f"no template file {str(path)!r} (not a file, and not a bundled template; bundled: {names})"
    )


@dataclass
class ParsedFile:
    """A template file split into parts, with line numbers, before building the Prompt."""

    path: str
    front: dict[str, Any]
    body: str
    body_line: int  # file line of the body's first line
    # line of each top-level key, input ("inputs.NAME") and example ("examples.INDEX")
    key_lines: dict[str, int] = field(default_factory=dict)


def parse_prompty(text: str, path: str = "<string>") -> ParsedFile:
    """Split a template file into front matter (parsed YAML) and body; errors carry lines."""
    import yaml

    try:
        yaml_text, body, body_line = split_front_matter(text)
    except TemplateError as exc:
        raise TemplateError(exc.reason, source=path, line=exc.line) from None
    if yaml_text is None:
        return ParsedFile(path, {}, body, body_line)
    try:
        node = yaml.compose(yaml_text, Loader=yaml.SafeLoader)
        _check_yaml_size(node, path)
        front = yaml.safe_load(yaml_text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise TemplateError(
            f"invalid YAML front matter: {problem}", source=path, line=line
        ) from None
    if not isinstance(front, dict):
        raise TemplateError(
            "front matter must be a YAML mapping of keys to values", source=path, line=2
        )
    key_lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_lines[str(key_node.value)] = key_node.start_mark.line + 2
            if key_node.value == "inputs" and isinstance(value_node, yaml.MappingNode):
                for input_key, _ in value_node.value:
                    key_lines[f"inputs.{input_key.value}"] = input_key.start_mark.line + 2
            if key_node.value == "examples" and isinstance(value_node, yaml.SequenceNode):
                for index, item in enumerate(value_node.value):
                    key_lines[f"examples.{index}"] = item.start_mark.line + 2
    return ParsedFile(path, front, body, body_line, key_lines)


_MAX_YAML_NODES = 100_000  # front matter values, aliases counted each time they are used


def _check_yaml_size(node: Any, path: str) -> None:
    """Refuse front matter whose aliases (``*name``) expand past _MAX_YAML_NODES values (a
    "billion laughs" file would otherwise exhaust the load)."""
    count = 0
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        count += 1
        if count > _MAX_YAML_NODES:
            raise TemplateError(
                f"the front matter expands to more than {_MAX_YAML_NODES:,} values "
                "(through YAML aliases?); write it out plainly",
                source=path,
                line=2,
            )
        if isinstance(current.value, list):
            for item in current.value:
                stack.extend(item if isinstance(item, tuple) else (item,))


def load_prompt(
    path: str | os.PathLike[str],
    *,
    file_root: str | os.PathLike[str] | None = None,
    allow_env: Collection[str] = (),
) -> Prompt[Any]:
    """Load a ``.prompty`` template file (or a bundled template by name) as a typed Prompt.

    ``${file:...}`` references may read only inside ``file_root`` (default: the template's own
    folder); ``${env:...}`` references only in the connection settings under ``model:``, or for
    the variable names in ``allow_env`` (see :mod:`promptkit._references`).

    Raises TemplateError (with file and line) for a missing or malformed file, an unknown
    template format, an undeclared variable, an unsupported schema or a refused reference.
    """
    file = resolve_template_path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read template file: {exc}", source=str(file)) from None
    return prompt_from_text(
        text, source=str(file), folder=file.parent, file_root=file_root, allow_env=allow_env
    )


def prompt_from_text(
    text: str,
    *,
    source: str = "<string>",
    folder: Path | None = None,
    file_root: str | os.PathLike[str] | None = None,
    allow_env: Collection[str] = (),
) -> Prompt[Any]:
    """Build a Prompt from the text of a template file (``folder``: where its ``${file:...}``
    paths start, the current folder by default)."""
    parsed = parse_prompty(text.replace("\r\n", "\n"), source)
    return build_prompt(parsed, folder or Path.cwd(), file_root=file_root, allow_env=allow_env)


def build_prompt(
    parsed: ParsedFile,
    folder: Path,
    *,
    file_root: str | os.PathLike[str] | None = None,
    allow_env: Collection[str] = (),
) -> Prompt[Any]:
    """Build the Prompt of a parsed template file (``folder`` resolves ``${file:...}`` within
    ``file_root``, by default ``folder`` itself). Raises the first problem found (TemplateError
    with its line, ConfigurationError, InputValidationError)."""
    prompt = _build(
        _with_base(parsed, folder),
        folder,
        Path(file_root or folder),
        _names(allow_env),
        front_matter.Steps(),
    )
    assert prompt is not None  # Steps that raise always build one
    return prompt


def file_problems(
    parsed: ParsedFile,
    folder: Path,
    *,
    file_root: str | os.PathLike[str] | None = None,
    allow_env: Collection[str] = (),
) -> tuple[list[PromptkitError], Prompt[Any] | None, bool]:
    """Every problem :func:`build_prompt` can find, each step run on its own; the Prompt built
    without the file's examples, for the checker to test each example and the sample (when the
    body cannot be built, a stand-in with an empty body and the file's types; None when even
    that cannot be); and whether that Prompt has the file's own body."""
    steps = front_matter.Steps(keep=True)
    based = steps.run(lambda: _with_base(parsed, folder), parsed)
    prompt = _build(based, folder, Path(file_root or folder), _names(allow_env), steps)
    return steps.problems, prompt, steps.own_body


_MAX_BASES = 8  # how many ``base:`` files one template may stand on


def _with_base(parsed: ParsedFile, folder: Path) -> ParsedFile:
    """The file with the front matter of its ``base:`` file (Prompty 1) under its own: keys it
    lacks come from the base, ``model`` is merged one level deep (its own settings win). The
    base is a file in the template's own folder, itself maybe standing on another.
    Raises TemplateError for a base that cannot load, a cycle or more than _MAX_BASES bases."""
    front, line = dict(parsed.front), parsed.key_lines.get("base")
    seen: list[str] = []
    while "base" in front:
        name = front.pop("base")
        if not isinstance(name, str) or name in seen or len(seen) == _MAX_BASES:
            why = "is not a file name" if not isinstance(name, str) else "is a cycle or too deep"
            raise TemplateError(
                f"base {name!r} {why}; name a .prompty file in the template's folder "
                f"(at most {_MAX_BASES} bases deep)",
                source=parsed.path,
                line=line,
            )
        seen.append(name)
        data = read_confined(name, folder, folder, f"base {name!r}", parsed.path, line)[1]
        try:
            base = parse_prompty(data.decode("utf-8-sig").replace("\r\n", "\n"), name).front
        except (TemplateError, UnicodeDecodeError) as exc:
            raise TemplateError(
                f"base {name!r} does not load: {exc}", source=parsed.path, line=line
            ) from None
        own_model, base_model = front.get("model"), base.get("model")
        front = {**base, **front}
        if isinstance(own_model, dict) and isinstance(base_model, dict):
            front["model"] = {**base_model, **own_model}
            for key, value in base_model.items():
                if isinstance(value, dict) and isinstance(own_model.get(key), dict):
                    front["model"][key] = {**value, **own_model[key]}
        if "base" in base:
            front["base"] = base["base"]
        else:
            front.pop("base", None)
    lines = {key: parsed.key_lines.get(key, line or 1) for key in front}
    lines.update(parsed.key_lines)
    return ParsedFile(parsed.path, front, parsed.body, parsed.body_line, lines)


def _names(allow_env: Collection[str]) -> frozenset[str]:
    """The variable names of ``allow_env`` (one name given as a string is that name)."""
    return frozenset([allow_env] if isinstance(allow_env, str) else allow_env)


def _build(
    parsed: ParsedFile,
    folder: Path,
    file_root: Path,
    allow_env: frozenset[str],
    steps: front_matter.Steps,
) -> Prompt[Any] | None:
    src, lines = parsed.path, parsed.key_lines
    model = parsed.front.get("model") or {}
    if isinstance(model, str):
        model = {"id": model}  # Prompty 2's shorthand ``model: gpt-4o``
    if not isinstance(model, dict):
        steps.run(
            _fail(TemplateError("'model' must be a mapping", source=src, line=lines.get("model"))),
            None,
        )
        model = {}
    # model.* is kept as written: its connection settings are read when the backend is made.
    response_format, checked_model = prompty.split_response_format(model)
    steps.run(
        lambda: check_model_references(checked_model, source=src, line=lines.get("model")), None
    )
    front = _resolved_front(parsed, folder, file_root, allow_env, steps)
    declared_inputs = prompty.declared_inputs(front)
    fmt: TemplateFormat = steps.run(
        lambda: prompty.template_format(front, src, lines.get("template")), "jinja2"
    )
    style = steps.run(lambda: _style(model, src, lines.get("model")), None)
    threads = prompty.thread_inputs(declared_inputs)
    parts = steps.run(lambda: body_parts(parsed.body, parsed.body_line, src, threads), None)
    slots = threads | {t.name for t in (parts or {}).get("turns", ()) if isinstance(t, ThreadSlot)}
    input_type = steps.run(
        lambda: front_matter.input_type(
            declared_inputs, front.get("sample"), src, lines, steps, threads=slots
        ),
        None,
    )
    output_type = steps.run(
        lambda: (
            prompty.response_format_type(
                response_format,
                lambda value: _resolved(parsed, "model", value, folder, file_root, allow_env),
                src,
                lines.get("model"),
            )
            if response_format is not None and not ({"output", "outputs"} & front.keys())
            else front_matter.output_type(front, src, lines)
        ),
        str,
    )
    examples: list[Example] = steps.run(
        lambda: front_matter.examples_of(front.get("examples", []), src, lines.get("examples")), []
    )
    shots = steps.run(lambda: _shots(front.get("shots"), src, lines.get("shots")), None)
    config = steps.run(
        lambda: front_matter.generation_config(
            prompty.model_options(model, src, lines.get("model")), src, lines.get("model")
        ),
        None,
    )
    metadata = {k: v for k, v in front.items() if k not in _BUILT_KEYS}
    if parsed.front.get("model") is not None:
        metadata["model"] = model
    prompt = None
    if parts is not None:
        prompt = steps.run(
            lambda: Prompt(
                query=parts["query"],
                instruction=parts["instruction"],
                turns=parts["turns"],
                input_type=input_type,
                output_type=output_type,
                examples=[] if steps.keep else examples,
                style=style or ("completion" if parts["plain"] else "chat"),
                shots=None if steps.keep else shots,
                format_instructions=bool(front.get("format_instructions", True)),
                config=config,
                name=front.get("name") or Path(src).stem,
                description=front.get("description"),
                metadata=metadata,
                first_lines=parts["lines"],
                source=src,
                template_folder=folder,
                template_format=fmt,
            ),
            None,
        )
    if prompt is None and steps.keep and input_type is not None:
        steps.own_body = False
        prompt = steps.run(
            lambda: Prompt(
                query="", input_type=input_type, output_type=output_type, metadata=metadata
            ),
            None,
        )
    return prompt


def _fail(error: PromptkitError) -> Callable[[], None]:
    def raise_it() -> None:
        raise error

    return raise_it


def _shots(shots: Any, source: str, line: int | None) -> int | None:
    if shots is not None and (not isinstance(shots, int) or isinstance(shots, bool)):
        raise TemplateError(
            f"'shots' must be a whole number, got {shots!r}", source=source, line=line
        )
    return shots


def _resolved_front(
    parsed: ParsedFile,
    folder: Path,
    file_root: Path,
    allow_env: frozenset[str],
    steps: front_matter.Steps,
) -> dict[str, Any]:
    """The front matter but ``model``, its references resolved (errors at each key's line; a
    key whose references fail is left out, an input keeps its spec as written)."""
    front: dict[str, Any] = {}
    for key, value in parsed.front.items():
        if key == "model":
            continue
        if key == "inputs" and isinstance(value, dict):
            front[key] = {
                name: steps.run(
                    partial(
                        _resolved, parsed, f"inputs.{name}", spec, folder, file_root, allow_env
                    ),
                    spec,
                )
                for name, spec in value.items()
            }
            continue
        resolve = partial(_resolved, parsed, str(key), value, folder, file_root, allow_env)
        resolved = steps.run(resolve, _LEFT_OUT)
        if resolved is not _LEFT_OUT:
            front[key] = resolved
    return front


_LEFT_OUT = object()


def _resolved(
    parsed: ParsedFile,
    where: str,
    value: Any,
    folder: Path,
    file_root: Path,
    allow_env: frozenset[str],
) -> Any:
    line = parsed.key_lines.get(where) or parsed.key_lines.get(where.partition(".")[0])
    return resolve_references(
        value,
        folder=folder,
        file_root=file_root,
        allow_env=allow_env,
        source=parsed.path,
        line=line,
        where=where,
    )


def _style(model: dict[str, Any], source: str, line: int | None) -> Style | None:
    api = model.get("api")
    if api in (None, "chat", "completion"):
        return api
    raise TemplateError(
        f"model.api must be 'chat' or 'completion', got {api!r}", source=source, line=line
    )


def save_prompt(prompt: Prompt[Any], path: str | os.PathLike[str]) -> Path:
    """Write a Prompt as a ``.prompty`` file that :func:`load_prompt` reads back identically."""
    from ._filewriter import dump_prompty

    target = Path(path)
    target.write_text(dump_prompty(prompt), encoding="utf-8")
    return target
