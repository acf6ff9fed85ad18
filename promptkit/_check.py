"""Check a template file and report every problem found, each with its line number."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._conversation import history_loop_names
from ._files import (
    ParsedFile,
    file_problems,
    parse_prompty,
    resolve_template_path,
    split_front_matter,
)
from ._mustache import MustacheTemplate
from ._prompt import Example, Prompt
from ._prompty import sample_inputs, template_format
from ._templating import CompiledTemplate, split_roles
from .errors import PromptkitError, TemplateError

__all__ = ["Problem", "check_template"]


@dataclass(frozen=True)
class Problem:
    """One finding: where it is, how bad, and what is wrong."""

    path: str
    line: int | None
    severity: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.severity}: {self.message}"


def check_template(
    path: str | os.PathLike[str],
    *,
    file_root: str | os.PathLike[str] | None = None,
    allow_env: Collection[str] = (),
) -> list[Problem]:
    """Every problem in a template file, in line order: bad YAML, template syntax, undeclared
    variables, declared but unused inputs, refused ``${file:...}``/``${env:...}`` references,
    invalid output schemas, each invalid example, a sample that does not fit the inputs or does
    not render. An empty list means the file is sound. ``file_root`` and ``allow_env`` are
    those of :func:`~promptkit.load_prompt`.
    """
    try:
        file = resolve_template_path(path)
        text = file.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except (PromptkitError, OSError, UnicodeDecodeError) as exc:
        return [Problem(str(path), None, "error", str(exc))]
    source = str(file)
    findings = _Findings(source)
    try:
        parsed = parse_prompty(text, source)
    except TemplateError as exc:  # the front matter cannot be read; the body still can
        findings.add(exc)
        try:
            _, body, body_line = split_front_matter(text)
        except TemplateError:
            return findings.sorted()
        _check_body(ParsedFile(source, {}, body, body_line), findings)
        return findings.sorted()
    used = _check_body(parsed, findings)
    inputs = parsed.front.get("inputs")
    if isinstance(inputs, dict):
        conversations = set(history_loop_names(parsed.body))  # inputs of their own
        for name in sorted(set(used) - set(inputs) - conversations, key=lambda n: used[n]):
            findings.error(
                used[name],
                f"the body uses {name!r}, which is not a declared input; add it under 'inputs'",
            )
        for name in inputs:
            if name not in used:
                findings.warning(
                    parsed.key_lines.get(f"inputs.{name}"),
                    f"input {name!r} is declared but never used in the body",
                )
    problems, prompt, own_body = file_problems(
        parsed, file.parent, file_root=file_root, allow_env=allow_env
    )
    for problem in problems:
        findings.add(problem)
    if prompt is not None:
        _check_examples(prompt, parsed, findings)
        _check_sample(prompt, parsed, findings, render=own_body)
    return findings.sorted()


class _Findings:
    """The problems found so far, each reported once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def error(self, line: int | None, message: str) -> None:
        self._keep(Problem(self.source, line, "error", message))

    def warning(self, line: int | None, message: str) -> None:
        self._keep(Problem(self.source, line, "warning", message))

    def add(self, error: PromptkitError, line: int | None = None, prefix: str = "") -> None:
        if isinstance(error, TemplateError):
            self.error(error.line or line, prefix + error.reason)
        else:
            self.error(line, prefix + str(error))

    def _keep(self, problem: Problem) -> None:
        same_line = [p for p in self.problems if p.line == problem.line]
        if problem.message.startswith("template uses undefined variable") and any(
            "not a declared input" in p.message for p in self.problems
        ):
            return  # the body check named each undeclared variable already
        if all(p.message != problem.message for p in same_line):
            self.problems.append(problem)

    def sorted(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: p.line or 0)


def _check_body(parsed: ParsedFile, findings: _Findings) -> dict[str, int]:
    """Compile each role block of the body; returns each variable used and its first line."""
    used: dict[str, int] = {}
    folder = Path(parsed.path).parent
    engine: type[CompiledTemplate] = CompiledTemplate
    try:
        segments = split_roles(parsed.body, parsed.body_line)
        if template_format(parsed.front, parsed.path, None) == "mustache":
            engine = MustacheTemplate
    except TemplateError as exc:
        findings.add(exc)
        return used
    for segment in segments:
        try:
            compiled = engine(
                segment.source, name=parsed.path, first_line=segment.line, folder=folder
            )
        except TemplateError as exc:
            findings.add(exc)
            continue
        for name, line in compiled.variable_lines.items():
            used.setdefault(name, line)
    return used


def _check_examples(prompt: Prompt[Any], parsed: ParsedFile, findings: _Findings) -> None:
    """Each example of the file on its own (its input fits the inputs, its output the output
    type), and ``shots`` within their number."""
    examples = parsed.front.get("examples")
    if not isinstance(examples, list):
        return
    shots = parsed.front.get("shots")
    if isinstance(shots, int) and not 0 <= shots <= len(examples):
        findings.error(
            parsed.key_lines.get("shots"),
            f"shots={shots} but the file has {len(examples)} example(s); choose 0..{len(examples)}",
        )
    for index, item in enumerate(examples):
        if not isinstance(item, dict) or set(item) != {"input", "output"}:
            continue  # reported with the file's problems
        line = parsed.key_lines.get(f"examples.{index}", parsed.key_lines.get("examples"))
        try:
            prompt.with_examples([Example(input=item["input"], output=item["output"])])
        except PromptkitError as exc:
            findings.error(line, f"example {index}: {str(exc).removeprefix('example 0 ')}")


def _check_sample(
    prompt: Prompt[Any], parsed: ParsedFile, findings: _Findings, *, render: bool
) -> None:
    """The sample fits the inputs and, with ``render``, renders (which runs the body under
    its limits)."""
    sample = sample_inputs(prompt)
    if sample is None:
        return
    line = parsed.key_lines.get("sample") or parsed.key_lines.get("inputs")
    try:
        prompt.validate_inputs(sample)
    except PromptkitError as exc:
        findings.error(line, f"the sample does not fit the inputs: {exc}")
        return
    if not render:
        return
    try:
        prompt.render(sample)
    except PromptkitError as exc:
        findings.add(exc, line, "the sample does not render: ")
