"""SmolLM2-135M-Instruct (the pulled Q4_1 GGUF, sha256 b179c952...) on the scratch decoder
against transformers loading the same file with gguf_file= (slow tier: fetches ~100 MB once
into the user's model cache; skipped, saying why, only when it cannot be fetched)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers

import promptkit as pk
from promptkit.errors import BackendError, ConfigurationError
from promptkit.models._registry import lookup, pull

from .test_scratch_backend import hf_sliding_perplexity

pytestmark = pytest.mark.slow

USER_CACHE = os.environ.get("PROMPTKIT_CACHE_DIR")  # before the per-test temporary cache
WIKITEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpora" / "wiki.test.raw"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture(scope="module")
def smollm2_file() -> Path:
    """The pulled file, in the user's model cache (pulled now if it is not there)."""
    with pytest.MonkeyPatch.context() as patch:
        if USER_CACHE is None:
            patch.delenv("PROMPTKIT_CACHE_DIR", raising=False)
        else:
            patch.setenv("PROMPTKIT_CACHE_DIR", USER_CACHE)
        try:
            return pull("smollm2-135m-instruct")
        except (BackendError, ConfigurationError) as exc:
            pytest.skip(f"SmolLM2-135M-Instruct cannot be fetched here: {exc}")


@pytest.fixture(scope="module")
def scratch(smollm2_file):
    return pk.get_backend(f"scratch:{smollm2_file}", device="cpu")


@pytest.fixture(scope="module")
def reference(smollm2_file):
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_file.parent, gguf_file=smollm2_file.name, dtype=torch.float32
    ).eval()


def test_the_file_is_the_registered_one(smollm2_file):
    model = lookup("smollm2")
    assert model is not None and model.sha256 == SHA256
    assert smollm2_file.stat().st_size == model.size


def test_logits_equal_transformers_gguf_over_128_tokens(scratch, reference):
    text = (
        "Our new neighbour, Olu Bakare (45), comes from Lagos. He moved here in spring and "
        "works as an engineer at the harbour. At 19, Luca Conti left Turin for good; "
        "Dr. Hanna Berg, 58, practises in Bergen. The film was slow, but the ending made up "
        "for it: I would watch it again. "
    ) * 3
    ids = scratch.tokenizer.encode(text)[:128]
    assert len(ids) == 128
    batch = torch.tensor([ids])
    with torch.no_grad():
        ours = scratch.model.logits(scratch.model(batch))
        theirs = reference(batch).logits
    difference = float((ours - theirs).abs().max())
    assert difference <= 1e-3, f"max |logit difference| {difference} (sha256 {SHA256})"
    assert scratch.tokenizer.encode("Hello world") == [19556, 905]  # SmolLM2's own ids


@pytest.mark.skipif(not WIKITEXT.is_file(), reason="no WikiText-2 test file in ../shared/data")
def test_wikitext_perplexity_equals_transformers_sliding_window(scratch, reference):
    text = WIKITEXT.read_text(encoding="utf-8")[:4000]
    window, stride = 256, 128
    scratch.context_window = window  # the same window as the reference recipe below
    try:
        stats = scratch.perplexity_stats(text, stride=stride)
    finally:
        scratch.context_window = scratch.model.config.context_length
    expected, count = hf_sliding_perplexity(
        reference, scratch.tokenizer.encode(text), window, stride
    )
    assert stats.tokens == count
    assert stats.perplexity == pytest.approx(expected, rel=1e-3), f"sha256 {SHA256}"


def test_greedy_answer_through_the_registry_name(smollm2_file, reference, monkeypatch):
    """The registry name runs the pulled file offline; greedy tokens equal transformers' on the
    same file, and generation ends at SmolLM2's end-of-turn token."""
    monkeypatch.setenv("PROMPTKIT_CACHE_DIR", str(smollm2_file.parents[2]))
    monkeypatch.setenv("PROMPTKIT_OFFLINE", "1")  # the pulled file, never a fetch
    backend = pk.get_backend("scratch:smollm2", device="cpu")
    assert backend.name == "scratch:smollm2-135m-instruct"
    assert backend.tokenizer.decode([backend.tokenizer.eot_id]) == "<|im_end|>"
    prompt = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # SmolLM2's chat markers are special tokens; promptkit's text prompts keep them as text
    # (input is data), so the ids come from transformers' tokenizer of the same file
    chat = transformers.AutoTokenizer.from_pretrained(
        smollm2_file.parent, gguf_file=smollm2_file.name
    )
    ids = chat(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(backend.tokenizer.eot_id) == 2
    config = pk.backends.GenerationConfig(max_tokens=24, temperature=0)
    expected = reference.generate(
        torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None
    )[0, len(ids) :].tolist()
    got, _ = backend.generate_ids([ids], config, stop_at_end_of_text=False)
    assert got[0] == expected
    answer, reasons = backend.generate_ids([ids], config)
    assert "Paris" in backend.tokenizer.decode(answer[0])
    assert backend.tokenizer.eot_id in expected  # the answer ends its turn within 24 tokens
    assert answer[0] == expected[: expected.index(backend.tokenizer.eot_id)]
    assert reasons[0] == "stop"


@pytest.fixture()
def pulled_default(smollm2_file, monkeypatch):
    """The user's cache, where the README's first command pulled the model, and nothing else
    configured: what `promptkit run` finds on a machine set up as the README says."""
    monkeypatch.setenv("PROMPTKIT_CACHE_DIR", str(smollm2_file.parents[2]))
    monkeypatch.setenv("PROMPTKIT_OFFLINE", "1")
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)


def test_the_readme_main_job_runs_on_the_pulled_model(pulled_default):
    from click.testing import CliRunner

    from promptkit.cli import cli

    note = "promptkit: answered by scratch:smollm2-135m-instruct"
    text = "The concert was superb and lovely."  # the README's set-up command
    result = CliRunner().invoke(cli, ["run", "sentiment", "-i", f"text={text}", "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == '"positive"' and result.stderr.startswith(note)
    text = "Zainab Okonkwo, 41, moved to Tromso last spring."  # the README's next example
    result = CliRunner().invoke(cli, ["run", "extract", "-i", f"text={text}", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "name": "Zainab Okonkwo",
        "age": 41,
        "city": "Tromso",
        "date": None,
    }


ACCEPTANCE = Path(__file__).resolve().parents[2] / "bench" / "acceptance" / "extract.jsonl"


@pytest.mark.timeout(900)
def test_the_extract_template_on_its_own_model_over_a_dozen_held_out_texts(pulled_default):
    """Issue 20's sample of the extraction acceptance run: the bundled extract on the model it
    names (SmolLM2 with the shipped LoRA adapter, bench/RESULTS.md) over the first 12 texts of
    the hand-written acceptance set: every answer valid, at least 90% of fields right."""
    from promptkit._prompty import backend_from_prompt

    prompt = pk.load_prompt("extract")
    backend = backend_from_prompt(prompt)
    assert backend is not None and backend.name == "scratch:smollm2-135m-instruct-extract"
    items = [json.loads(line) for line in ACCEPTANCE.read_text(encoding="utf-8").splitlines()]
    right = 0
    for item in items[:12]:
        record = prompt.run({"text": item["text"]}, backend=backend).output.model_dump()
        right += sum(record[key] == value for key, value in item["expected"].items())
    assert right >= 0.9 * 4 * 12


CODE = """
def load_scores(path):
    with open(path) as handle:
        return [int(line) for line in handle]


def average(scores):
    return sum(scores) / len(scores)
"""


@pytest.mark.timeout(900)
def test_the_code_explainer_runs_offline_end_to_end(pulled_default):
    """The canonical prompt on the default model: a valid four-part record whose methods are
    functions of the code (their names are copied from it, by constraint; a 135M model does
    not always list every one)."""
    explain = pk.load_prompt("code_explanation")
    result = explain.run({"code": CODE}, backend=pk.get_backend())
    record = result.output
    assert record.summary and record.potential_issues and record.optimizations
    names = {method.name for method in record.methods}
    assert names and names <= {"load_scores", "average"}, f"sha256 {SHA256}: {result.text}"
