"""The package's layering, read from its source with ``ast``: promptkit's import graph has no
cycles, and no module imports another module's private names. A private module (``_name.py``,
outside the public API) is for the package's own use: its public names are imported across the
package; the private names inside any module (``_helper``) stay in it.

Every import counts, wherever it is written: at the top, under ``if TYPE_CHECKING:``, or inside a
function (a lazy import that only breaks a cycle hides it; it does not remove it). Importing
``a.b.c`` also runs the ``__init__`` of the package ``a.b`` (unless the importer is inside it), so
it is an edge to that package too; the root ``promptkit/__init__.py`` loads its names lazily
(PEP 562) and gets no such edge.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

import promptkit


@dataclass(frozen=True)
class Edge:
    """One written import: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    line: int


@dataclass(frozen=True)
class ImportGraph:
    """The modules of one package and the imports between them."""

    modules: dict[str, Path]  # dotted module name -> its file
    edges: list[Edge]  # every import of one of the package's modules
    private: list[str]  # "module:line imports target._name", one per private name taken


def _module_names(root: Path, package: str) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _base(module: str, is_package: bool, level: int) -> str:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    parts = module.split(".")
    drop = level - 1 if is_package else level
    return ".".join(parts[: len(parts) - drop])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def read_import_graph(root: Path, package: str) -> ImportGraph:
    """Every import between the modules of the package in ``root``, and every private name a
    module takes from another (``from .x import _y``, or ``x._y`` on an imported module)."""
    modules = _module_names(root, package)
    edges: list[Edge] = []
    private: list[str] = []

    def add(source: str, target: str, line: int) -> None:
        if Edge(source, target, line) not in edges:
            edges.append(Edge(source, target, line))
        parts = target.split(".")
        for end in range(2, len(parts)):  # the packages above it (not the lazy root) ...
            parent = ".".join(parts[:end])
            if source != parent and not source.startswith(parent + "."):  # ... not yet loaded
                add(source, parent, line)

    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        aliases: dict[str, str] = {}  # local name -> one of the package's modules
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        add(module, alias.name, node.lineno)
                        if alias.asname:
                            aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _base(module, is_package, node.level)
                    origin = f"{base}.{node.module}" if node.module else base
                else:
                    origin = node.module or ""
                if origin not in modules:
                    continue
                for alias in node.names:
                    submodule = f"{origin}.{alias.name}"
                    if submodule in modules:
                        add(module, submodule, node.lineno)
                        aliases[alias.asname or alias.name] = submodule
                        continue
                    if origin != module:
                        add(module, origin, node.lineno)
                    if _is_private(alias.name):
                        private.append(f"{module}:{node.lineno} imports {origin}.{alias.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _is_private(node.attr)
            ):
                target = aliases[node.value.id]
                private.append(f"{module}:{node.lineno} uses {target}.{node.attr}")
    return ImportGraph(modules, edges, private)


def find_cycle(graph: ImportGraph) -> list[Edge] | None:
    """One import cycle of ``graph`` as the edges that close it, or None when there is none."""
    outgoing: dict[str, list[Edge]] = {name: [] for name in graph.modules}
    for edge in graph.edges:
        if edge.source != edge.target:
            outgoing[edge.source].append(edge)
    state: dict[str, int] = {}  # 1: on the current path, 2: done (no cycle through it)
    path: list[Edge] = []

    def visit(name: str) -> list[Edge] | None:
        state[name] = 1
        for edge in outgoing[name]:
            if state.get(edge.target) == 1:
                start = next((i for i, e in enumerate(path) if e.source == edge.target), len(path))
                return [*path[start:], edge]
            if edge.target not in state:
                path.append(edge)
                found = visit(edge.target)
                if found is not None:
                    return found
                path.pop()
        state[name] = 2
        return None

    for name in sorted(graph.modules):
        if name not in state:
            found = visit(name)
            if found is not None:
                return found
    return None


def describe_cycle(cycle: list[Edge]) -> str:
    """A cycle as ``a (line 3) -> b (line 9) -> a``: each module and the line of its import."""
    steps = [f"{edge.source} (line {edge.line})" for edge in cycle]
    return " -> ".join([*steps, cycle[0].source])


PROMPTKIT = read_import_graph(Path(promptkit.__file__).parent, "promptkit")


def test_promptkit_import_graph_has_no_cycle():
    cycle = find_cycle(PROMPTKIT)
    assert cycle is None, f"import cycle: {describe_cycle(cycle)}"


def test_no_module_imports_another_modules_private_names():
    assert PROMPTKIT.private == []


# The layering (issue 19): each module builds on the one before it, and none reaches one after.
LAYERS = [
    "promptkit.errors",
    "promptkit._outputs",
    "promptkit._parsing",
    "promptkit._grammar",
    "promptkit.backends._base",
    "promptkit._runloop",
    "promptkit._prompt",
]


@pytest.mark.parametrize("lower, upper", list(itertools.pairwise(LAYERS)))
def test_layers_import_downwards(lower: str, upper: str):
    reaches = _reachable(PROMPTKIT, upper)
    assert lower in reaches, f"{upper} no longer builds on {lower}: update LAYERS"
    assert upper not in _reachable(PROMPTKIT, lower), f"{lower} imports {upper}, above it"


def _reachable(graph: ImportGraph, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        for edge in graph.edges:
            if edge.source == name and edge.target not in seen:
                seen.add(edge.target)
                todo.append(edge.target)
    return seen


# -- the checker itself finds what it must ----------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def _cycle_of(files: dict[str, str], tmp_path: Path) -> str | None:
    cycle = find_cycle(read_import_graph(_package(tmp_path, files), "pkg"))
    return None if cycle is None else describe_cycle(cycle)


def test_checker_reports_a_cycle_hidden_in_a_function(tmp_path: Path):
    files = {
        "__init__.py": "",
        "a.py": "from .b import thing\n",
        "b.py": "def thing():\n    from .a import other\n    return other\n",
        "c.py": "from .a import thing\n",
    }
    assert _cycle_of(files, tmp_path) == "pkg.a (line 1) -> pkg.b (line 2) -> pkg.a"


def test_checker_reports_a_cycle_of_type_only_imports(tmp_path: Path):
    files = {
        "__init__.py": "",
        "errors.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .run import Attempt\n"
        ),
        "run.py": "from .errors import Failed\n",
    }
    assert _cycle_of(files, tmp_path) == "pkg.errors (line 3) -> pkg.run (line 1) -> pkg.errors"


def test_checker_counts_a_subpackages_init(tmp_path: Path):
    files = {
        "__init__.py": "",
        "sub/__init__.py": "from .impl import run\n",
        "sub/impl.py": "from ..top import helper\n",
        "sub/base.py": "",
        "top.py": "import pkg.sub.base\n",
    }
    cycle = _cycle_of(files, tmp_path)
    assert cycle is not None and "pkg.sub (line 1) -> pkg.sub.impl (line 1) -> pkg.top" in cycle


def test_checker_passes_a_layered_package(tmp_path: Path):
    files = {
        "__init__.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
        ),
        "a.py": "A = 1\n",
        "b.py": "from . import a\nfrom .a import A\nB = a.A + A\n",
        "sub/__init__.py": "from .impl import run\n",
        "sub/impl.py": "from .base import Base\nfrom ..b import B\n",
        "sub/base.py": "from ..a import A\n",
    }
    assert _cycle_of(files, tmp_path) is None


def test_checker_reports_private_names_taken(tmp_path: Path):
    files = {
        "__init__.py": "",
        "a.py": "def _helper(): ...\n__version__ = '1'\n",
        "b.py": "from .a import _helper, __version__\nfrom . import a\na._helper()\n",
    }
    graph = read_import_graph(_package(tmp_path, files), "pkg")
    assert graph.private == ["pkg.b:1 imports pkg.a._helper", "pkg.b:3 uses pkg.a._helper"]


def test_checker_allows_a_private_modules_public_names_but_not_its_private_ones(tmp_path: Path):
    files = {
        "__init__.py": "",
        "_a.py": "def helper(): ...\ndef _secret(): ...\n",
        "b.py": (
            "from . import _a\nfrom ._a import helper\n_a.helper()\nhelper()\n"
            "_a._secret()\nfrom ._a import _secret\n"
        ),
    }
    graph = read_import_graph(_package(tmp_path, files), "pkg")
    assert graph.private == ["pkg.b:6 imports pkg._a._secret", "pkg.b:5 uses pkg._a._secret"]
    assert Edge("pkg.b", "pkg._a", 1) in graph.edges
