"""promptkit finetune on hf: models: a tiny random transformers GPT-2 fine-tunes into a folder
that hf:DIR loads (save_pretrained with the tokenizer, the run in finetune.json), or into a peft
LoRA adapter folder naming its base, which hf:DIR loads onto that base and only onto it; the
base that hf: keeps loaded for reuse is never changed by training."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import promptkit as pk
from promptkit.backends._hf import HFBackend
from promptkit.backends.scratch._adapter import LORA_TARGETS, weights_fingerprint
from promptkit.errors import ConfigurationError
from promptkit.training import FinetuneConfig, finetune

from .conftest import make_hf_gpt2
from .test_finetune import COLOURS, TEMPLATE, THINGS, write_jsonl


@pytest.fixture(scope="module")
def hf_task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random transformers GPT-2 (promptkit-mini's tokenizer), the template, data."""
    root = tmp_path_factory.mktemp("finetune-hf")
    make_hf_gpt2(root / "base", mini_tokenizer=True, n_positions=64)
    (root / "codes.prompty").write_text(TEMPLATE, encoding="utf-8")
    pairs = [(colour, thing) for colour in COLOURS for thing in THINGS]
    random.Random(0).shuffle(pairs)
    rows = [{"text": f"the {c} {t}", "expected": THINGS[t]} for c, t in pairs]
    return {
        "train": write_jsonl(root / "train.jsonl", rows[:24]),
        "dev": write_jsonl(root / "dev.jsonl", rows[24:30]),
        "base": f"hf:{root / 'base'}",
        "template": str(root / "codes.prompty"),
    }


def settings(task: dict[str, str], out: Path, **changes: Any) -> FinetuneConfig:
    values: dict[str, Any] = {
        "template": task["template"],
        "data": task["train"],
        "out": str(out),
        "backend": task["base"],
        "device": "cpu",
        "epochs": 2,
        "lr": 3e-3,
        "batch_size": 8,
    }
    return FinetuneConfig(**{**values, **changes})


def hf_backend(spec: str) -> HFBackend:
    backend = pk.get_backend(spec, device="cpu")
    assert isinstance(backend, HFBackend)
    return backend


def logits(backend: HFBackend, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return backend.model(input_ids=torch.tensor([ids])).logits  # type: ignore[no-any-return]


def test_an_hf_model_fine_tunes_into_a_folder_hf_loads(hf_task, tmp_path):
    base = hf_backend(hf_task["base"])
    before = weights_fingerprint(base.model)
    out = tmp_path / "full"
    result = finetune(settings(hf_task, out, dev=hf_task["dev"], shots=1))
    assert result.trainable_share == 1.0
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    tuned = hf_backend(f"hf:{out}")
    assert tuned.cache_identity() != base.cache_identity()
    assert not torch.equal(logits(tuned, [5, 6, 7]), logits(base, [5, 6, 7]))
    record = json.loads((out / "finetune.json").read_text())
    assert record["shots"] == 1 and record["template"]["name"] == "codes"
    assert record["base"] == {"spec": f"hf:{Path(hf_task['base'][3:]).resolve()}", "sha256": before}
    # the loaded base, kept by hf: for reuse, was not trained
    assert weights_fingerprint(hf_backend(hf_task["base"]).model) == before
    prompt = pk.load_prompt(hf_task["template"])
    assert prompt.run({"text": "the red saw"}, backend=tuned).output in THINGS.values()


@pytest.mark.timeout(300)
def test_an_hf_lora_adapter_loads_onto_its_base_and_only_onto_it(hf_task, tmp_path):
    kept = finetune(settings(hf_task, tmp_path / "kept", lora_rank=2, lr=1e-2))
    merged = finetune(settings(hf_task, tmp_path / "merged", lora_rank=2, lr=1e-2, merge=True))
    assert 0 < kept.trainable_share < 0.2
    assert kept.history == merged.history
    adapter = json.loads((tmp_path / "kept" / "adapter_config.json").read_text())
    base_path = str(Path(hf_task["base"][3:]).resolve())
    assert adapter["base_model_name_or_path"] == base_path
    assert sorted(adapter["target_modules"]) == sorted(LORA_TARGETS)
    assert not (tmp_path / "kept" / "model.safetensors").exists()  # the adapter alone
    base = hf_backend(hf_task["base"])
    with_adapter = hf_backend(f"hf:{tmp_path / 'kept'}")
    from_merged = hf_backend(f"hf:{tmp_path / 'merged'}")
    ids = [5, 6, 7, 8, 9]
    assert not torch.allclose(logits(with_adapter, ids), logits(base, ids))  # it trained
    assert torch.allclose(logits(with_adapter, ids), logits(from_merged, ids), atol=1e-5)
    assert with_adapter.cache_identity() != base.cache_identity()
    assert with_adapter.name == f"hf:{tmp_path / 'kept'}"
    # merging into a copy: the base that hf: keeps loaded is unchanged
    assert torch.equal(logits(hf_backend(hf_task["base"]), ids), logits(base, ids))
    # an adapter recorded against other weights is refused
    shutil.copytree(tmp_path / "kept", tmp_path / "other")
    record = json.loads((tmp_path / "other" / "finetune.json").read_text())
    record["base"]["sha256"] = "0" * 64
    (tmp_path / "other" / "finetune.json").write_text(json.dumps(record))
    with pytest.raises(ConfigurationError, match="trained on other weights than its base's"):
        pk.get_backend(f"hf:{tmp_path / 'other'}", device="cpu")
    del record["base"]
    (tmp_path / "other" / "finetune.json").write_text(json.dumps(record))
    with pytest.raises(ConfigurationError, match=r"finetune.json names no base"):
        pk.get_backend(f"hf:{tmp_path / 'other'}", device="cpu")


def test_each_family_gets_its_own_default_lora_targets_and_the_cli_names_the_kind(
    hf_task, tmp_path
):
    from click.testing import CliRunner

    from promptkit.backends.scratch._adapter import LLAMA_LORA_TARGETS
    from promptkit.cli import cli
    from promptkit.training._trainee import trainee_for

    from .test_chat_templates import make_chat_llama

    llama = make_chat_llama(tmp_path / "llama")
    assert trainee_for(hf_backend(f"hf:{llama}")).default_lora_targets() == LLAMA_LORA_TARGETS
    assert trainee_for(hf_backend(hf_task["base"])).default_lora_targets() == LORA_TARGETS
    out = tmp_path / "cli"
    args = ["finetune", hf_task["template"], "--data", hf_task["train"], "--out", str(out)]
    done = CliRunner().invoke(cli, [*args, "--backend", hf_task["base"], "--epochs", "1"])
    assert done.exit_code == 0, done.output
    assert f"load it as hf:{out}" in done.output


def test_an_interrupted_hf_run_resumes_into_the_same_model(hf_task, tmp_path):
    from safetensors.torch import load_file

    straight = finetune(settings(hf_task, tmp_path / "a", patience=5))

    def interrupt(epoch: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt  # after the first epoch, whose state is saved

    with pytest.raises(KeyboardInterrupt):
        finetune(settings(hf_task, tmp_path / "b", patience=5), on_epoch=interrupt)
    resumed = finetune(settings(hf_task, tmp_path / "b", patience=5, resume=True))
    assert resumed.history == straight.history
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b" / "finetune_state.pt").exists()
