from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from promptkit.backends._base import (
    Backend,
    Capabilities,
    Completion,
    GenerationConfig,
    Message,
    PerplexityStats,
    Usage,
)
from promptkit.cli import cli


@pytest.fixture
def invoke():
    runner = CliRunner()

    def _invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return _invoke


def test_templates_lists_every_bundled_template(invoke):
    result = invoke("templates")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 10
    assert any(line.startswith("code_completion_chat ") for line in lines)
    assert any(line.startswith("sentiment") and "positive or negative" in line for line in lines)


def test_render_with_inputs_files_and_json(invoke, write):
    code = write("snippet.py", "def f():\n    return 1\n")
    result = invoke(
        "render", "code_explanation", "-i", f"code=@{code}", "-i", "answer_language=French"
    )
    assert result.exit_code == 0, result.output
    assert "system:\n" in result.output and "def f():" in result.output
    assert "in French" in result.output
    result = invoke(
        "render", "sentiment", "--inputs-json", '{"text": "Great!"}', "--shots", "0", "--json"
    )
    assert json.loads(result.output).endswith("Review: Great!\nSentiment:")


def test_render_parses_non_string_inputs_as_json(invoke):
    result = invoke(
        "render",
        "multiple_choice",
        "-i",
        "context=c",
        "-i",
        "question=q",
        "-i",
        'answers=["yes", "no"]',
        "--shots",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert "0. yes\n1. no" in result.output


def test_render_sample_and_style(invoke):
    result = invoke("render", "extract", "--sample", "--style", "completion", "--shots", "0")
    assert result.exit_code == 0
    assert result.output.startswith("Extract the person") and "user:" not in result.output


def test_run_prints_validated_output(invoke, write):
    replies = write("r.json", json.dumps([" Positive! Clearly."]))
    result = invoke("run", "sentiment", "--sample", "--backend", f"scripted:{replies}")
    assert result.exit_code == 0 and result.output == "positive\n"
    replies = write(
        "r2.json",
        json.dumps(['{"name": "Maria Rossi", "age": 29, "city": "Milan", "date": "2024-09-02"}']),
    )
    result = invoke("run", "extract", "--sample", "--backend", f"scripted:{replies}", "--json")
    assert json.loads(result.output) == {
        "name": "Maria Rossi",
        "age": 29,
        "city": "Milan",
        "date": "2024-09-02",
    }


def test_run_backend_from_environment(invoke, write, monkeypatch):
    replies = write("r.json", json.dumps(["2"]))  # the sample has 3 answers: indices 0-2
    monkeypatch.setenv("PROMPTKIT_BACKEND", f"scripted:{replies}")
    result = invoke("run", "multiple_choice", "--sample")
    assert result.exit_code == 0 and result.output == "2\n"


def test_run_that_never_validates_exits_3_with_one_line(invoke, write):
    replies = write("r.json", json.dumps(["maybe", "unsure"]))
    result = invoke(
        "run",
        "sentiment",
        "--sample",
        "--backend",
        f"scripted:{replies}",
        "--max-attempts",
        "2",
        "-v",
    )
    assert result.exit_code == 3
    assert "--- attempt 1: answer 'maybe'" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no valid output after 2 attempt(s)")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["render", "nope.prompty"], 2, "no template file"),
        (["render", "sentiment"], 2, "missing input 'text'"),
        (["render", "sentiment", "-i", "text"], 2, "KEY=VALUE"),
        (["render", "sentiment", "-i", "text=@/no/such/file"], 2, "cannot read"),
        (["render", "sentiment", "--inputs-json", "[1]"], 2, "JSON object"),
        (["render", "sentiment", "--inputs-json", "{"], 2, "not valid JSON"),
        (["render", "summarize", "--sample", "--shots", "3"], 2, "shots=3"),
        (["run", "sentiment", "--sample", "--backend", "wizard:x"], 2, "unknown backend"),
        (["run", "sentiment", "--sample", "--backend", "scripted"], 4, "ran out"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(invoke, args, code, message, monkeypatch):
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    result = invoke(*args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output


def test_check_clean_file(invoke):
    result = invoke("check", "sentiment")
    assert result.exit_code == 0 and result.output.strip() == "sentiment: ok"


def test_check_reports_problems_with_line_numbers(invoke, write):
    path = write(
        "bad.prompty",
        "---\nname: bad\ninputs:\n  text: {type: string}\n"
        "  unused: {type: string}\n---\nuser:\n{{ text }} {{ typo }}\n",
    )
    result = invoke("check", str(path))
    assert result.exit_code == 2
    assert f"{path}:8: error: the body uses 'typo'" in result.stderr
    warning_only = write(
        "warn.prompty",
        "---\ninputs:\n  text: {type: string}\n  unused: {type: string}\n---\n{{ text }}\n",
    )
    result = invoke("check", str(warning_only))
    assert result.exit_code == 0
    assert f"{warning_only}:4: warning: input 'unused' is declared but never used" in result.output
    assert invoke("check", "--strict", str(warning_only)).exit_code == 2


def test_check_reports_yaml_and_schema_errors(invoke, write):
    path = write("y.prompty", "---\nname: [\n---\nhi\n")
    result = invoke("check", str(path))
    assert result.exit_code == 2 and f"{path}:3: error: invalid YAML" in result.stderr
    path = write(
        "s.prompty",
        "---\noutput:\n  schema: {type: object, properties: {a: "
        "{type: string, format: email, not: {}}}}\n---\nhi\n",
    )
    result = invoke("check", str(path))
    assert result.exit_code == 2 and f"{path}:2: error: unsupported JSON schema" in result.stderr
    path = write(
        "t.prompty", "---\nsample: {text: 1}\ninputs: {text: {type: string}}\n---\n{{ text }}\n"
    )
    result = invoke("check", str(path))
    assert result.exit_code == 2 and "the sample does not fit" in result.stderr


def test_console_script_runs_without_traceback(tmp_path):
    exe = shutil.which("promptkit")
    command = [exe] if exe else [sys.executable, "-m", "promptkit"]
    ok = subprocess.run(
        [*command, "render", "summarize", "-i", "text=Hi."], capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stdout == "Hi.\n\nTL;DR:\n"
    bad = subprocess.run(
        [*command, "render", str(tmp_path / "missing.prompty")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


class _Recorded(Backend):
    """A backend that answers every generation with "positive" and every perplexity with 2."""

    def __init__(self, name: str):
        self.name = name
        self.capabilities = Capabilities(completion=True, chat=True, perplexity=True)

    def _complete(self, text: str, config: GenerationConfig) -> Completion:
        return Completion(text="positive", usage=Usage(1, 1), finish_reason="stop")

    def _chat(self, messages: list[Message], config: GenerationConfig) -> Completion:
        return self._complete("", config)

    def _perplexity_stats(self, text: str, stride: int | None) -> PerplexityStats:
        return PerplexityStats(tokens=2, nll_sum=2 * math.log(2.0))


class _Asked(list):
    """The specs asked for, in order, and (``options``) the options each was asked with."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[dict[str, object]] = []


@pytest.fixture
def specs(monkeypatch):
    """The specs the command line asked ``get_backend`` for, in order (no model is loaded)."""
    import promptkit.backends
    import promptkit.server

    asked = _Asked()

    def get_backend(spec: str | None = None, **options: object) -> Backend:
        assert spec is not None, "the command line must always name the spec it wants"
        asked.append(spec)
        asked.options.append(options)
        return _Recorded(spec)

    monkeypatch.setattr(promptkit.backends, "get_backend", get_backend)
    monkeypatch.setattr(promptkit.server, "create_app", lambda backend, **_: backend)
    monkeypatch.setattr(promptkit.server, "serve", lambda app, **_: None)
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    return asked


CONFIGURED = (
    "---\nname: configured\nmodel:\n  configuration: {type: openai, name: from-template}\n"
    "inputs: {text: {type: string}}\n---\n"
    "user:\n{{ text }}\n"
)


@pytest.mark.parametrize("command", ["run", "eval", "perplexity", "serve"])
def test_one_default_backend_rule_for_every_command(command, invoke, write, specs, monkeypatch):
    template = write("configured.prompty", CONFIGURED)
    data = write("d.jsonl", '{"text": "hi", "expected": "positive"}\n')
    text = write("t.txt", "some text")
    args = {
        "run": ["run", "sentiment", "-i", "text=hi", "--no-cache"],
        "eval": ["eval", "sentiment", "--data", str(data), "--no-cache", "--out", str(data.parent)],
        "perplexity": ["perplexity", str(text)],
        "serve": ["serve"],
    }[command]
    assert invoke(*args).exit_code == 0  # nothing configured: the shipped promptkit-mini
    monkeypatch.setenv("PROMPTKIT_BACKEND", "from-env")
    assert invoke(*args).exit_code == 0
    assert invoke(*args, "--backend", "explicit").exit_code == 0  # --backend beats the env
    assert specs == ["scratch", "from-env", "explicit"]
    if command in ("run", "eval"):  # a template's own backend: after the env, before the mini
        with_template = [template if a == "sentiment" else a for a in args]
        with_template = [str(a) for a in with_template]
        assert invoke(*with_template).exit_code == 0
        monkeypatch.delenv("PROMPTKIT_BACKEND")
        assert invoke(*with_template).exit_code == 0
        assert specs[3:] == ["from-env", "openai:from-template"]


@pytest.mark.parametrize("command", ["run", "eval", "perplexity", "serve"])
def test_backend_options_reach_the_backend_the_rule_picks(
    command, invoke, write, specs, monkeypatch
):
    template = write("configured.prompty", CONFIGURED)
    data = write("d.jsonl", '{"text": "hi", "expected": "positive"}\n')
    args = {
        "run": ["run", "sentiment", "-i", "text=hi", "--no-cache"],
        "eval": ["eval", "sentiment", "--data", str(data), "--no-cache", "--out", str(data.parent)],
        "perplexity": ["perplexity", str(write("t.txt", "some text"))],
        "serve": ["serve"],
    }[command]
    given = ["--backend-option", "prefix_cache_bytes=0", "--backend-option", "chat_template=False"]
    given += ["--backend-option", "device=cpu", "--backend-option", "timeout=2.5"]
    expected = {"prefix_cache_bytes": 0, "chat_template": False, "device": "cpu", "timeout": 2.5}
    assert invoke(*args, *given).exit_code == 0  # the shipped promptkit-mini
    assert invoke(*args, *given, "--backend", "explicit").exit_code == 0
    monkeypatch.setenv("PROMPTKIT_BACKEND", "from-env")
    assert invoke(*args, *given).exit_code == 0
    assert invoke(*args).exit_code == 0  # none given: none passed
    assert specs == ["scratch", "explicit", "from-env", "from-env"]
    assert specs.options == [expected, expected, expected, {}]
    if command in ("run", "eval"):  # a template's own backend gets them too
        monkeypatch.delenv("PROMPTKIT_BACKEND")
        with_template = [str(template) if a == "sentiment" else a for a in args]
        assert invoke(*with_template, "--backend-option", "base_url=http://h/v1").exit_code == 0
        assert specs[-1] == "openai:from-template"
        assert specs.options[-1] == {"base_url": "http://h/v1"}


@pytest.mark.parametrize(
    "option, message",
    [
        ("prefix_cache_bytes", "KEY=VALUE (such as prefix_cache_bytes=0); one was given without"),
        ("2x=1", "'2x'=...: the KEY must be an option name"),
        ("api_key=sk-do-not-print", "--backend-option api_key: secrets are not taken"),
        ("azure_ad_token=sk-do-not-print", "--backend-option azure_ad_token: secrets are not"),
        ("sk-do-not-print", "one was given without '='"),
    ],
)
def test_malformed_backend_options_are_one_line_usage_errors(invoke, specs, option, message):
    result = invoke("run", "sentiment", "-i", "text=hi", "--backend-option", option)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "do-not-print" not in result.output
    assert specs == []  # refused before any backend is built


def test_the_default_backend_s_note_names_the_options_it_is_built_with(invoke, write, specs):
    text = str(write("t.txt", "some text"))
    result = invoke("perplexity", text, "--backend-option", "dtype=int4")
    assert result.exit_code == 0
    assert result.stderr.strip().endswith("; with dtype='int4'")
    assert "; with" not in invoke("perplexity", text).stderr


def test_a_backend_option_given_twice_is_refused(invoke, write, specs):
    twice = ["--backend-option", "timeout=1", "--backend-option", "timeout=2"]
    result = invoke("perplexity", str(write("t.txt", "some text")), *twice)
    assert result.exit_code == 2 and "timeout is given twice" in result.stderr


@pytest.mark.parametrize(
    "option, message",
    [
        (
            "foo=1",
            "unknown option(s) for scripted: foo; it takes chat, context_window, json_schema",
        ),
        ("chat=no", "scripted: chat must be true or false, got str 'no'"),
    ],
)
def test_options_a_backend_does_not_take_are_one_line_errors(invoke, option, message):
    result = invoke(
        "run", "sentiment", "--sample", "--backend", "scripted", "--backend-option", option
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize("command", ["run", "eval", "perplexity", "serve"])
def test_help_describes_the_default_backend_as_it_is(command, invoke):
    text = " ".join(invoke(command, "--help").output.split()).replace("- ", "-")  # wrapped
    rule = "Default: $PROMPTKIT_BACKEND, else "
    if command in ("run", "eval"):
        rule += "the template's model.configuration, else "
    rule += "SmolLM2-135M-Instruct once pulled (`promptkit pull smollm2-135m-instruct`), else "
    assert rule + "the shipped promptkit-mini." in text


def _fake_pull(size: int | None = None) -> None:
    """Put a file of the default model's size where a pull would leave it (in the test's own
    cache directory): what the default rule checks (loading verifies the sha256)."""
    from promptkit.models._registry import lookup, pulled_path

    model = lookup("smollm2-135m-instruct")
    assert model is not None
    path = pulled_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(model.size if size is None else size)


def test_the_pulled_real_model_is_the_default_and_a_note_says_so(invoke, specs):
    first = invoke("run", "sentiment", "-i", "text=hi", "--no-cache")
    assert first.exit_code == 0
    assert "answered by promptkit-mini" in first.stderr
    assert "`promptkit pull smollm2-135m-instruct` (98 MB) gets a real model" in first.stderr
    _fake_pull(size=1000)  # a partial file is not the model
    assert invoke("run", "sentiment", "-i", "text=hi", "--no-cache").exit_code == 0
    _fake_pull()
    second = invoke("run", "sentiment", "-i", "text=hi", "--no-cache")
    assert second.exit_code == 0
    assert second.stderr.strip().splitlines() == [
        "promptkit: answered by scratch:smollm2-135m-instruct (the default; --backend or "
        "PROMPTKIT_BACKEND picks another)"
    ]
    assert invoke("run", "sentiment", "-i", "text=hi", "--backend", "x").stderr == ""
    assert specs == ["scratch", "scratch", "scratch:smollm2-135m-instruct", "x"]


_SCRATCH_ASKED: list[str] = []


def _scratch_recorder(arg: str, **options: object) -> Backend:
    """Stands in for the scratch backend's factory: records the argument, loads nothing."""
    _SCRATCH_ASKED.append(arg)
    return _Recorded(f"scratch:{arg}")


def test_python_default_is_the_pulled_model_and_the_fallback_warns(monkeypatch, caplog):
    import promptkit.backends as backends

    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    recorder = backends._BUILTIN["scratch"]._replace(module=__name__, factory="_scratch_recorder")
    monkeypatch.setitem(backends._BUILTIN, "scratch", recorder)
    _SCRATCH_ASKED.clear()
    with caplog.at_level("INFO", logger="promptkit"):
        assert backends.get_backend().name == "scratch:"
        _fake_pull()
        assert backends.get_backend().name == "scratch:smollm2-135m-instruct"
    assert _SCRATCH_ASKED == ["", "smollm2-135m-instruct"]
    fallback, real = caplog.records
    assert fallback.levelname == "WARNING" and "answered by promptkit-mini" in fallback.message
    assert "promptkit pull smollm2-135m-instruct" in fallback.message
    assert real.levelname == "INFO" and "scratch:smollm2-135m-instruct" in real.message


def test_no_backend_without_promptkit_mini_is_one_line(invoke, write, monkeypatch):
    import promptkit.models

    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    monkeypatch.setattr(promptkit.models, "mini_path", lambda: None)
    result = invoke("perplexity", str(write("t.txt", "some text")))
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: no backend configured and no model to fall back on: `promptkit pull "
        "smollm2-135m-instruct` (98 MB) gets a real model"
    )
    assert "model.configuration" not in result.stderr  # perplexity has no template
    result = invoke("run", "sentiment", "-i", "text=hi")
    assert result.exit_code == 2 and "declare model.configuration" in result.stderr


@pytest.mark.slow  # loads promptkit-mini: a few seconds on a busy machine
def test_perplexity_defaults_to_promptkit_mini(invoke, write, monkeypatch):
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    result = invoke("perplexity", str(write("t.txt", "The cat sat on the mat. " * 4)), "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["perplexity"] > 1 and figures["tokens"] > 10


TINY_TRAINING = ["--preset", "tiny", "--steps", "2", "--vocab-size", "300", "--batch-size", "2"]
TINY_TRAINING += ["--context-length", "16", "--eval-every", "2", "--device", "cpu"]


@pytest.mark.timeout(120)
def test_train_shows_its_phases_before_the_steps(invoke, write, tmp_path):
    corpus = write("corpus.txt", "the cat sat on the mat. " * 200)
    result = invoke("train", "--corpus", str(corpus), "--out", str(tmp_path / "m"), *TINY_TRAINING)
    assert result.exit_code == 0, result.output
    log = result.stderr
    tokenizer = log.index("training the tokenizer: a 300-token BPE on 1 document(s), 4,800 char")
    encoding = log.index("encoding the corpus ...")
    steps = log.index("step 2: loss")
    assert tokenizer < encoding < steps
    assert "0/2" not in log[:steps]  # no step counter while the tokenizer trains
    assert "saved" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--lr", "0"], "invalid training settings"),
        (["--corpus", "/no/such/corpus.txt"], "no corpus at '/no/such/corpus.txt'"),
    ],
)
def test_train_argument_errors_come_before_any_progress(invoke, write, tmp_path, args, message):
    corpus = write("corpus.txt", "the cat sat on the mat. " * 200)
    base = ["train", "--corpus", str(corpus), "--out", str(tmp_path / "m"), *TINY_TRAINING]
    result = invoke(*base, *args)
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_an_output_that_cannot_be_a_folder_is_refused_before_training(invoke, write, tmp_path):
    corpus = write("corpus.txt", "the cat sat on the mat. " * 200)
    afile = write("afile", "not a folder")
    for out, message in ((afile, "is a file"), ("/proc/promptkit-test", "cannot be created")):
        result = invoke("train", "--corpus", str(corpus), "--out", str(out), *TINY_TRAINING)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert "%" not in result.stderr and "step" not in result.stderr  # before any training


def test_train_never_overwrites_a_model_unless_resuming(invoke, write, tmp_path):
    corpus = write("corpus.txt", "the cat sat on the mat. " * 200)
    out = tmp_path / "m"
    args = ["train", "--corpus", str(corpus), "--out", str(out), *TINY_TRAINING]
    assert invoke(*args).exit_code == 0
    trained = (out / "model.safetensors").read_bytes()
    again = invoke(*args)
    assert again.exit_code == 2 and "already holds a model" in again.stderr
    assert (out / "model.safetensors").read_bytes() == trained


def test_file_system_errors_are_one_line(invoke, tmp_path):
    result = invoke("corpus", "--out", "/proc/promptkit-test/corpus.jsonl", "--documents", "2")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot use ")
    assert "internal error" not in result.stderr


def test_training_progress_shows_nothing_before_its_first_phase_and_times_each(capsys):
    from promptkit.training._progress import TrainingProgress

    with pytest.raises(ValueError), TrainingProgress(3):
        raise ValueError("bad settings")  # an error before any phase: nothing was shown
    assert capsys.readouterr().err == ""
    with TrainingProgress(3) as progress:
        progress.phase("writing the corpus: 5 documents")
        progress.phase("training: 3 steps of 8 tokens")
        for step in (1, 2, 3):
            progress.update(step, {"loss": 1.0, "tokens_per_s": 8.0})
    log = capsys.readouterr().err
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines[0] == "writing the corpus: 5 documents ..."
    assert lines[1].startswith("writing the corpus: 5 documents: done in ")
    assert lines[2] == "training: 3 steps of 8 tokens ..."
    assert "training: 3 steps of 8 tokens: done" not in log  # the steps' bar took over
    assert "3/3" in lines[-1] and "0/3" not in log


def test_serve_on_a_port_in_use_is_one_line_before_the_model_loads(invoke, specs):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", "--port", str(port))
    assert result.exit_code == 2
    assert (
        result.stderr.startswith("error: cannot serve on 127.0.0.1:") and "--port" in result.stderr
    )
    assert "serving" not in result.stderr and specs == []  # refused before the backend was made


def test_serve_warms_the_backend_up_before_the_first_request(invoke, specs, monkeypatch):
    """A compiled scratch backend compiles its steps then, saying so, not in a request."""
    warmed: list[str] = []

    def warm_up(self, announce=None):
        announce(f"{self.name}: compiling")
        warmed.append(self.name)

    monkeypatch.setattr(_Recorded, "warm_up", warm_up)
    result = invoke("serve", "--port", "0", "--backend", "compiled")
    assert result.exit_code == 0 and warmed == ["compiled"]
    lines = result.stderr.splitlines()
    assert lines[0] == "compiled: compiling" and lines[1].startswith("serving compiled")
