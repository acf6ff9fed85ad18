"""The transformers backend (hf:PATH) on tiny GPT-2 folders saved by the tests themselves."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import promptkit as pk
from promptkit.backends import GenerationConfig
from promptkit.backends.hf import HFBackend
from promptkit.errors import ConfigurationError, ContextWindowError

PROMPTS = ["The quick brown fox", "To be", "A journey of a thousand miles begins with"]


@pytest.fixture(scope="module")
def hf(hf_folder) -> HFBackend:
    return pk.get_backend(f"hf:{hf_folder}", device="cpu")


def test_loaded_once_per_process(hf, hf_folder):
    again = pk.get_backend(f"hf:{hf_folder}", device="cpu")
    assert again.model is hf.model and hf.context_window == 128
    assert hf.model.dtype == torch.float32


def test_same_text_as_transformers_directly(hf, hf_folder):
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    for config in (
        GenerationConfig(max_tokens=10),
        GenerationConfig(max_tokens=10, temperature=0.9, top_p=0.9, top_k=20, seed=5),
    ):
        ids = tokenizer("To be", return_tensors="pt")
        transformers.set_seed(5)
        kwargs = dict(
            max_new_tokens=10, pad_token_id=tokenizer.eos_token_id, do_sample=config.temperature > 0
        )
        if config.temperature > 0:
            kwargs.update(temperature=0.9, top_p=0.9, top_k=20)
        with torch.no_grad():
            out = model.generate(**ids, **kwargs)
        new = out[0, ids["input_ids"].size(1) :].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        assert hf.generate("To be", config).text == tokenizer.decode(new)


def test_batched_left_padding_equals_alone(hf):
    config = GenerationConfig(max_tokens=8)
    batch = hf.generate_batch(PROMPTS, config)
    assert [c.text for c in batch] == [hf.generate(p, config).text for p in PROMPTS]
    assert batch[1].usage.prompt_tokens == len(hf.tokenizer.encode("To be"))


def test_stop_sequences_and_streaming(hf):
    text = hf.generate("To be", GenerationConfig(max_tokens=16)).text
    stop = text[3:5]
    cut = hf.generate("To be", GenerationConfig(max_tokens=16, stop=(stop,)))
    assert cut.text == text[: text.index(stop)] and cut.finish_reason == "stop"
    for config in (GenerationConfig(max_tokens=12), GenerationConfig(max_tokens=16, stop=(stop,))):
        assert "".join(hf.stream("To be", config)) == hf.generate("To be", config).text


def test_scoring_agrees_with_the_scratch_backend_on_the_same_weights(hf, backend):
    pairs = [("The quick brown", " fox jumps"), ("", "To be"), ("A journey", " of a thousand")]
    for (a, greedy_a), (b, greedy_b) in zip(
        hf.loglikelihood_batch(pairs), backend.loglikelihood_batch(pairs), strict=True
    ):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    text = "The quick brown fox jumps over the lazy dog. To be, or not to be. " * 10
    assert hf.perplexity(text, stride=64) == pytest.approx(
        backend.perplexity(text, stride=64), rel=1e-4
    )
    assert hf.count_tokens("Hello, world!") == backend.count_tokens("Hello, world!")


def test_context_window(hf):
    with pytest.raises(ContextWindowError) as info:
        hf.generate("fox " * 200, GenerationConfig(max_tokens=4))
    assert info.value.context_window == 128


def test_unknown_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigurationError) as info:
        pk.get_backend("hf:no-such-org/no-such-model-xyz")
    message = str(info.value)
    assert "no-such-org/no-such-model-xyz" in message and "HF_HUB_OFFLINE" in message
    assert "local folder" in message and "Traceback" not in message


def test_folders_without_config_or_weights(tmp_path, hf_folder):
    with pytest.raises(ConfigurationError, match="no config.json"):
        pk.get_backend(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(ConfigurationError, match="no weights"):
        pk.get_backend(f"hf:{tmp_path}")


def test_a_bert_folder_is_not_a_causal_model(tmp_path):
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertModel(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigurationError, match="'bert' model, not a causal language model"):
        pk.get_backend(f"hf:{tmp_path}")


def test_bad_options():
    with pytest.raises(ConfigurationError, match="unknown option"):
        pk.get_backend("hf:x", temperature=2)
    with pytest.raises(ConfigurationError, match="needs a model"):
        pk.get_backend("hf")


def test_saved_config_is_gpt2(hf_folder):
    assert json.loads((hf_folder / "config.json").read_text())["model_type"] == "gpt2"
