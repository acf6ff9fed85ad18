from __future__ import annotations

import asyncio
import json
import math

import pytest
from pydantic import BaseModel

import promptkit as pk
from promptkit._grammar import Grammar
from promptkit.backends import Backend, Capabilities, Completion, GenerationConfig, ScriptedBackend
from promptkit.backends._base import PerplexityStats, cut_at_stop, messages_to_text
from promptkit.errors import (
    BackendError,
    ConfigurationError,
    InputValidationError,
    UnsupportedCapabilityError,
)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"stop": [""]}, "stop"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_generation_config_rejects_bad_values(options, match):
    with pytest.raises(ConfigurationError, match=match):
        GenerationConfig(**options)


def test_generation_config_normalises_stop_and_replaces():
    config = GenerationConfig(stop="\n")
    assert config.stop == ("\n",)
    assert config.replace(max_tokens=5).max_tokens == 5
    with pytest.raises(ConfigurationError):
        config.replace(max_tokens=-1)


def test_scripted_backend_records_requests_and_cuts_at_stop():
    backend = ScriptedBackend(["hello world\nmore", "second"])
    completion = backend.generate("Say hi", GenerationConfig(stop=("\n",)))
    assert completion.text == "hello world"
    assert completion.usage.prompt_tokens == 2 and completion.usage.completion_tokens == 2
    backend.generate([{"role": "user", "content": "again"}])
    assert [r.prompt for r in backend.requests] == [
        "Say hi",
        [{"role": "user", "content": "again"}],
    ]
    assert backend.remaining == 0
    with pytest.raises(BackendError, match="ran out of scripted replies after 2"):
        backend.generate("third")


def test_scripted_backend_replies_can_be_callables_or_exceptions():
    backend = ScriptedBackend([lambda r: r.prompt.upper(), ValueError("boom")])
    assert backend.generate("abc").text == "ABC"
    with pytest.raises(ValueError, match="boom"):
        backend.generate("x")
    backend.enqueue("late")
    assert backend.generate("x").text == "late"


def test_streaming_joins_back_to_the_reply():
    backend = ScriptedBackend(["one  two three"])
    pieces = list(backend.stream("go"))
    assert len(pieces) == 3 and "".join(pieces) == "one  two three"


def test_agenerate():
    backend = ScriptedBackend(["async"])
    assert asyncio.run(backend.agenerate("x")).text == "async"


def test_chat_messages_are_flattened_for_completion_only_backends():
    backend = ScriptedBackend(["ok"], chat=False)
    backend.generate([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert backend.requests[0].prompt == "System: S\n\nUser: U\n\nAssistant:"
    assert messages_to_text([]) == "Assistant:"


def test_text_is_wrapped_as_a_user_message_for_chat_only_backends():
    class ChatOnly(Backend):
        name = "chat-only"
        capabilities = Capabilities(completion=False, chat=True)

        def _chat(self, messages, config):
            return Completion(text=json.dumps(messages))

    assert json.loads(ChatOnly().generate("hi").text) == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "prompt", ["", [], [{"role": "wizard", "content": "x"}], [{"role": "user"}], 42]
)
def test_bad_prompts_are_input_errors(prompt):
    with pytest.raises(InputValidationError):
        ScriptedBackend(["x"]).generate(prompt)


def test_missing_capabilities_name_backend_and_capability():
    backend = ScriptedBackend([], name="mock")
    with pytest.raises(UnsupportedCapabilityError) as info:
        backend.loglikelihood("a", "b")
    assert info.value.backend == "mock" and info.value.capability == "loglikelihood"
    assert "'mock' does not support loglikelihood" in str(info.value)
    with pytest.raises(UnsupportedCapabilityError, match="perplexity"):
        backend.perplexity("text")


def test_cut_at_stop_uses_the_earliest_stop():
    assert cut_at_stop("a.b!c", [".", "!"]) == ("a", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def test_get_backend_scripted_with_options_and_files(tmp_path):
    backend = pk.get_backend("scripted", replies=["a"])
    assert isinstance(backend, ScriptedBackend) and backend.generate("x").text == "a"
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(["from file"]))
    assert pk.get_backend(f"scripted:{path}").generate("x").text == "from file"
    path.write_text('"line one"\n\n"line two"\n')
    assert pk.get_backend(f"scripted:{path}").remaining == 2
    path.write_text('"ok"\nnot json\n')
    with pytest.raises(ConfigurationError, match="line 2"):
        pk.get_backend(f"scripted:{path}")
    with pytest.raises(ConfigurationError, match="cannot read"):
        pk.get_backend(f"scripted:{tmp_path / 'missing.json'}")


@pytest.mark.parametrize("spec", ["nope:model", "", "  "])
def test_unknown_backend_specs(spec):
    with pytest.raises(ConfigurationError):
        pk.get_backend(spec)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match="known: .*scripted"):
        pk.get_backend("nope")


def test_missing_dependency_names_the_extra(monkeypatch):
    from promptkit import backends

    monkeypatch.setitem(
        backends._BUILTIN,
        "fake",
        backends._Builtin("promptkit_missing_module_for_test", "make", "local", "fake:PATH"),
    )
    with pytest.raises(ConfigurationError, match=r"pip install 'promptkit\[local\]'"):
        pk.get_backend("fake:x")


def test_repr_has_no_secrets():
    assert repr(ScriptedBackend([], name="mine")) == "<ScriptedBackend 'mine'>"


OBJECT = Grammar.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
NUMBER = Grammar.json_schema({"type": "integer"})


def test_the_grammar_rule_is_written_once_on_capabilities():
    masks = Capabilities(token_masks=True)
    api = Capabilities(chat=True, json_schema=True)
    plain = Capabilities(chat=True)
    regex = Grammar("regex", "a+")
    assert all(masks.enforces(g, chat=c) for g in (OBJECT, NUMBER, regex) for c in (True, False))
    assert api.enforces(OBJECT, chat=True)
    assert not api.enforces(OBJECT, chat=False)  # structured output exists only for chat
    assert not api.enforces(NUMBER, chat=True)  # ... and only for objects
    assert not api.enforces(regex, chat=True)
    assert not plain.enforces(OBJECT, chat=True)


def test_a_backend_refuses_a_grammar_it_cannot_enforce():
    backend = ScriptedBackend(["{}", "{}"], json_schema=True)
    chat = [{"role": "user", "content": "x"}]
    assert backend.generate(chat, GenerationConfig(grammar=OBJECT)).text == "{}"
    with pytest.raises(UnsupportedCapabilityError, match="token_masks; structured output"):
        backend.generate("x", GenerationConfig(grammar=OBJECT))  # text goes to completion
    with pytest.raises(UnsupportedCapabilityError, match="token_masks"):
        backend.generate(chat, GenerationConfig(grammar=NUMBER))
    with pytest.raises(UnsupportedCapabilityError, match=r"token_masks; use a backend with"):
        ScriptedBackend(["{}"]).generate(chat, GenerationConfig(grammar=OBJECT))


class Point(BaseModel):
    x: int
    y: int


@pytest.mark.parametrize(
    "output_type, style, chat, constrained",
    [
        (Point, "chat", True, True),  # an object, as chat, to a backend with structured output
        (Point, "completion", True, False),  # a completion prompt: no response_format
        (Point, "chat", False, False),  # the backend takes no chat: flattened to completion
        (int, "chat", True, False),  # not an object
    ],
)
def test_prompts_follow_the_same_rule(output_type, style, chat, constrained):
    prompt = pk.Prompt(query="{{ q }}", output_type=output_type, style=style)
    backend = ScriptedBackend(['{"x": 1, "y": 2}' if output_type is Point else "3"], chat=chat)
    backend.capabilities = Capabilities(completion=True, chat=chat, json_schema=True)
    prompt.run({"q": "?"}, backend=backend)
    grammar = backend.requests[0].config.grammar
    assert (grammar is not None) == constrained
    assert (prompt.constraint(backend) is not None) == (output_type is Point)


def test_declared_defaults_work_on_any_backend():
    class Scoring(ScriptedBackend):
        def __init__(self) -> None:
            super().__init__(["a", "b"])
            self.capabilities = Capabilities(completion=True, loglikelihood=True)

        def _loglikelihood(self, context: str, continuation: str) -> float:
            return -float(len(continuation))

    backend = Scoring()
    batch = backend.generate_batch(["p", "q"], GenerationConfig(max_tokens=3))
    assert [c.text for c in batch] == ["a", "b"] and not backend.capabilities.batching
    assert backend.score_choices("ctx", ["x", "yyy"]) == [(-1.0, 1), (-3.0, 3)]
    with pytest.raises(InputValidationError, match="choice 1 is empty"):
        backend.score_choices("ctx", ["x", ""])
    with pytest.raises(InputValidationError, match="at least one choice"):
        backend.score_choices("ctx", "xyz")
    assert pk.multiple_choice("ctx", ["yy", "z"], backend=backend).choice == "z"
    with pytest.raises(UnsupportedCapabilityError, match="token_logprobs"):
        backend.token_logprobs("some text")
    with pytest.raises(UnsupportedCapabilityError, match="perplexity"):
        backend.perplexity_stats("some text")
    with pytest.raises(UnsupportedCapabilityError, match="loglikelihood"):
        ScriptedBackend([]).score_choices("ctx", ["x"])
    backend.close()
    asyncio.run(backend.aclose())


def test_perplexity_comes_from_the_declared_statistics():
    class Stats(ScriptedBackend):
        def __init__(self) -> None:
            super().__init__([])
            self.capabilities = Capabilities(perplexity=True)

        def _perplexity_stats(self, text: str, stride: int | None) -> PerplexityStats:
            return PerplexityStats(tokens=4, nll_sum=4 * math.log(3.0))

    backend = Stats()
    assert backend.perplexity("abc") == pytest.approx(3.0)
    assert backend.perplexity_stats("abc", stride=2).mean_nll == pytest.approx(math.log(3.0))
    with pytest.raises(InputValidationError, match="stride must be a positive integer"):
        backend.perplexity_stats("abc", stride=0)
    assert PerplexityStats(tokens=1, nll_sum=float("nan")).perplexity == math.inf
    assert PerplexityStats(tokens=1, nll_sum=1e6).perplexity == math.inf


def test_the_perplexity_command_asks_the_declared_method(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from promptkit import cli as cli_module

    class Stats(ScriptedBackend):
        def __init__(self) -> None:
            super().__init__([])
            self.capabilities = Capabilities(perplexity=True)

        def _perplexity_stats(self, text: str, stride: int | None) -> PerplexityStats:
            return PerplexityStats(tokens=len(text.split()), nll_sum=float(stride or 1))

    text = tmp_path / "text.txt"
    text.write_text("one two three four")
    runner = CliRunner()
    refused = runner.invoke(cli_module.cli, ["perplexity", str(text), "--backend", "scripted"])
    assert refused.exit_code != 0
    assert "'scripted' does not support perplexity" in refused.output
    monkeypatch.setattr("promptkit.backends.get_backend", lambda spec: Stats())
    done = runner.invoke(cli_module.cli, ["perplexity", str(text), "--backend", "x", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"tokens": 4, "mean_nll": 0.25, "perplexity": math.exp(0.25)}
