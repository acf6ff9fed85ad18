"""The transformers backend (hf:PATH) on tiny GPT-2 folders saved by the tests themselves."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
import transformers

import promptkit as pk
from promptkit.backends import GenerationConfig
from promptkit.backends._hf import HFBackend
from promptkit.errors import ConfigurationError, ContextWindowError

from .conftest import make_hf_gpt2

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
    with pytest.raises(ConfigurationError, match="unknown option.*it takes chat_template"):
        pk.get_backend("hf:x", temperature=2)
    with pytest.raises(ConfigurationError, match="hf: chat_template must be true or false"):
        pk.get_backend("hf:x", chat_template="no")  # not read as true
    with pytest.raises(ConfigurationError, match="hf: device must be text, got int"):
        pk.get_backend("hf:x", device=0)
    with pytest.raises(ConfigurationError, match="hf: device 'quantum' is not a device PyTorch"):
        pk.get_backend("hf:x", device="quantum")
    for dtype in ("int4", "float64", "bogus"):  # not even a torch dtype name: one line, early
        with pytest.raises(ConfigurationError, match=f"hf: unknown dtype '{dtype}'; use float32"):
            pk.get_backend("hf:x", dtype=dtype)
    with pytest.raises(ConfigurationError, match="needs a model"):
        pk.get_backend("hf")


def test_saved_config_is_gpt2(hf_folder):
    assert json.loads((hf_folder / "config.json").read_text())["model_type"] == "gpt2"


def test_seeded_sampling_neither_reads_nor_changes_global_random_state(hf):
    config = GenerationConfig(max_tokens=8, temperature=1.0, seed=7)
    torch.manual_seed(1)
    first = hf.generate("To be", config).text
    before = torch.random.get_rng_state()
    torch.manual_seed(2)
    assert hf.generate("To be", config).text == first  # whatever the global generator holds
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    assert "".join(hf.stream("To be", config)) == first
    hf.generate_batch(["To be", "A journey"], config)
    assert torch.equal(torch.random.get_rng_state(), state)  # untouched by the calls
    assert not torch.equal(before, state)
    other = hf.generate("To be", config.replace(seed=8)).text
    unseeded = {hf.generate("To be", config.replace(seed=None)).text for _ in range(3)}
    assert other != first or len(unseeded) > 1  # the seed, not a fixed stream, decides


def test_batched_sampling_gives_each_prompt_what_it_gets_alone(hf):
    config = GenerationConfig(max_tokens=8, temperature=0.9, top_k=20, seed=3)
    batch = hf.generate_batch(PROMPTS, config)
    assert [c.text for c in batch] == [hf.generate(p, config).text for p in PROMPTS]


def test_the_shared_tokenizer_is_not_changed(hf):
    tokenizer = hf.tokenizer.hf
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    hf.generate_batch(PROMPTS, GenerationConfig(max_tokens=2))
    list(hf.stream("To be", GenerationConfig(max_tokens=2)))
    assert (tokenizer.padding_side, tokenizer.pad_token) == (side, pad)
    assert side == "right" and pad is None  # what the saved tokenizer says


def test_the_model_cache_keeps_only_the_most_recently_used(hf_folder, monkeypatch):
    from promptkit.backends import _hf_loading

    monkeypatch.setattr(_hf_loading, "_CACHE", type(_hf_loading._CACHE)())
    monkeypatch.setattr(_hf_loading, "MODEL_CACHE_SIZE", 2)
    first = pk.get_backend(f"hf:{hf_folder}", device="cpu", dtype="float32")
    half = pk.get_backend(f"hf:{hf_folder}", device="cpu", dtype="bfloat16")
    assert pk.get_backend(f"hf:{hf_folder}", device="cpu").model is first.model  # reused
    pk.get_backend(f"hf:{hf_folder}", device="cpu", dtype="float16")  # evicts bfloat16
    assert len(_hf_loading._CACHE) == 2
    assert pk.get_backend(f"hf:{hf_folder}", device="cpu").model is first.model
    assert pk.get_backend(f"hf:{hf_folder}", device="cpu", dtype="bfloat16").model is not (
        half.model
    )


def test_the_cache_identity_holds_the_weights_and_the_dtype(tmp_path):
    folder = make_hf_gpt2(tmp_path / "model")
    backend = pk.get_backend(f"hf:{folder}", device="cpu")
    identity = backend.cache_identity()
    assert identity["dtype"] == "torch.float32" and identity["device"] == "cpu"
    assert identity["folder"] == str(folder.resolve())
    assert "model.safetensors" in {name for name, _, _ in identity["files"]}
    half = pk.get_backend(f"hf:{folder}", device="cpu", dtype="bfloat16").cache_identity()
    assert half != identity and half["dtype"] == "torch.bfloat16"
    (folder / "adapter_model.safetensors").write_bytes(b"x")  # an adapter beside the weights
    with_adapter = backend.cache_identity()
    assert with_adapter != identity
    weights = folder / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # retrained
    assert backend.cache_identity() != with_adapter


UNREACHABLE = """
import json, time
import promptkit as pk
from promptkit.backends import _hf as hf  # torch and transformers imported before the clock starts
began = time.monotonic()
try:
    pk.get_backend("hf:promptkit-test/not-cached-model")
except pk.errors.ConfigurationError as exc:
    result = {"message": str(exc), "seconds": time.monotonic() - began}
cached = pk.get_backend("hf:promptkit-test/cached-model", device="cpu")
result["cached"] = cached.cache_identity()["folder"]
print(json.dumps(result))
"""


@pytest.mark.slow  # a fresh interpreter imports torch and transformers, then loads a model
@pytest.mark.timeout(150)
def test_an_unreachable_hub_fails_at_once_in_one_line(tmp_path, hf_folder):
    """The hub at a closed local port (HF_ENDPOINT, read when huggingface_hub is imported): a
    model not in the hub cache is one ConfigurationError line, at once, with no retries logged
    (it took 26 s and 13 lines of retries); one in the hub cache loads without the network."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    snapshot = tmp_path / "hf-home" / "hub" / "models--promptkit-test--cached-model"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0123abcd")
    shutil.copytree(hf_folder, snapshot / "snapshots" / "0123abcd")
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf-home"))
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout, done.stderr
    result = json.loads(done.stdout)
    message = result["message"]
    assert "\n" not in message and "promptkit-test/not-cached-model" in message
    assert f"127.0.0.1:{port}" in message and "HF_HUB_OFFLINE=1" in message
    assert "Retry" not in done.stderr and f"127.0.0.1:{port}" not in done.stderr, done.stderr
    assert result["seconds"] < 5
    assert result["cached"] == str((snapshot / "snapshots" / "0123abcd").resolve())


def test_a_closed_hub_port_is_asked_once_without_retries(tmp_path, monkeypatch, caplog):
    """The same in this process (fast tier): huggingface_hub's endpoint and cache pointed at a
    closed port and an empty folder."""
    import logging

    from huggingface_hub import constants

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    caplog.set_level(logging.INFO)
    began = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        pk.get_backend("hf:promptkit-test/not-cached-model")
    assert time.monotonic() - began < 5
    message = str(info.value)
    assert "\n" not in message and endpoint in message and "HF_HUB_OFFLINE=1" in message
    assert not [r for r in caplog.records if "Retry" in r.getMessage()]


def test_hf_hub_offline_fails_at_once_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    began = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        pk.get_backend("hf:promptkit-test/not-cached-model")
    assert time.monotonic() - began < 5
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message


def test_the_scratch_backend_identity_holds_its_checkpoint_files(backend, hf_folder):
    identity = backend.cache_identity()
    assert identity["folder"] == str(hf_folder.resolve())
    assert identity["dtype"] == "float32" and identity["device"] == "cpu"
    names = {name for name, _, _ in identity["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names


def test_a_folder_of_too_many_files_is_no_model_folder(tmp_path):
    from promptkit.backends._local import FINGERPRINT_FILES, folder_fingerprint

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ignored.bin").write_bytes(b"")
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(b"x" * i)
    assert [(name, size) for name, size, _ in folder_fingerprint(tmp_path)] == [
        ("f0", 0),
        ("f1", 1),
        ("f2", 2),
    ]
    for i in range(FINGERPRINT_FILES):
        (tmp_path / f"g{i}").touch()
    with pytest.raises(ConfigurationError, match=r"more than 1000 files \(FINGERPRINT_FILES\)"):
        folder_fingerprint(tmp_path)
