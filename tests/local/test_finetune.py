"""promptkit finetune: the loss mask, learning a made-up task, LoRA, the output folder, resume,
and every refusal (bad data, too long, not enough memory, a resumed run that differs)."""

from __future__ import annotations

import importlib
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import promptkit as pk
from promptkit.backends.scratch._adapter import ADAPTER_FORMAT, weights_fingerprint
from promptkit.backends.scratch._checkpoint import save_checkpoint
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.backends.scratch.gpt2 import GPT, GPTConfig
from promptkit.cli import cli
from promptkit.errors import (
    ConfigurationError,
    ContextWindowError,
    InputValidationError,
    UsageError,
)
from promptkit.evaluate import evaluate, load_dataset
from promptkit.training import FinetuneConfig, finetune
from promptkit.training._finetune_data import batch_of, encode_items, render_for_training
from promptkit.training._memory import (
    MemoryEstimate,
    available_memory,
    check_fits_memory,
    estimate_memory,
)

from .conftest import MINI_TOKENIZER

TEMPLATE = """---
name: codes
description: House codes for items.
model:
  api: completion
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
Code:
"""
# the house scheme: the code follows the thing, whatever its colour
THINGS = {"cup": "KAV", "bowl": "KAV", "dog": "ZOR", "cat": "ZOR", "hammer": "MIP", "saw": "MIP"}
COLOURS = ["red", "blue", "green", "black", "white", "brown", "pink", "grey", "gold", "dark"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random GPT (promptkit-mini's tokenizer), the template and disjoint data files."""
    root = tmp_path_factory.mktemp("finetune")
    shutil.copy(MINI_TOKENIZER, root / "tokenizer.json")
    tokenizer = Tokenizer.from_folder(root)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=64, n_layer=2, n_head=2, n_embd=64
    )
    save_checkpoint(GPT(config), tokenizer, root / "base")
    (root / "codes.prompty").write_text(TEMPLATE, encoding="utf-8")
    pairs = [(colour, thing) for colour in COLOURS for thing in THINGS]
    random.Random(0).shuffle(pairs)
    parts = {"train": pairs[:36], "dev": pairs[36:48], "test": pairs[48:]}
    files = {
        name: write_jsonl(
            root / f"{name}.jsonl",
            [{"text": f"the {c} {t}", "expected": THINGS[t]} for c, t in part],
        )
        for name, part in parts.items()
    }
    return {
        **files,
        "root": str(root),
        "base": f"scratch:{root / 'base'}",
        "template": str(root / "codes.prompty"),
    }


def settings(task: dict[str, str], out: Path, **changes: Any) -> FinetuneConfig:
    values: dict[str, Any] = {
        "template": task["template"],
        "data": task["train"],
        "out": str(out),
        "backend": task["base"],
        "epochs": 1,
        "lr": 3e-3,
        "batch_size": 8,
    }
    return FinetuneConfig(**{**values, **changes})


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def logits(backend: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return backend.model.logits(backend.model(torch.tensor([ids])))  # type: ignore[no-any-return]


# -- the data: rendered as run renders it, loss on the answer and end-of-text ----------------


def test_training_prompt_is_what_run_sends_and_the_loss_covers_answer_and_end(task):
    prompt = pk.load_prompt(task["template"])
    backend = pk.get_backend(task["base"])
    sent: list[Any] = []
    original = backend.generate

    def recording(request: Any, config: Any = None) -> Any:
        sent.append(request)
        return original(request, config)

    backend.generate = recording  # type: ignore[method-assign]
    item = load_dataset(task["train"], prompt)[0]
    for shots in (0, 2):
        sent.clear()
        prompt.run(item.inputs, backend=backend, shots=shots, max_attempts=1)
        assert render_for_training(prompt, backend, item.inputs, shots) == sent[0]

    tokenizer = backend.tokenizer
    data = encode_items(prompt, [item], backend, tokenizer, shots=0, window=64)
    (example,) = data.examples
    batch = batch_of(data.examples, tokenizer.eot_id)
    answer_targets = batch.targets[batch.answer].tolist()
    assert answer_targets[-1] == tokenizer.eot_id  # the end token, or the model never stops
    assert tokenizer.decode(answer_targets[:-1]) == f" {item.expected}"
    assert answer_targets == example.answer
    # every other real target is a prompt token (the auxiliary LM loss), none is padding
    prompt_targets = batch.targets[batch.prompt].tolist()
    assert prompt_targets == example.prompt[1:]


def test_padding_is_in_no_loss(task):
    prompt = pk.load_prompt(task["template"])
    backend = pk.get_backend(task["base"])
    items = load_dataset(task["train"], prompt)[:2]
    short = {"text": "a cup"}
    items[1] = type(items[1])(line=99, inputs=short, expected=items[1].expected)
    data = encode_items(prompt, items, backend, backend.tokenizer, shots=0, window=64)
    batch = batch_of(data.examples, backend.tokenizer.eot_id)
    padded = batch.targets == -100
    assert padded.any()
    assert not (batch.answer & padded).any() and not (batch.prompt & padded).any()
    assert int(batch.answer.sum()) == sum(len(e.answer) for e in data.examples)


def test_lm_weight_also_trains_on_the_prompt_tokens(task, tmp_path):
    prompt = pk.load_prompt(task["template"])
    base = pk.get_backend(task["base"])
    item = load_dataset(task["train"], prompt)[0]
    text = render_for_training(prompt, base, item.inputs, 0)
    perplexity = {}
    for weight in (0.0, 1.0):
        finetune(settings(task, tmp_path / str(weight), lm_weight=weight, epochs=2))
        tuned = pk.get_backend(f"scratch:{tmp_path / str(weight)}")
        perplexity[weight] = tuned.perplexity(text)
    # GPT-1's auxiliary objective: the prompts themselves become likelier
    assert perplexity[1.0] < 0.8 * perplexity[0.0]


# -- the output folder ----------------------------------------------------------------------


def test_output_folder_round_trips_and_records_the_run(task, tmp_path):
    out = tmp_path / "full"
    result = finetune(settings(task, out, dev=task["dev"], shots=1))
    assert result.trainable_share == 1.0 and result.epochs == 1
    backend = pk.get_backend(f"scratch:{out}")
    base = pk.get_backend(task["base"])
    assert backend.cache_identity() != base.cache_identity()
    assert not torch.equal(logits(backend, [5, 6, 7]), logits(base, [5, 6, 7]))
    record = json.loads((out / "config.json").read_text())["finetune"]
    assert record["shots"] == 1
    assert record["template"]["name"] == "codes"
    assert len(record["template"]["sha256"]) == len(record["data"]["sha256"]) == 64
    assert record["base"]["sha256"] == weights_fingerprint(base.model)
    assert record["history"][0]["dev_accuracy"] == result.dev_accuracy
    # it runs as any backend does
    prompt = pk.load_prompt(task["template"])
    output = prompt.run({"text": "the red saw"}, backend=backend, max_attempts=1).output
    assert output in THINGS.values()


def test_a_hugging_face_gpt2_folder_fine_tunes_into_a_scratch_folder(task, tmp_path, hf_folder):
    out = tmp_path / "from-hf"
    result = finetune(settings(task, out, backend=f"scratch:{hf_folder}"))
    assert result.trainable_share == 1.0
    record = json.loads((out / "config.json").read_text())["finetune"]
    assert record["base"]["spec"] == f"scratch:{Path(hf_folder).resolve()}"
    tuned = pk.get_backend(f"scratch:{out}")
    base = pk.get_backend(f"scratch:{hf_folder}")
    assert tuned.tokenizer.encode("the red cup") == base.tokenizer.encode("the red cup")
    assert not torch.equal(logits(tuned, [5, 6, 7]), logits(base, [5, 6, 7]))
    prompt = pk.load_prompt(task["template"])
    assert prompt.run({"text": "the red saw"}, backend=tuned).output in THINGS.values()


def test_same_seed_same_model_and_resume_continues_the_same_run(task, tmp_path):
    straight = finetune(settings(task, tmp_path / "a", epochs=2, patience=5))
    again = finetune(settings(task, tmp_path / "b", epochs=2, patience=5))
    assert straight.history == again.history
    a, b = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def interrupt(epoch: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt  # after the first epoch, whose state is saved

    with pytest.raises(KeyboardInterrupt):
        finetune(settings(task, tmp_path / "c", epochs=2, patience=5), on_epoch=interrupt)
    assert not (tmp_path / "c" / "model.safetensors").exists()
    resumed = finetune(settings(task, tmp_path / "c", epochs=2, patience=5, resume=True))
    assert resumed.epochs == 2
    assert resumed.history == straight.history
    c = tensors(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_bfloat16_autocast_trains_too(task, tmp_path):
    full = finetune(settings(task, tmp_path / "f32"))
    half = finetune(settings(task, tmp_path / "bf16", precision="bfloat16"))
    assert math.isfinite(half.history[0]["loss"])
    assert half.history[0]["loss"] != full.history[0]["loss"]  # another arithmetic ran
    assert tensors(tmp_path / "bf16")["wte.weight"].dtype == torch.float32


def test_resume_refuses_other_settings_and_out_is_never_overwritten(task, tmp_path):
    out = tmp_path / "run"
    finetune(settings(task, out))
    assert not (out / "finetune_state.pt").exists()  # a finished run leaves only its model
    with pytest.raises(ConfigurationError, match=r"nothing to resume .*\(its run finished\)"):
        finetune(settings(task, out, resume=True))

    def interrupt(epoch: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        finetune(settings(task, out, epochs=2), on_epoch=interrupt)
    with pytest.raises(ConfigurationError, match="already holds a model.*--resume"):
        finetune(settings(task, out))
    with pytest.raises(ConfigurationError, match="settings or files differ.*: lr, seed"):
        finetune(settings(task, out, epochs=2, lr=1e-3, seed=5, resume=True, patience=4))
    with pytest.raises(ConfigurationError, match="nothing to resume"):
        finetune(settings(task, tmp_path / "empty", resume=True))


# -- LoRA -----------------------------------------------------------------------------------


def fake_adapter(
    task: dict[str, str],
    folder: Path,
    sha256: str,
    inputs: int = 64,
    seed: int = 1,
    **lora: Any,
) -> dict[str, torch.Tensor]:
    """An adapter folder written by hand in peft's format (rank 2 on c_attn of block 0)."""
    folder.mkdir()
    torch.manual_seed(seed)
    pair = {"A": torch.randn(2, inputs), "B": torch.randn(192, 2)}
    save_file(
        {f"base_model.model.h.0.attn.c_attn.lora_{k}.weight": v for k, v in pair.items()},
        str(folder / "adapter_model.safetensors"),
    )
    settings = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["c_attn"]}
    settings.update(lora)
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    config = {
        "format": ADAPTER_FORMAT,
        "base": {"spec": task["base"], "sha256": sha256},
        "lora": {"rank": 2, "alpha": 4, "targets": ["c_attn"], "merged": False},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return pair


def test_an_adapter_folder_loads_onto_its_base_and_only_onto_it(task, tmp_path):
    base = pk.get_backend(task["base"])
    pair = fake_adapter(task, tmp_path / "adapter", weights_fingerprint(base.model))
    loaded = pk.get_backend(f"scratch:{tmp_path / 'adapter'}")
    layer = base.model.h[0].attn.c_attn  # (in, out) layout: the update is (B @ A) transposed
    expected = layer.weight + 2.0 * (pair["B"] @ pair["A"]).t()
    assert torch.allclose(loaded.model.h[0].attn.c_attn.weight, expected, atol=1e-6)
    assert torch.equal(loaded.model.h[1].attn.c_attn.weight, base.model.h[1].attn.c_attn.weight)
    assert loaded.cache_identity() != base.cache_identity()
    assert loaded.adapter == tmp_path / "adapter"
    assert loaded.adapter_sha256 is not None and len(loaded.adapter_sha256) == 64
    # the cache identity follows the adapter's weights: retrained in place, another model
    before = loaded.cache_identity()
    shutil.rmtree(tmp_path / "adapter")
    fake_adapter(task, tmp_path / "adapter", weights_fingerprint(base.model), seed=2)
    retrained = pk.get_backend(f"scratch:{tmp_path / 'adapter'}")
    assert retrained.name == loaded.name
    assert retrained.cache_identity() != before
    assert retrained.adapter_sha256 != loaded.adapter_sha256

    fake_adapter(task, tmp_path / "other", "0" * 64)
    with pytest.raises(ConfigurationError, match="trained on other weights.*base"):
        pk.get_backend(f"scratch:{tmp_path / 'other'}")
    sha256 = weights_fingerprint(base.model)
    fake_adapter(task, tmp_path / "dora", sha256, use_dora=True)
    with pytest.raises(ConfigurationError, match=r"not a plain LoRA adapter .*\(use_dora\)"):
        pk.get_backend(f"scratch:{tmp_path / 'dora'}")
    fake_adapter(task, tmp_path / "misfit", sha256, inputs=32)
    with pytest.raises(ConfigurationError, match=r"'h.0.attn.c_attn' is 64 -> 192.*A \(2, 32\)"):
        pk.get_backend(f"scratch:{tmp_path / 'misfit'}")


@pytest.mark.slow  # imports peft (and transformers): several seconds on a busy machine
@pytest.mark.timeout(300)
def test_lora_trains_only_the_adapter_and_merging_gives_the_same_logits(task, tmp_path):
    from peft import PeftModel

    from promptkit.backends.scratch._adapter import to_torch_linears

    kept = finetune(settings(task, tmp_path / "kept", lora_rank=1, epochs=2, lr=1e-2))
    merged = finetune(
        settings(task, tmp_path / "merged", lora_rank=1, epochs=2, lr=1e-2, merge=True)
    )
    assert 0 < kept.trainable_share <= 0.02
    assert kept.trainable_parameters == merged.trainable_parameters
    assert not (tmp_path / "kept" / "model.safetensors").exists()  # the adapter alone
    base_tensors = load_file(str(Path(task["base"].partition(":")[2]) / "model.safetensors"))
    merged_tensors = tensors(tmp_path / "merged")
    for name in ("wte.weight", "h.0.ln_1.weight", "ln_f.bias"):  # outside the adapter
        assert torch.equal(merged_tensors[name], base_tensors[name])
    ids = [5, 6, 7, 8, 9]
    base = pk.get_backend(task["base"])
    base_logits = logits(base, ids)
    with_adapter = pk.get_backend(f"scratch:{tmp_path / 'kept'}")
    from_merged = pk.get_backend(f"scratch:{tmp_path / 'merged'}")
    assert not torch.allclose(logits(with_adapter, ids), base_logits)  # the adapter trained
    assert torch.allclose(logits(with_adapter, ids), logits(from_merged, ids), atol=1e-5)

    # an interrupted LoRA run resumes into the same adapter
    def interrupt(epoch: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt

    again = settings(task, tmp_path / "resumed", lora_rank=1, epochs=2, lr=1e-2)
    with pytest.raises(KeyboardInterrupt):
        finetune(again, on_epoch=interrupt)
    again.resume = True
    assert finetune(again).history == kept.history
    resumed = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    adapter = load_file(str(tmp_path / "kept" / "adapter_model.safetensors"))
    assert all(torch.equal(adapter[k], resumed[k]) for k in adapter)
    # peft's own base + adapter (unmerged) agrees with our merge
    to_torch_linears(base.model)
    PeftModel.from_pretrained(base.model, str(tmp_path / "kept"))
    assert torch.allclose(logits(base, ids), logits(with_adapter, ids), atol=1e-5)


# -- learning -------------------------------------------------------------------------------


@pytest.mark.slow  # about 15 s: 25 epochs with a dev evaluation each
@pytest.mark.timeout(600)
def test_a_tiny_model_learns_a_made_up_labelling_task(task, tmp_path):
    prompt = pk.load_prompt(task["template"])
    test_items = load_dataset(task["test"], prompt)
    base = pk.get_backend(task["base"])
    (before,) = evaluate(prompt, test_items, backend=base, shots=(0,))
    result = finetune(
        settings(task, tmp_path / "out", dev=task["dev"], epochs=25, batch_size=4, patience=25)
    )
    assert result.dev_accuracy == 1.0
    tuned = pk.get_backend(f"scratch:{tmp_path / 'out'}")
    (after,) = evaluate(prompt, test_items, backend=tuned, shots=(0,))
    assert before.accuracy < 0.7 and after.accuracy >= 0.9


# -- refusals -------------------------------------------------------------------------------


def test_a_bad_data_line_names_its_line_and_field(task, tmp_path):
    rows = [{"text": "the red cup", "expected": "KAV"}, {"text": "the red cup", "expected": "NOPE"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputValidationError, match=r"bad.jsonl:2: field 'expected'"):
        finetune(settings(task, tmp_path / "out", data=bad))
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"expected": "KAV"}])
    with pytest.raises(InputValidationError, match=r"missing.jsonl:1: .*text"):
        finetune(settings(task, tmp_path / "out", data=missing))
    asserted = [{"text": "the red cup", "assert": [{"type": "contains", "value": "K"}]}]
    only_assertions = write_jsonl(tmp_path / "asserted.jsonl", asserted)
    with pytest.raises(InputValidationError, match=r"asserted.jsonl:1: no 'expected' field"):
        finetune(settings(task, tmp_path / "out", data=only_assertions))
    assert not (tmp_path / "out").exists()


def test_examples_too_long_are_dropped_with_a_count_or_refused_with_strict(task, tmp_path, caplog):
    rows = [{"text": "the red cup", "expected": "KAV"}] * 3
    rows.insert(1, {"text": " ".join(["word"] * 80), "expected": "ZOR"})
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    with caplog.at_level("WARNING", logger="promptkit.training._finetune"):
        result = finetune(settings(task, tmp_path / "out", data=data))
    assert result.dropped == [2]
    assert "1 example(s) of" in caplog.text and "(lines 2;" in caplog.text
    record = json.loads((tmp_path / "out" / "config.json").read_text())["finetune"]
    assert record["data"]["dropped_lines"] == [2]
    with pytest.raises(ContextWindowError, match=r"long.jsonl:2: .*context window of 64"):
        finetune(settings(task, tmp_path / "strict", data=data, strict=True))


def test_a_batch_that_would_not_fit_in_memory_is_refused_with_a_smaller_one(
    task, tmp_path, monkeypatch
):
    estimate = MemoryEstimate(fixed=100 * 2**20, per_sequence=50 * 2**20)
    check_fits_memory(estimate, 4, 400 * 2**20)  # 300 MiB of 360 usable: fits
    with pytest.raises(ConfigurationError, match=r"batch size 8 .*try --batch-size 5"):
        check_fits_memory(estimate, 8, 400 * 2**20)
    with pytest.raises(ConfigurationError, match="not even one sequence fits"):
        check_fits_memory(estimate, 1, 100 * 2**20)
    check_fits_memory(estimate, 10**6, None)  # the system does not say: nothing to check
    assert (available_memory() or 1) > 0

    grows = estimate_memory(trainable=10, n_layer=2, n_embd=64, n_head=2, vocab_size=100, tokens=64)
    assert grows.total(2) > grows.total(1) > grows.fixed >= 4 * 10 * 4

    module = importlib.import_module("promptkit.training._finetune")  # not the function
    monkeypatch.setattr(module, "available_memory", lambda: 2**20)
    with pytest.raises(
        ConfigurationError, match=r"training would need about .* more memory .* available"
    ):
        finetune(settings(task, tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written


def test_bad_settings_and_backends_are_refused(task, tmp_path):
    with pytest.raises(ConfigurationError, match="epochs must be positive.*merge needs"):
        finetune(settings(task, tmp_path / "o", epochs=0, merge=True))
    with pytest.raises(UsageError, match="shots"):
        finetune(settings(task, tmp_path / "o", shots=5))
    with pytest.raises(ConfigurationError, match="finetune trains scratch: and hf: models"):
        finetune(settings(task, tmp_path / "o", backend="scripted"))
    with pytest.raises(ConfigurationError, match="no linear layer named nope"):
        finetune(settings(task, tmp_path / "o", lora_rank=1, lora_targets=("nope",)))


def test_cli_finetune_trains_and_reports_errors_in_one_line(task, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["finetune", task["template"], "--data", task["train"], "--out", str(out)]
    args += ["--backend", task["base"], "--epochs", "1", "--dev", task["dev"]]
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert f"load it as scratch:{out}" in done.output and "dev accuracy" in done.output
    assert "epoch 1: loss" in done.stderr and "dev accuracy" in done.stderr  # the progress
    again = runner.invoke(cli, args)
    assert again.exit_code == 2
    assert again.stderr.startswith("error: ") and "already holds a model" in again.stderr


def test_eval_puts_the_fine_tuned_model_beside_the_base_at_its_recorded_shots(task, tmp_path):
    from promptkit.evaluate import Report

    out = tmp_path / "tuned"
    finetune(settings(task, out, shots=1))
    args = ["eval", task["template"], "--data", task["test"], "--backend", task["base"]]
    args += ["--vs-backend", f"scratch:{out}", "--no-cache", "--out", str(tmp_path / "r")]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    report = Report.model_validate_json((tmp_path / "r" / "report.json").read_text())
    (run,) = report.vs_backends
    assert run.backend == f"scratch:{out}" and run.finetuned_shots == 1
    assert [r.shots for r in run.reports] == [1]  # the count it was trained with
    (comparison,) = report.backend_comparisons
    assert comparison.baseline == task["base"] and comparison.shots == 1
    assert (tmp_path / "r" / "accuracy.png").is_file()
    given = CliRunner().invoke(cli, [*args, "--shots", "0,2", "--out", str(tmp_path / "r2")])
    assert given.exit_code == 0, given.output
    report = Report.model_validate_json((tmp_path / "r2" / "report.json").read_text())
    assert [r.shots for r in report.vs_backends[0].reports] == [0, 2]  # --shots says otherwise
