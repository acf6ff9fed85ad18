"""Every example script runs offline and prints what it promises."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "typed_extraction.py": [
        '"severity": 5',
        "attempt 1: the answer does not validate",
        "attempt 2: accepted",
    ],
    "few_shot_classifier.py": ["--- 3-shot prompt ---", "3-shot answer: politics"],
    "code_explainer.py": ["Summary: Defines the command-line entry point", "  main: Parses"],
    "testing_with_scripted_backend.py": ["ok  test_routes_to_the_label_the_model_gives"],
    "tool_calling.py": [
        'step 1: check_stock({"product":"router"}) -> 0',
        "answer: Sorry, the router is out of stock",
    ],
}


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_offline(name):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for expected in EXPECTED[name]:
        assert expected in out.stdout


def _fails_in_one_line(name: str, args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("code_explainer.py", ["--backend", "scripted"], "ran out of scripted replies"),
        ("typed_extraction.py", ["--backend", "wizard:x"], "unknown backend 'wizard'"),
        ("few_shot_classifier.py", ["--backend", "scripted:/no/such.json"], "cannot read"),
    ],
)
def test_example_errors_are_one_line_without_traceback(name, args, message):
    _fails_in_one_line(name, args, message)


@pytest.mark.slow  # loads torch for the scratch backend: several seconds on a busy machine
def test_example_with_a_missing_local_model_is_one_line():
    _fails_in_one_line(
        "code_explainer.py", ["--backend", "scratch:/nonexistent"], "no such model folder"
    )


def test_code_explainer_names_an_unreadable_file(tmp_path):
    missing = tmp_path / "missing.py"
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "code_explainer.py"), str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"error: cannot read '{missing}'" in out.stderr


def test_the_training_text_ships_with_its_source_and_licence():
    data = EXAMPLES / "data"
    notes = (data / "README.md").read_text(encoding="utf-8")
    for name in ("alice.txt", "alice_license.txt"):
        digest = hashlib.sha256((data / name).read_bytes()).hexdigest()
        assert f"`{name}`: `{digest}`" in notes  # the file is the one its source gave
    assert (data / "alice.txt").stat().st_size <= 200_000
    assert "public domain" in notes and "Source:" in notes
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    assert "promptkit train --corpus examples/data/alice.txt" in readme
    assert "shared/data/corpora" not in readme  # a user's clone has no ../shared
