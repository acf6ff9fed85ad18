"""The public surface is locked: adding or removing a name is a deliberate change here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import promptkit
import promptkit.backends


def test_all_is_locked_and_sorted():
    assert promptkit.__all__ == [
        "Attempt",
        "CachedBackend",
        "Example",
        "Lark",
        "Message",
        "Prompt",
        "Regex",
        "ResponseCache",
        "Result",
        "Selection",
        "SpanOf",
        "StreamEvent",
        "TemplateLimits",
        "Tool",
        "ToolCall",
        "ToolStep",
        "__version__",
        "backends",
        "bundled_templates",
        "errors",
        "get_backend",
        "load_prompt",
        "multiple_choice",
        "parse_output",
        "save_prompt",
    ]
    assert promptkit.__all__ == sorted(promptkit.__all__)


def test_every_exported_name_resolves():
    for name in promptkit.__all__:
        assert getattr(promptkit, name) is not None
    for name in promptkit.backends.__all__:
        assert getattr(promptkit.backends, name) is not None


def test_backends_surface_is_locked():
    assert promptkit.backends.__all__ == [
        "Backend",
        "Capabilities",
        "Completion",
        "DefaultBackend",
        "FunctionCall",
        "GenerationConfig",
        "Message",
        "PromptInput",
        "Request",
        "ScriptedBackend",
        "ToolChoice",
        "ToolSpec",
        "Usage",
        "available_backends",
        "default_backend",
        "get_backend",
    ]


def test_errors_surface_is_locked():
    assert promptkit.errors.__all__ == sorted(promptkit.errors.__all__)
    for name in promptkit.errors.__all__:
        assert issubclass(getattr(promptkit.errors, name), promptkit.errors.PromptkitError)


def test_unknown_attribute_is_an_attribute_error():
    try:
        promptkit.does_not_exist  # noqa: B018
    except AttributeError as exc:
        assert "does_not_exist" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_loads_no_heavy_library():
    code = (
        "import sys, promptkit as pk\n"
        "pk.Prompt; pk.load_prompt; pk.backends.ScriptedBackend; pk.get_backend('scripted')\n"
        "import promptkit.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'openai', 'tokenizers', 'llguidance')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# The public modules (the README lists them under "Public modules"); every other module is private.
PUBLIC_MODULES = {
    "promptkit",
    "promptkit.backends",
    "promptkit.backends.scratch.gpt2",
    "promptkit.backends.scratch.llama",
    "promptkit.cli",
    "promptkit.errors",
    "promptkit.evaluate",
    "promptkit.server",
    "promptkit.training",
}
# Packages that only hold public modules or data, and ``python -m promptkit``.
FOLDERS = {"promptkit.__main__", "promptkit.backends.scratch", "promptkit.models"}


def _module_names() -> list[str]:
    root = Path(promptkit.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = ["promptkit", *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _is_private(module: str) -> bool:
    return any(part.startswith("_") and not part.endswith("__") for part in module.split("."))


def test_every_module_outside_the_public_api_is_private():
    names = _module_names()
    assert PUBLIC_MODULES - set(names) == set()
    stray = [n for n in names if n not in PUBLIC_MODULES | FOLDERS and not _is_private(n)]
    assert stray == [], f"public by name but not in the README's list: {stray}"


def test_readme_names_exactly_the_public_modules():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Public modules", 1)[1].split("\n#", 1)[0]
    bullets = [line for line in section.splitlines() if line.startswith("- ")]
    named = {
        name
        for line in bullets
        for name in re.findall(r"`([^`]+)`", line)
        if re.fullmatch(r"promptkit(\.[a-z][a-z0-9_]*)*", name)
    }
    assert named == PUBLIC_MODULES


def test_readme_shows_only_public_imports():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    imports = re.findall(r"from (promptkit[\w.]*) import", readme)
    assert imports and all(module in PUBLIC_MODULES for module in imports), imports
