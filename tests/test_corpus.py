"""The generated corpus: deterministic, in promptkit's own formats, held-out items kept apart."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

import promptkit as pk
from promptkit.cli import cli
from promptkit.errors import UsageError
from promptkit.training._corpus import generate
from promptkit.training._documents import read_corpus, read_documents
from promptkit.training._evalsets import write_eval_tasks
from promptkit.training._tasks import FAMILIES, person
from promptkit.training._vocabulary import (
    CITIES,
    FIRST_NAMES,
    GROUPS,
    INSTRUCTIONS,
    LAST_NAMES,
    split_of,
)


def test_generation_is_deterministic_under_the_seed():
    first = [d.text for d in generate(60, seed=3)]
    assert first == [d.text for d in generate(60, seed=3)]
    assert first != [d.text for d in generate(60, seed=4)]


def test_generation_is_the_same_in_every_process():
    # Python salts str hashes per process: nothing may depend on the order of a set.
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import hashlib; from promptkit.training._corpus import generate; "
        "print(hashlib.sha256(''.join(d.text for d in generate(300, seed=0)).encode())"
        ".hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": salt},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for salt in ("1", "2", "3")
    }
    here = "".join(d.text for d in generate(300, seed=0))
    assert digests == {hashlib.sha256(here.encode()).hexdigest() + "\n"}


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
    assert len(lines) == 25
    for line in lines:
        keys = {"family", "text"} if line["family"] == "text" else {"family", "text", "answer"}
        assert set(line) == keys
    assert read_corpus(out) == [line["text"] for line in lines]
    assert read_documents(out) == [(line["text"], line.get("answer")) for line in lines]


def test_every_task_document_says_where_its_answer_starts():
    documents = list(generate(300, seed=5))
    assert {d.family for d in documents} == set(FAMILIES)
    for document in documents:
        if document.family == "text":
            assert document.answer is None
            continue
        assert document.answer is not None
        prompt, answer = document.text[: document.answer], document.text[document.answer :]
        if document.family == "extract":  # compact JSON right after the last sentence
            record = json.loads(answer)
            assert answer.startswith(" {") and set(record) == {"name", "age", "city", "date"}
            assert record["name"] in prompt.rsplit("Text: ", 1)[-1]
        else:
            assert answer == " " + _answer(document.text), document.text


def _answer(document: str) -> str:
    """The answer a generated document ends with (after the last query)."""
    if "Assistant:" in document:
        return document.rsplit("Assistant: ", 1)[-1]
    return document.rsplit("\n", 1)[-1].split(": ", 1)[-1].split("-> ", 1)[-1]


def test_copy_documents_repeat_their_input():
    documents = [d.text for d in generate(40, seed=2, families=["copy"])]
    for text in documents:
        asked = text.rsplit("Input: ", 1)[-1].split("\n", 1)[0]
        assert _answer(text) == asked


def test_invented_people_are_made_up_and_still_match_their_records():
    import random

    rng = random.Random(1)
    real = set(FIRST_NAMES) | set(LAST_NAMES) | set(CITIES)
    for split in ("train", "heldout"):
        for _ in range(40):
            sentence, record = person(rng, split, invented=1.0)  # type: ignore[arg-type]
            first, last = record["name"].split()
            assert first not in real and last not in real and record["city"] not in real
            assert split_of(first.lower()) == split and split_of(last.lower()) == split
            assert record["name"] in sentence
            assert record["city"] is None or record["city"] in sentence


def test_classification_labels_are_mostly_made_up_and_sometimes_the_group_names():
    named = made_up = 0
    for document in generate(200, seed=3, families=["classify"]):
        answer = _answer(document.text)
        if answer in GROUPS:
            named += 1
        else:
            assert answer.isalpha() and answer.islower() and split_of(answer) == "train"
            made_up += 1
    assert made_up > 2 * named > 0


_PAIR = re.compile(
    r"(?:(?:Word|Input|Key): (\S+)\n(?:Group|Label|Value):|^(?:User: )?(\S+) ->)"
    r"(?:\n\nAssistant:)? (\S+)",
    re.MULTILINE,
)


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(a or b, answer) for a, b, answer in _PAIR.findall(text)]


@pytest.mark.parametrize("family", ["classify", "lookup"])
def test_words_and_keys_come_back_with_the_same_answer(family):
    # Repeats are what teach the model to read an answer off an earlier demonstration.
    documents = [d.text for d in generate(200, seed=4, families=[family])]
    repeated = 0
    for text in documents:
        pairs = _pairs(text)
        assert pairs, text
        answer_of: dict[str, str] = {}
        for item, answer in pairs:
            assert answer_of.setdefault(item, answer) == answer, text
        demonstrations = pairs[:-1]
        repeated += len(demonstrations) > len({item for item, _ in demonstrations})
    assert repeated > 0.3 * len(documents)


def test_words_of_one_group_share_a_label_and_new_words_are_asked_too():
    group_of = {w: g for g, words in GROUPS.items() for w in words.split()}
    new_queries = 0
    for document in generate(200, seed=5, families=["classify"]):
        pairs = _pairs(document.text)
        label_of: dict[str, str] = {}
        for word, label in pairs:
            assert label_of.setdefault(group_of[word], label) == label, document.text
        assert len(set(label_of.values())) == len(label_of)
        new_queries += pairs[-1][0] not in {word for word, _ in pairs[:-1]}
    assert new_queries > 0.3 * 200


def test_eval_tasks_are_held_out_and_answerable_only_from_the_demonstrations(tmp_path):
    files = write_eval_tasks(tmp_path, tasks=3, seed=1)
    names = [f"classify-{n}{m}" for n in (1, 2, 3) for m in ("", "-mirror")]
    assert sorted(f.name for f in files) == sorted(
        [f"{name}.{ext}" for name in names for ext in ("prompty", "jsonl")] + ["extract.jsonl"]
    )
    group_of = {w: g for g, words in GROUPS.items() for w in words.split()}
    for number in (1, 2, 3):
        task, mirror = (
            pk.load_prompt(tmp_path / f"classify-{number}{m}.prompty") for m in ("", "-mirror")
        )
        assert task.instruction.source == mirror.instruction.source
        assert [e.input for e in task.examples] == [e.input for e in mirror.examples]
        first, second = task.output.labels
        assert mirror.output.labels == (second, first)  # listed in the same group order
        other = {first: second, second: first}
        assert [other[e.output] for e in task.examples] == [e.output for e in mirror.examples]
    for name in names:
        prompt = pk.load_prompt(tmp_path / f"{name}.prompty")
        labels = set(prompt.output.labels or ())
        assert len(labels) == 2 and all(split_of(label) == "heldout" for label in labels)
        shown = {e.input["text"]: e.output for e in prompt.examples}
        assert len(shown) == 8 and set(shown.values()) == labels
        label_of_group = {group_of[w]: label for w, label in shown.items()}
        assert len(label_of_group) == 2  # one group per label
        items = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert len(items) > 10
        for item in items:
            assert item["text"] not in shown  # never a demonstration
            assert item["expected"] == label_of_group[group_of[item["text"]]]
    people = [json.loads(line) for line in (tmp_path / "extract.jsonl").read_text().splitlines()]
    assert len(people) == 50
    held_first = {n for n in FIRST_NAMES if split_of(n) == "heldout"}
    assert all(p["expected"]["name"].split()[0] in held_first for p in people)
