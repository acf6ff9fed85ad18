"""The public surface is locked: adding or removing a name is a deliberate change here."""

from __future__ import annotations

import subprocess
import sys

import promptkit
import promptkit.backends


def test_all_is_locked_and_sorted():
    assert promptkit.__all__ == [
        "Attempt",
        "Example",
        "Lark",
        "Message",
        "Prompt",
        "Regex",
        "Result",
        "SpanOf",
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
        "GenerationConfig",
        "Message",
        "PromptInput",
        "Request",
        "ScriptedBackend",
        "Usage",
        "available_backends",
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
