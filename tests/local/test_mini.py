"""promptkit-mini, the model shipped inside the package: the default backend, and what it can do.

Skipped in a copy of promptkit that ships no model (promptkit/models/mini). The thresholds are
below the measured figures in bench/RESULTS.md, so a retrained model that regresses fails.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import promptkit as pk
from promptkit._demos import Selection
from promptkit.backends import GenerationConfig
from promptkit.cli import cli
from promptkit.evaluate import evaluate, load_dataset
from promptkit.models import MINI, mini_path
from promptkit.training._evalsets import write_eval_tasks

pytestmark = pytest.mark.skipif(mini_path() is None, reason="this copy ships no promptkit-mini")


EXTRACT_ITEMS = 20  # held-out sentences checked
EXTRACT_FIELDS = 0.95  # measured: 100% of fields on all 50 (bench/RESULTS.md); target 90%
EXTRACT_FIELDS_WITHOUT_SPANS = 0.85  # measured: 96-97% with the JSON schema alone
CLASSIFY_4_SHOTS = 0.95  # measured: 100% on the 16 held-out tasks


@pytest.fixture(scope="module")
def mini() -> Any:
    return pk.get_backend("scratch")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("heldout")
    write_eval_tasks(folder)
    return folder


def test_the_shipped_model_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in MINI.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= 30 * 2**20


def test_it_is_the_default_backend_unless_another_is_configured(monkeypatch):
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    assert pk.get_backend().name == "scratch:promptkit-mini"
    monkeypatch.setenv("PROMPTKIT_BACKEND", "scripted")
    assert pk.get_backend().name == "scripted"  # the environment wins
    assert pk.get_backend("scripted").name == "scripted"  # and an explicit spec


@pytest.mark.parametrize("name", sorted(pk.bundled_templates()))
def test_every_bundled_template_gives_a_typed_answer_or_a_clear_error(mini, name):
    """Outside its competence the mini model still answers in the declared type (constrained
    decoding), or says clearly why it cannot: a prompt too long for its context, or a
    template's max_tokens too small for any answer in this model's tokens."""
    prompt = pk.load_prompt(name)
    sample = prompt.metadata["sample"]
    try:
        result = prompt.run(sample, backend=mini, max_attempts=1)
    except pk.errors.ContextWindowError as error:
        assert "context window of 512" in str(error)
        return
    except pk.errors.ConstraintError as error:
        assert error.min_tokens is not None and f"at least {error.min_tokens}" in str(error)
        return
    assert result.attempts[-1].error is None
    if prompt.output.kind != "text":
        assert result.constrained


@pytest.mark.slow
def test_extract_on_held_out_sentences(mini, heldout):
    """People, cities and phrasings never trained on, constrained decoding."""
    prompt = pk.load_prompt("extract")
    items = load_dataset(heldout / "extract.jsonl", prompt)[:EXTRACT_ITEMS]
    (report,) = evaluate(prompt, items, backend=mini, shots=[1])
    assert report.validity == 1.0
    assert (report.field_accuracy or 0) >= EXTRACT_FIELDS


@pytest.mark.slow
def test_names_are_copied_even_without_span_constraints(mini, heldout, tmp_path):
    """The tokenizer keeps the space out of capitalised words, so a never-seen name is the
    same tokens in the sentence and in the JSON: the model copies it by itself."""
    assert mini.tokenizer.encode(' Omar"')[1:-1] == mini.tokenizer.encode('"Omar"')[1:-1]
    source = pk.bundled_templates()["extract"].read_text(encoding="utf-8")
    plain_file = tmp_path / "extract.prompty"
    plain_file.write_text(
        re.sub(r"\n *x-span-of: text(?=\n)", "", source.replace(", x-span-of: text", "")),
        encoding="utf-8",
    )
    plain = pk.load_prompt(plain_file)
    assert "x-span-of" not in json.dumps(plain.output.schema)
    items = load_dataset(heldout / "extract.jsonl", plain)[:EXTRACT_ITEMS]
    (report,) = evaluate(plain, items, backend=mini, shots=[1])
    assert (report.field_accuracy or 0) >= EXTRACT_FIELDS_WITHOUT_SPANS


@pytest.mark.slow
def test_labels_are_read_from_the_demonstrations(mini, heldout):
    """Held-out made-up label words: with a few demonstrations the model labels new words of
    the shown groups."""
    accuracy = []
    for template in sorted(heldout.glob("classify-*.prompty")):
        prompt = pk.load_prompt(template)
        items = load_dataset(template.with_suffix(".jsonl"), prompt)
        (report,) = evaluate(
            prompt, items, backend=mini, shots=[4], select=Selection(balanced=True)
        )
        assert report.validity == 1.0
        accuracy.append(report.accuracy)
    assert len(accuracy) == 16  # 8 tasks and their mirrors
    assert statistics.mean(accuracy) >= CLASSIFY_4_SHOTS


@pytest.mark.slow
def test_without_demonstrations_it_is_at_chance(mini, tmp_path):
    """With no demonstrations nothing says which made-up word names which group: over many
    tasks (and their mirrors) the mean is chance, although single tasks land far from 50%."""
    write_eval_tasks(tmp_path, tasks=32, seed=1)
    accuracy = []
    for template in sorted(tmp_path.glob("classify-*.prompty")):
        prompt = pk.load_prompt(template)
        items = load_dataset(template.with_suffix(".jsonl"), prompt)
        (report,) = evaluate(prompt, items, backend=mini, shots=[0], method="score")
        accuracy.append(report.accuracy)
    assert len(accuracy) == 64
    assert 0.38 <= statistics.mean(accuracy) <= 0.62  # measured 45% (seed 1); 49, 52% (2, 3)


@pytest.mark.slow
def test_swapped_labels_are_followed(mini, heldout):
    """The answer comes from the demonstrations, not from the words: swap which label each
    group gets in the demonstrations, and the answers swap too."""
    prompt = pk.load_prompt(heldout / "classify-1.prompty")
    first, second = prompt.output.labels
    swap = {first: second, second: first}
    swapped = prompt.with_examples(
        [pk.Example(input=e.input, output=swap[e.output]) for e in prompt.examples]
    )
    items = load_dataset(heldout / "classify-1.jsonl", prompt)
    flipped = [
        swap[prompt.run(i.inputs, backend=mini, shots=4).output]
        == swapped.run(i.inputs, backend=mini, shots=4).output
        for i in items
    ]
    assert sum(flipped) / len(flipped) >= 0.9


def test_a_tight_budget_takes_the_label_in_its_fewest_tokens(mini):
    """sentiment allows 3 tokens: " positive" is one token of this model, "positive" three;
    the budget guard must not force the longer spelling (it once answered "negative" to
    every review that way)."""
    sentiment = pk.load_prompt("sentiment")
    for text, label in (
        ("The film was wonderful and overall superb.", "positive"),
        ("The meal was awful but honestly dreadful.", "negative"),
    ):
        assert sentiment.run({"text": text}, backend=mini).output == label
        # one token: both labels fit exactly; the guard once forced the one it found first
        one = GenerationConfig(max_tokens=1, temperature=0)
        assert sentiment.run({"text": text}, backend=mini, config=one).output == label


def test_the_main_job_runs_offline_on_the_default_model(monkeypatch):
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    result = CliRunner().invoke(cli, ["run", "extract", "--sample", "--json", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert "answered by promptkit-mini" in result.stderr  # the real model is not pulled here
    record = json.loads(result.stdout)
    assert set(record) == {"name", "age", "city", "date"}
    readme = "Zainab Okonkwo, 41, moved to Tromso on 2024-05-06."  # the README's example
    result = CliRunner().invoke(
        cli, ["run", "extract", "-i", f"text={readme}", "--json", "--no-cache"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "name": "Zainab Okonkwo",
        "age": 41,
        "city": "Tromso",
        "date": "2024-05-06",
    }


def test_backend_options_reach_the_real_backend_from_the_command_line(monkeypatch):
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    run = ["run", "extract", "--sample", "--json", "--no-cache", "--backend", "scratch"]
    bad = CliRunner().invoke(cli, [*run, "--backend-option", "prefix_cache_bytes=-1"])
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: prefix_cache_bytes must be a non-negative integer")
    options = ["--backend-option", "prefix_cache_bytes=0", "--backend-option", "dtype=bfloat16"]
    result = CliRunner().invoke(cli, [*run, *options])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"name", "age", "city", "date"}
