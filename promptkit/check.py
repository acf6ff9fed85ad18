"""Check a template file and report every problem found, each with its line number."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from .errors import PromptkitError, TemplateError
from .files import build_prompt, parse_prompty, resolve_template_path
from .templating import CompiledTemplate, split_roles

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


def check_template(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem in a template file: bad YAML, template syntax, undeclared variables,
    declared but unused inputs, invalid output schemas or examples, a sample that does not fit
    the inputs. An empty list means the file is sound.
    """
    try:
        file = resolve_template_path(path)
        text = file.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except (PromptkitError, OSError, UnicodeDecodeError) as exc:
        return [Problem(str(path), None, "error", str(exc))]
    source = str(file)
    try:
        parsed = parse_prompty(text, source)
    except TemplateError as exc:
        return [Problem(source, exc.line, "error", exc.reason)]
    problems: list[Problem] = []
    used: dict[str, int] = {}
    try:
        for segment in split_roles(parsed.body, parsed.body_line):
            try:
                compiled = CompiledTemplate(segment.source, name=source, first_line=segment.line)
            except TemplateError as exc:
                problems.append(Problem(source, exc.line, "error", exc.reason))
                continue
            for name, line in compiled.variable_lines.items():
                used.setdefault(name, line)
    except TemplateError as exc:
        problems.append(Problem(source, exc.line, "error", exc.reason))
    inputs = parsed.front.get("inputs")
    if isinstance(inputs, dict):
        for name in sorted(set(used) - set(inputs), key=lambda n: used[n]):
            problems.append(
                Problem(
                    source,
                    used[name],
                    "error",
                    f"the body uses {name!r}, which is not a declared input; add it under 'inputs'",
                )
            )
        for name in inputs:
            if name not in used:
                problems.append(
                    Problem(
                        source,
                        parsed.key_lines.get(f"inputs.{name}"),
                        "warning",
                        f"input {name!r} is declared but never used in the body",
                    )
                )
    if any(p.severity == "error" for p in problems):
        return problems
    try:
        prompt = build_prompt(parsed, file.parent)
        sample = prompt.metadata.get("sample")
        if isinstance(sample, dict):
            try:
                prompt.validate_inputs(sample)
            except PromptkitError as exc:
                problems.append(
                    Problem(
                        source,
                        parsed.key_lines.get("sample"),
                        "error",
                        f"the sample does not fit the inputs: {exc}",
                    )
                )
    except TemplateError as exc:
        problems.append(Problem(source, exc.line, "error", exc.reason))
    except PromptkitError as exc:
        problems.append(Problem(source, None, "error", str(exc)))
    return problems
