"""The training package's seams: scratch/ runs models and never imports training; generating a
corpus needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import promptkit

PACKAGE = Path(promptkit.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module a promptkit source file imports (relative imports resolved), type-only
    imports included."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            prefix = ".".join(base) if node.level else ""
            name = ".".join(part for part in (prefix, node.module or "") if part)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def test_backends_never_import_training():
    training_imports = imported_modules(PACKAGE / "training" / "_pretrain.py")
    assert "promptkit.backends.scratch.gpt2" in training_imports  # the reader resolves imports
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in imported_modules(path) if name.startswith("promptkit.training")
        )
        for path in sorted((PACKAGE / "backends").rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_training_modules_import_no_private_names_of_each_other():
    for path in sorted((PACKAGE / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                private = [  # a private module is importable; a private name inside one is not
                    alias.name
                    for alias in node.names
                    if alias.name.startswith("_")
                    and not (path.parent / f"{alias.name}.py").exists()
                ]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_generating_a_corpus_does_not_import_torch():
    code = (
        "import sys, promptkit.training as training\n"
        "from promptkit.training._corpus import generate\n"
        "from promptkit.training._evalsets import write_eval_tasks\n"
        "assert len(list(training.generate(3))) == 3\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
