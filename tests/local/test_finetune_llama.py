"""promptkit finetune on the Llama family: a tiny random Llama with ChatML's special tokens and a
chat template trains on items rendered as ``run`` renders them (the chat template's ids with the
assistant's turn opened, then the answer and the end-of-turn token), learns to answer and stop,
and its output folder (full weights with the chat template, a merged adapter, or the adapter
apart on its base) loads as ``scratch:DIR``; SmolLM2's pulled GGUF file in the slow tier."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import promptkit as pk
from promptkit.backends._base import GenerationConfig
from promptkit.backends.scratch._adapter import LLAMA_LORA_TARGETS, weights_fingerprint
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch._loading import load_model, save_hf_llama
from promptkit.backends.scratch.llama import Llama, LlamaConfig
from promptkit.errors import ConfigurationError
from promptkit.evaluate import load_dataset
from promptkit.training import FinetuneConfig, finetune
from promptkit.training._finetune_data import batch_of, encode_items, render_for_training
from promptkit.training._finetune_run import base_spec

from .test_chat_templates import CHATML, make_chat_llama
from .test_finetune import COLOURS, THINGS, logits, write_jsonl

TEMPLATE = """---
name: codes
description: House codes for items.
model:
  api: chat
  parameters:
    max_tokens: 4
    temperature: 0
inputs:
  text:
    type: string
output:
  labels: [KAV, ZOR, MIP]
examples:
  - input: {text: "the red cup"}
    output: KAV
  - input: {text: "the blue dog"}
    output: ZOR
---
Item: {{ text }}
"""


@pytest.fixture(scope="module")
def chat_task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random Llama with a chat template, a chat-style template and data files."""
    root = tmp_path_factory.mktemp("finetune-llama")
    make_chat_llama(root / "base")
    (root / "codes.prompty").write_text(TEMPLATE, encoding="utf-8")
    pairs = [(colour, thing) for colour in COLOURS for thing in THINGS]
    rows = [{"text": f"the {c} {t}", "expected": THINGS[t]} for c, t in pairs]
    return {
        "train": write_jsonl(root / "train.jsonl", rows[:24]),
        "dev": write_jsonl(root / "dev.jsonl", rows[24:30]),
        "base": f"scratch:{root / 'base'}",
        "template": str(root / "codes.prompty"),
    }


def settings(task: dict[str, str], out: Path, **changes: Any) -> FinetuneConfig:
    values: dict[str, Any] = {
        "template": task["template"],
        "data": task["train"],
        "out": str(out),
        "backend": task["base"],
        "device": "cpu",
        "epochs": 1,
        "lr": 3e-3,
        "batch_size": 8,
    }
    return FinetuneConfig(**{**values, **changes})


def base_backend(task: dict[str, str]) -> ScratchBackend:
    backend = pk.get_backend(task["base"], device="cpu")
    assert isinstance(backend, ScratchBackend)
    return backend


def test_chat_items_are_the_chat_template_ids_run_sends_then_answer_and_end_of_turn(chat_task):
    prompt = pk.load_prompt(chat_task["template"])
    backend = base_backend(chat_task)
    sent: list[Any] = []
    original = backend.generate

    def recording(request: Any, config: Any = None) -> Any:
        sent.append(request)
        return original(request, config)

    backend.generate = recording  # type: ignore[method-assign]
    (item,) = load_dataset(chat_task["train"], prompt)[:1]
    tokenizer = backend.tokenizer
    end_of_turn = tokenizer.encode_with_special_tokens("<|im_end|>")
    assert end_of_turn == [tokenizer.eot_id]
    for shots in (0, 2):
        sent.clear()
        prompt.run(item.inputs, backend=backend, shots=shots, max_attempts=1)
        messages = render_for_training(prompt, backend, item.inputs, shots)
        assert isinstance(messages, list) and messages == sent[0]
        assert len(messages) == 2 + 2 * shots  # system, demonstrations, then the query
        data = encode_items(prompt, [item], backend, tokenizer, shots=shots, window=256)
        (example,) = data.examples
        assert example.prompt == backend._chat_ids(messages)  # the generation prompt's ids
        assert example.answer == [*tokenizer.encode(item.expected), tokenizer.eot_id]
        batch = batch_of(data.examples, tokenizer.eot_id)
        assert batch.targets[batch.answer].tolist() == example.answer


def test_a_llama_folder_saves_and_loads_back_with_its_chat_template(chat_task, tmp_path):
    base = base_backend(chat_task)
    assert isinstance(base.model, Llama)
    out = save_hf_llama(
        base.model, base.tokenizer, tmp_path / "copy", chat_template=base.chat_template, note=1
    )
    assert json.loads((out / "config.json").read_text())["note"] == 1
    copy = pk.get_backend(f"scratch:{out}", device="cpu")
    assert copy.chat_template is not None and copy.chat_template.source == CHATML
    assert copy.tokenizer.eot_id == base.tokenizer.eot_id
    assert torch.equal(logits(copy, [5, 6, 7]), logits(base, [5, 6, 7]))
    messages = [{"role": "user", "content": "Item: the red cup"}]
    assert copy._chat_ids(messages) == base._chat_ids(messages)
    # Qwen2's shape (biases on q/k/v) round-trips as qwen2; a bias on o alone has no HF name
    torch.manual_seed(0)
    shape = {"vocab_size": base.model.config.vocab_size, "n_layer": 1, "n_embd": 32}
    shape |= {"n_head": 2, "n_kv_head": 1, "head_dim": 16, "n_inner": 48, "context_length": 64}
    qwen = Llama(LlamaConfig(**shape, qkv_bias=True, tie_embeddings=False))
    save_hf_llama(qwen, base.tokenizer, tmp_path / "qwen")
    loaded, _ = load_model(tmp_path / "qwen")
    assert json.loads((tmp_path / "qwen" / "config.json").read_text())["model_type"] == "qwen2"
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(loaded.logits(loaded(ids)), qwen.logits(qwen(ids)))
    with pytest.raises(ConfigurationError, match="bias on the attention output"):
        save_hf_llama(Llama(LlamaConfig(**shape, o_bias=True)), base.tokenizer, tmp_path / "o")


def test_a_chat_llama_fine_tunes_learns_to_answer_and_stop_and_loads_back(chat_task, tmp_path):
    out = tmp_path / "full"
    result = finetune(
        settings(chat_task, out, epochs=10, batch_size=4, dev=chat_task["dev"], patience=10)
    )
    assert result.trainable_share == 1.0
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.2 * losses[0]
    assert result.dev_accuracy is not None and result.dev_accuracy >= 0.8
    tuned = pk.get_backend(f"scratch:{out}", device="cpu")
    base = base_backend(chat_task)
    assert isinstance(tuned.model, Llama)
    assert tuned.chat_template is not None and tuned.chat_template.source == CHATML
    assert tuned.cache_identity() != base.cache_identity()
    record = json.loads((out / "config.json").read_text())["finetune"]
    assert record["base"] == {
        "spec": base_spec(chat_task["base"]),
        "sha256": (weights_fingerprint(base.model)),
    }
    assert record["shots"] == 0
    # the tuned model answers with a code and ends its turn; the random base never stops
    messages = [{"role": "user", "content": "Item: the grey saw"}]
    config = GenerationConfig(max_tokens=8)
    answer = tuned.generate(messages, config)
    assert answer.finish_reason == "stop" and answer.text in THINGS.values()
    assert base.generate(messages, config).finish_reason == "length"
    prompt = pk.load_prompt(chat_task["template"])
    run = prompt.run({"text": "the gold cat"}, backend=tuned, max_attempts=1)
    assert run.output in THINGS.values()


def test_lora_targets_naming_no_layer_are_refused_with_the_llama_layer_names(chat_task, tmp_path):
    with pytest.raises(ConfigurationError, match=r"no linear layer named c_attn.*q_proj"):
        finetune(settings(chat_task, tmp_path / "o", lora_rank=1, lora_targets=("c_attn",)))
    with pytest.raises(ConfigurationError, match="lora_targets must name at least one layer"):
        finetune(settings(chat_task, tmp_path / "o", lora_rank=1, lora_targets=()))


def test_base_spec_makes_a_gguf_path_absolute_and_keeps_a_registry_name(tmp_path, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert base_spec("scratch:model.gguf") == f"scratch:{tmp_path.resolve() / 'model.gguf'}"
    assert base_spec("scratch:smollm2-135m-instruct") == "scratch:smollm2-135m-instruct"


@pytest.mark.timeout(300)
def test_lora_on_a_chat_llama_trains_the_adapter_only_and_merges_to_the_same_logits(
    chat_task, tmp_path
):
    kept = finetune(settings(chat_task, tmp_path / "kept", lora_rank=2, epochs=2, lr=1e-2))
    merged = finetune(
        settings(chat_task, tmp_path / "merged", lora_rank=2, epochs=2, lr=1e-2, merge=True)
    )
    assert 0 < kept.trainable_share < 0.2  # a tiny model: the adapter is a larger share
    assert kept.history == merged.history
    adapter = json.loads((tmp_path / "kept" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(LLAMA_LORA_TARGETS)
    record = json.loads((tmp_path / "kept" / "config.json").read_text())
    base = base_backend(chat_task)
    # exactly the adapter's matrices train: rank x (in + out) per wrapped projection
    wrapped = [
        m
        for n, m in base.model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rpartition(".")[2] in LLAMA_LORA_TARGETS
    ]
    assert len(wrapped) == 7 * base.model.config.n_layer
    assert kept.trainable_parameters == sum(2 * (m.in_features + m.out_features) for m in wrapped)
    assert record["base"]["sha256"] == weights_fingerprint(base.model)
    assert record["lora"]["targets"] == list(LLAMA_LORA_TARGETS)
    with_adapter = pk.get_backend(f"scratch:{tmp_path / 'kept'}", device="cpu")
    from_merged = pk.get_backend(f"scratch:{tmp_path / 'merged'}", device="cpu")
    ids = [5, 6, 7, 8, 9]
    assert not torch.allclose(logits(with_adapter, ids), logits(base, ids))  # it trained
    assert torch.allclose(logits(with_adapter, ids), logits(from_merged, ids), atol=1e-5)
    assert with_adapter.chat_template is not None and from_merged.chat_template is not None
    assert with_adapter.cache_identity() != base.cache_identity()
    # outside the adapter's layers the merged weights are the base's
    merged_model = from_merged.model
    assert isinstance(merged_model, Llama) and isinstance(base.model, Llama)
    assert torch.equal(merged_model.wte.weight, base.model.wte.weight)
    assert torch.equal(merged_model.h[0].attn_norm.weight, base.model.h[0].attn_norm.weight)
    # peft's own unmerged base + adapter agrees with the folder loaded as scratch:DIR
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base.model, str(tmp_path / "kept"))
    with torch.no_grad():
        unmerged = peft_model.logits(peft_model(torch.tensor([ids])))
    assert torch.allclose(unmerged, logits(with_adapter, ids), atol=1e-5)


USER_CACHE = os.environ.get("PROMPTKIT_CACHE_DIR")  # before the per-test temporary cache


@pytest.mark.slow  # SmolLM2-135M: loads and trains a real model for a few steps
@pytest.mark.timeout(600)
def test_smollm2_gguf_lora_adapter_names_its_base_by_registry_name_and_sha256(
    chat_task, tmp_path, monkeypatch
):
    from promptkit.models._registry import lookup, pulled_path

    if USER_CACHE is None:
        monkeypatch.delenv("PROMPTKIT_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("PROMPTKIT_CACHE_DIR", USER_CACHE)
    known = lookup("smollm2-135m-instruct")
    assert known is not None
    if not pulled_path(known).is_file():
        pytest.skip("SmolLM2-135M-Instruct is not pulled (promptkit pull smollm2)")
    spec = "scratch:smollm2-135m-instruct"
    short = write_jsonl(
        tmp_path / "four.jsonl",
        [json.loads(line) for line in (Path(chat_task["train"]).read_text().splitlines()[:4])],
    )
    out = tmp_path / "adapter"
    result = finetune(settings(chat_task, out, backend=spec, data=short, lora_rank=2, lr=1e-3))
    assert 0 < result.trainable_share <= 0.02
    base = pk.get_backend(spec, device="cpu")
    record = json.loads((out / "config.json").read_text())
    assert record["base"] == {"spec": spec, "sha256": weights_fingerprint(base.model)}
    tuned = pk.get_backend(f"scratch:{out}", device="cpu")
    assert tuned.chat_template is not None and tuned.chat_template.source == (
        base.chat_template.source  # type: ignore[union-attr]
    )
    assert tuned.tokenizer.decode([tuned.tokenizer.eot_id]) == "<|im_end|>"
    assert tuned.cache_identity() != base.cache_identity()
    shutil.rmtree(out)
    # a full fine-tune's folder: the dequantized weights with the GGUF file's chat template
    assert isinstance(base.model, Llama) and base.chat_template is not None
    full = save_hf_llama(
        base.model, base.tokenizer, tmp_path / "full", chat_template=base.chat_template
    )
    copy = pk.get_backend(f"scratch:{full}", device="cpu")
    messages = [{"role": "user", "content": "Item: the red cup"}]
    assert copy._chat_ids(messages) == base._chat_ids(messages)
    assert copy.tokenizer.eot_id == base.tokenizer.eot_id
    assert torch.equal(logits(copy, [5, 6, 7]), logits(base, [5, 6, 7]))
