"""The generated corpus: deterministic, in promptkit's own formats, held-out items kept apart."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import promptkit as pk
from promptkit.backends.scratch.train import read_corpus
from promptkit.cli import cli
from promptkit.corpus import (
    CITIES,
    FAMILIES,
    FIRST_NAMES,
    INSTRUCTIONS,
    generate,
    person,
    split_of,
)
from promptkit.errors import UsageError


def test_generation_is_deterministic_under_the_seed():
    first = [d.text for d in generate(60, seed=3)]
    assert first == [d.text for d in generate(60, seed=3)]
    assert first != [d.text for d in generate(60, seed=4)]


def test_every_family_appears_and_can_be_chosen():
    families = {d.family for d in generate(300, seed=0)}
    assert families == set(FAMILIES)
    only = {d.family for d in generate(20, seed=0, families=["lookup"])}
    assert only == {"lookup"}
    with pytest.raises(UsageError, match="unknown task families"):
        list(generate(1, families=["poetry"]))
    with pytest.raises(UsageError, match="split"):
        list(generate(1, split="test"))  # type: ignore[arg-type]


def test_held_out_items_never_appear_in_training_documents():
    held_names = [n for n in FIRST_NAMES if split_of(n) == "heldout"]
    held_cities = [c for c in CITIES if split_of(c) == "heldout"]
    held_phrasings = [
        i for group in INSTRUCTIONS.values() for i in group if split_of(i) == "heldout"
    ]
    assert held_names and held_cities and held_phrasings
    text = "\n".join(d.text for d in generate(400, seed=1))
    for item in held_names + held_cities + held_phrasings:
        assert f" {item}" not in text and f"{item} " not in text, item
    heldout = "\n".join(d.text for d in generate(200, seed=1, split="heldout"))
    assert any(name in heldout for name in held_names)


def test_documents_end_with_an_answer_promptkit_parses():
    extract = pk.load_prompt("extract")
    for document in generate(120, seed=5, families=["extract"]):
        answer = document.text.rsplit("Assistant:", 1)[-1]
        if "Text:" in answer:  # a completion-style rendering: the answer follows the query
            answer = document.text.rsplit("\n", 1)[-1]
        record = extract.output.parse(answer)
        assert record.name in document.text.rsplit("Text:", 1)[-1]


def test_people_match_their_records():
    import random

    rng = random.Random(0)
    for _ in range(50):
        sentence, record = person(rng, "train")
        assert record["name"] in sentence
        for key in ("city", "date"):
            if record[key] is not None:
                assert record[key] in sentence
        if record["age"] is not None:
            assert str(record["age"]) in sentence


def test_cli_writes_a_corpus_that_training_reads(tmp_path):
    out = tmp_path / "corpus.jsonl"
    result = CliRunner().invoke(cli, ["corpus", "--out", str(out), "--documents", "25"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 25 and all(set(line) == {"family", "text"} for line in lines)
    assert read_corpus(out) == [line["text"] for line in lines]
