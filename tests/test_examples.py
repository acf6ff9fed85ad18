"""Every example script runs offline and prints what it promises."""

from __future__ import annotations

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
