"""The decoder, its tokenizer, checkpoints, and GPT-2 weight import (logits equal transformers')."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from promptkit.backends.scratch._checkpoint import load_checkpoint, save_checkpoint
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.backends.scratch.gpt2 import GPT, GPTConfig, preset
from promptkit.errors import ConfigurationError

from .conftest import CORPUS, GPT2_TOKENIZER, make_hf_gpt2


@pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason="../shared/data/gpt2-tokenizer absent")
def test_token_ids_match_gpt2_from_both_file_forms():
    from_json = Tokenizer.from_folder(GPT2_TOKENIZER)
    from_bpe = Tokenizer.from_bpe_files(
        GPT2_TOKENIZER / "vocab.json", GPT2_TOKENIZER / "merges.txt"
    )
    for tokenizer in (from_json, from_bpe):
        assert tokenizer.encode("Hello, world!") == [15496, 11, 995, 0]
        assert tokenizer.eot_id == 50256 and tokenizer.vocab_size == 50257
        text = "naïve café 😀 <|endoftext|>"
        assert tokenizer.decode(tokenizer.encode(text)) == text
        assert 50256 not in tokenizer.encode(text)  # the text of a special token is data


def test_trained_tokenizer_round_trips_and_saves(tmp_path):
    tokenizer = Tokenizer.train([CORPUS], vocab_size=300)
    assert tokenizer.vocab_size == 300
    ids = tokenizer.encode("The quick brown fox")
    assert len(ids) < len("The quick brown fox") and tokenizer.decode(ids) == "The quick brown fox"
    tokenizer.save(tmp_path)
    assert Tokenizer.from_folder(tmp_path).encode("To be") == tokenizer.encode("To be")
    with pytest.raises(ConfigurationError, match="at least 257"):
        Tokenizer.train([CORPUS], vocab_size=100)
    with pytest.raises(ConfigurationError, match="no tokenizer"):
        Tokenizer.from_folder(tmp_path / "nothing")


def test_presets_and_bad_configs():
    assert preset("gpt2") == GPTConfig()
    assert preset("gpt2-medium").n_layer == 24
    assert preset("tiny", vocab_size=300).vocab_size == 300
    with pytest.raises(ConfigurationError, match="unknown preset 'huge'"):
        preset("huge")
    with pytest.raises(ConfigurationError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ConfigurationError, match="n_layer"):
        GPTConfig(n_layer=0)
    with pytest.raises(ConfigurationError, match="unknown GPT config field"):
        GPTConfig.from_dict({"layers": 2})
    with pytest.raises(ConfigurationError, match="conv_width must be 0 .off. or positive"):
        GPTConfig(conv_width=-1)
    with pytest.raises(ConfigurationError, match="conv_width must be an integer"):
        GPTConfig.from_dict({"conv_width": True})
    with pytest.raises(ConfigurationError, match="smear_keys must be true or false"):
        GPTConfig.from_dict({"smear_keys": "yes"})


def test_parameter_count_of_gpt2_small():
    with torch.device("meta"):
        model = GPT(GPTConfig())
    assert model.num_parameters() == 124_439_808  # GPT-2 small with tied embeddings


def _compare_logits(folder, hf_model):
    ours, _ = load_checkpoint(folder)
    torch.manual_seed(1)
    ids = torch.randint(0, hf_model.config.vocab_size, (2, 48))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours.logits(ours(ids))
    return (expected - got).abs().max().item()


def test_imported_small_gpt2_gives_transformers_logits(hf_folder, hf_model):
    assert _compare_logits(hf_folder, hf_model) < 1e-4


@pytest.mark.slow
def test_imported_full_size_gpt2_gives_transformers_logits(tmp_path):
    folder = make_hf_gpt2(tmp_path, n_layer=12, n_embd=768, n_head=12, n_positions=1024)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    assert hf_model.num_parameters() > 120_000_000 or hf_model.config.vocab_size < 50257
    assert _compare_logits(folder, hf_model) < 1e-4


def test_untied_output_layer_and_pytorch_bin(tmp_path, hf_model):
    folder = make_hf_gpt2(tmp_path, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert _compare_logits(folder, model) < 1e-4


def _broken_copy(source, tmp_path, change):
    import shutil

    target = tmp_path / "broken"
    shutil.copytree(source, target)
    state = load_file(str(target / "model.safetensors"))
    change(state)
    save_file(state, str(target / "model.safetensors"))
    return target


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"), "missing tensor 'h.1.mlp.c_fc.bias'"),
        (
            lambda s: s.update({"transformer.h.0.extra": torch.zeros(1)}),
            "unexpected tensor 'h.0.extra'",
        ),
        (
            lambda s: s.update({"transformer.wpe.weight": torch.zeros(7, 64)}),
            "'wpe.weight' has shape (7, 64)",
        ),
    ],
)
def test_bad_weights_name_the_tensor(hf_folder, tmp_path, change, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(_broken_copy(hf_folder, tmp_path, change))


def test_folders_that_are_not_gpt2(tmp_path):
    with pytest.raises(ConfigurationError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigurationError, match="model_type 'bert'"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "vocab_size": 10, "n_layer": 1, "n_head": 1, "n_embd": 4})
    )
    with pytest.raises(ConfigurationError, match="no weights"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "gpt2",
                "vocab_size": 10,
                "n_layer": 1,
                "n_head": 1,
                "n_embd": 4,
                "scale_attn_by_inverse_layer_idx": True,
            }
        )
    )
    with pytest.raises(ConfigurationError, match="scale_attn_by_inverse_layer_idx"):
        load_checkpoint(tmp_path)


def test_checkpoint_round_trip(tmp_path, hf_folder):
    model, tokenizer = load_checkpoint(hf_folder)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt", step=3)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["step"] == 3
    ours_file = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    theirs = load_file(str(hf_folder / "model.safetensors"))
    for name in (
        "h.0.attn.c_attn.weight",
        "h.0.attn.c_proj.weight",
        "h.1.mlp.c_fc.weight",
        "h.1.mlp.c_proj.weight",
    ):  # files keep GPT-2's (in, out) layout
        assert torch.equal(ours_file[name], theirs[f"transformer.{name}"]), name
    again, tokenizer_again = load_checkpoint(tmp_path / "ckpt")
    ids = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        assert torch.equal(model.logits(model(ids)), again.logits(again(ids)))
    assert tokenizer_again.encode("fox") == tokenizer.encode("fox")
