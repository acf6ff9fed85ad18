"""${file:...} is confined to the template's folder (or file_root); ${env:...} is read only in
the connection settings under model:, so a secret never reaches a prompt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import promptkit as pk
from promptkit._check import check_template
from promptkit._prompty import backend_from_prompt
from promptkit._references import MAX_DATA_FILE_BYTES
from promptkit.errors import ConfigurationError, TemplateError

SECRET = "sk-test-0123456789abcdef-secret"


def _template(sample: str) -> str:
    return (
        f"---\nname: t\ninputs:\n  text: {{type: string}}\nsample: {sample}\n---\n{{{{ text }}}}\n"
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """project/templates/t.prompty beside project/data/sample.json."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample.json").write_text(json.dumps({"text": "from data"}))
    (tmp_path / "templates" / "sample.json").write_text(json.dumps({"text": "beside"}))
    return tmp_path


def test_file_reference_beside_the_template_loads(project):
    path = project / "templates" / "t.prompty"
    path.write_text(_template("${file:sample.json}"))
    assert pk.load_prompt(path).metadata["sample"] == {"text": "beside"}


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("../data/sample.json", "outside"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("sub/../../data/sample.json", "outside"),
    ],
)
def test_file_reference_out_of_the_folder_is_refused_with_how_to_allow_it(
    project, reference, message
):
    path = project / "templates" / "t.prompty"
    path.write_text(_template(f"${{file:{reference}}}"))
    with pytest.raises(TemplateError, match=message) as caught:
        pk.load_prompt(path)
    assert caught.value.line == 5 and caught.value.source == str(path)
    assert "file_root=DIR" in str(caught.value)


def test_file_root_widens_the_confinement(project):
    path = project / "templates" / "t.prompty"
    path.write_text(_template("${file:../data/sample.json}"))
    prompt = pk.load_prompt(path, file_root=project)
    assert prompt.metadata["sample"] == {"text": "from data"}
    assert check_template(path, file_root=project) == []
    problems = check_template(path)
    assert len(problems) == 1 and "outside" in problems[0].message and problems[0].line == 5


def test_symlink_out_of_the_folder_is_refused(project):
    link = project / "templates" / "link.json"
    link.symlink_to(project / "data" / "sample.json")
    path = project / "templates" / "t.prompty"
    path.write_text(_template("${file:link.json}"))
    with pytest.raises(TemplateError, match="outside"):
        pk.load_prompt(path)


@pytest.mark.timeout(30)
def test_devices_and_fifos_are_refused_without_blocking(project):
    path = project / "templates" / "t.prompty"
    (project / "templates" / "zero").symlink_to("/dev/zero")
    path.write_text(_template("${file:zero}"))
    with pytest.raises(TemplateError, match="outside"):  # resolves to /dev/zero
        pk.load_prompt(path)
    with pytest.raises(TemplateError, match="not a regular file"):
        pk.load_prompt(path, file_root="/")
    os.mkfifo(project / "templates" / "pipe")  # opening a fifo for reading would block
    path.write_text(_template("${file:pipe}"))
    with pytest.raises(TemplateError, match="not a regular file"):
        pk.load_prompt(path)
    path.write_text(_template("${file:.}"))
    with pytest.raises(TemplateError, match="not a regular file"):
        pk.load_prompt(path)


def test_oversized_file_is_refused_naming_the_limit(project):
    big = project / "templates" / "big.json"
    big.write_text(json.dumps({"text": "x" * MAX_DATA_FILE_BYTES}))
    path = project / "templates" / "t.prompty"
    path.write_text(_template("${file:big.json}"))
    with pytest.raises(TemplateError, match=f"over the limit of {MAX_DATA_FILE_BYTES:,} bytes"):
        pk.load_prompt(path)


@pytest.mark.parametrize(
    ("front", "where"),
    [
        ("sample: {text: '${env:PK_SECRET}'}", "sample"),
        ("inputs:\n  text: {type: string, default: '${env:PK_SECRET}'}", "inputs.text"),
        ("examples:\n  - {input: {text: '${env:PK_SECRET}'}, output: x}", "examples"),
        ("description: key ${env:PK_SECRET}", "description"),
        ("metadata: {authors: ['${env:PK_SECRET:nobody}']}", "metadata"),
    ],
)
def test_env_references_outside_model_are_refused(write, monkeypatch, front, where):
    monkeypatch.setenv("PK_SECRET", SECRET)
    path = write("t.prompty", f"---\nname: t\n{front}\n---\n{{{{ text }}}}\n")
    with pytest.raises(TemplateError, match=rf"env:PK_SECRET}} in '{where}'") as caught:
        pk.load_prompt(path)
    assert "allow_env=['PK_SECRET']" in str(caught.value) and SECRET not in str(caught.value)
    assert caught.value.line is not None and caught.value.line >= 3
    problems = check_template(path)
    assert [p.severity for p in problems] == ["error"] and SECRET not in str(problems[0])


def test_allowed_env_names_are_read_anywhere(write, monkeypatch):
    monkeypatch.setenv("PK_TOPIC", "the sea")
    path = write(
        "t.prompty", "---\ninputs:\n  topic: {default: '${env:PK_TOPIC}'}\n---\n{{ topic }}\n"
    )
    assert pk.load_prompt(path, allow_env=["PK_TOPIC"]).render({}).endswith("the sea")
    assert pk.load_prompt(path, allow_env="PK_TOPIC").render({}).endswith("the sea")
    with pytest.raises(TemplateError, match="PK_TOPIC"):  # a name, not its letters
        pk.load_prompt(path, allow_env="PK_TOPIC_OTHER")


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("  parameters: {stop: ['${env:PK_SECRET}']}", "model.parameters"),
        ("  configuration:\n    type: openai\n    api_key: ${file:key.txt}", "model.configuration"),
    ],
)
def test_references_under_model_outside_the_connection_settings_are_refused(write, model, key):
    path = write("t.prompty", f"---\nmodel:\n{model}\n---\nhi\n")
    with pytest.raises(TemplateError, match=f"in '{key}'") as caught:
        pk.load_prompt(path)
    assert caught.value.line == 2


def test_connection_settings_keep_env_references_until_the_backend_is_made(write, monkeypatch):
    """README: "A template can name its own backend"."""
    monkeypatch.setenv("PK_SECRET", SECRET)
    monkeypatch.setenv("PK_BASE", "http://127.0.0.1:9/v1")
    path = write(
        "t.prompty",
        "---\nmodel:\n  api: chat\n  configuration:\n    type: openai\n    name: gpt-4o-mini\n"
        "    api_key: ${env:PK_SECRET}\n    base_url: ${env:PK_BASE}\n---\nuser:\n{{ q }}\n",
    )
    prompt = pk.load_prompt(path)
    assert prompt.metadata["model"]["configuration"]["api_key"] == "${env:PK_SECRET}"
    assert SECRET not in repr(prompt.metadata) + repr(prompt.render({"q": "hi"}))
    pytest.importorskip("openai")
    backend = backend_from_prompt(prompt)
    assert backend is not None and backend.name == "openai:gpt-4o-mini"
    assert SECRET not in repr(backend)
    backend.close()  # type: ignore[attr-defined]
    monkeypatch.delenv("PK_SECRET")
    with pytest.raises(ConfigurationError, match="'PK_SECRET' is not set"):
        backend_from_prompt(prompt)


def test_file_contents_are_data_not_references(project, monkeypatch):
    monkeypatch.setenv("PK_SECRET", SECRET)
    (project / "templates" / "s.json").write_text(json.dumps({"text": "${env:PK_SECRET}"}))
    path = project / "templates" / "t.prompty"
    path.write_text(_template("${file:s.json}"))
    assert pk.load_prompt(path).metadata["sample"] == {"text": "${env:PK_SECRET}"}
