"""The SQLite response cache: deterministic requests only, keyed by everything, shared safely."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

import promptkit as pk
from promptkit._cache import CachedBackend, ResponseCache, default_cache_path, request_key
from promptkit._grammar import Grammar
from promptkit.backends import Backend, Capabilities, GenerationConfig, ScriptedBackend
from promptkit.backends._base import Completion, PerplexityStats, TokenLogprob, Usage
from promptkit.errors import ConfigurationError


@pytest.fixture
def cache(tmp_path: Path) -> ResponseCache:
    return ResponseCache(tmp_path / "cache.sqlite")


def test_deterministic_requests_are_answered_from_the_cache(cache):
    backend = CachedBackend(ScriptedBackend(["first", "second"]), cache)
    greedy = GenerationConfig(max_tokens=5)
    assert backend.generate("hello", greedy).text == "first"
    assert backend.generate("hello", greedy).text == "first"  # the scripted "second" unused
    assert backend.calls == 1 and cache.hits == 1
    seeded = GenerationConfig(temperature=0.8, seed=3)
    assert backend.generate("hello", seeded).text == "second"
    assert backend.generate("hello", seeded).text == "second"
    assert backend.calls == 2


def test_sampling_without_a_seed_is_never_cached(cache):
    backend = CachedBackend(ScriptedBackend(["a", "b"]), cache)
    config = GenerationConfig(temperature=0.7)
    assert [backend.generate("x", config).text for _ in range(2)] == ["a", "b"]
    assert len(cache) == 0


def test_the_key_covers_backend_prompt_and_every_setting():
    backend = {"name": "scratch:/m"}
    base = request_key(backend, "hi", GenerationConfig())
    assert request_key({"name": "scratch:/m"}, "hi", GenerationConfig()) == base
    different = [
        request_key({"name": "scratch:/other"}, "hi", GenerationConfig()),
        request_key({"name": "scratch:/m", "dtype": "bfloat16"}, "hi", GenerationConfig()),
        request_key(backend, "hi!", GenerationConfig()),
        request_key(backend, [{"role": "user", "content": "hi"}], GenerationConfig()),
        request_key(backend, "hi", GenerationConfig(max_tokens=7)),
        request_key(backend, "hi", GenerationConfig(stop=("\n",))),
        request_key(backend, "hi", GenerationConfig(grammar=Grammar("regex", "a+"))),
        request_key(backend, "hi", GenerationConfig(grammar=Grammar("regex", "b+"))),
    ]
    assert len({base, *different}) == len(different) + 1


def test_entries_persist_and_usage_survives(tmp_path):
    path = tmp_path / "c.sqlite"
    completion = Completion("text", Usage(3, 4), "length")
    ResponseCache(path).put("k", completion)
    assert ResponseCache(path).get("k") == completion


def test_size_limit_evicts_least_recently_used(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite", max_bytes=2000)
    for i in range(20):
        cache.put(f"key{i}", Completion("x" * 100))
        cache.get("key0")  # keep touching the first one
    assert cache.size_bytes() <= 2000
    assert cache.get("key0") is not None
    assert cache.get("key1") is None
    with pytest.raises(ConfigurationError, match="max_bytes"):
        ResponseCache(tmp_path / "d.sqlite", max_bytes=0)


def _writer(path: str, worker: int) -> None:
    cache = ResponseCache(path)
    for i in range(40):
        cache.put(f"{worker}-{i}", Completion(f"answer {worker} {i}"))
        cache.get(f"{worker}-{i // 2}")


def test_several_processes_share_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ResponseCache(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    cache = ResponseCache(path)
    assert len(cache) == 160
    assert cache.get("3-39") == Completion("answer 3 39")
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_prompt_runs_through_the_cache(cache):
    prompt = pk.Prompt(query="{{ q }}", output_type=Literal["yes", "no"])
    backend = CachedBackend(ScriptedBackend(["yes"]), cache)
    first = prompt.run({"q": "?"}, backend=backend)
    again = prompt.run({"q": "?"}, backend=backend)
    assert first.output == again.output == "yes" and backend.calls == 1
    assert repr(backend) == "<CachedBackend 'scripted'>"


def test_unusable_location_is_a_configuration_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="cannot open the response cache"):
        ResponseCache(blocker / "cache.sqlite")


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTKIT_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "responses.sqlite"
    monkeypatch.delenv("PROMPTKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "promptkit" / "responses.sqlite"


def test_cli_run_answers_a_repeated_request_from_the_cache(tmp_path):
    from click.testing import CliRunner

    from promptkit.cli import cli

    replies = tmp_path / "replies.json"
    replies.write_text('["positive"]')
    args = ["run", "sentiment", "--sample", "--backend", f"scripted:{replies}"]
    assert CliRunner().invoke(cli, args).output.strip() == "positive"
    replies.write_text("[]")  # nothing left to answer with: only the cache can
    assert CliRunner().invoke(cli, args).output.strip() == "positive"
    refused = CliRunner().invoke(cli, [*args, "--no-cache"])
    assert refused.exit_code == 4 and "ran out of scripted replies" in refused.output


def test_the_wrapper_counts_tokens_like_the_wrapped_backend(cache):
    class Counting(ScriptedBackend):
        def count_tokens(self, text: str) -> int:
            return 1000

        def score_choices(self, context: str, choices: Sequence[str]) -> list[tuple[float, int]]:
            return [(-1.0, 1) for _ in choices]

    backend = CachedBackend(Counting([], context_window=10), cache)
    assert backend.count_tokens("x") == 1000 and backend.context_window == 10
    assert backend.score_choices("a", ["b"]) == [(-1.0, 1)]


def test_a_batch_goes_through_the_cache(cache):
    scripted = ScriptedBackend(["one", "two", "three"])
    backend = CachedBackend(scripted, cache)
    greedy = GenerationConfig(max_tokens=5)
    assert backend.generate("b", greedy).text == "one"  # cached before the batch
    batch = backend.generate_batch(["a", "b", "c"], greedy)
    assert [c.text for c in batch] == ["two", "one", "three"]
    assert [r.prompt for r in scripted.requests] == ["b", "a", "c"]  # "b" came from the cache
    again = backend.generate_batch(["c", "a"], greedy)
    assert [c.text for c in again] == ["three", "two"] and len(scripted.requests) == 3
    assert backend.calls == 3 and len(cache) == 3


def test_samples_are_cached_one_per_seed(cache):
    scripted = ScriptedBackend(["s1", "s2", "s3"])
    backend = CachedBackend(scripted, cache)
    sampled = GenerationConfig(max_tokens=5, temperature=0.8)
    assert backend.generate("p", sampled.replace(seed=2)).text == "s1"  # seed 2 drawn before
    drawn = backend.generate_samples("p", sampled, [1, 2, 3])
    assert [c.text for c in drawn] == ["s2", "s1", "s3"]
    assert [r.config.seed for r in scripted.requests] == [2, 1, 3]  # only the missing seeds
    again = backend.generate_samples("p", sampled, [3, 1])
    assert [c.text for c in again] == ["s3", "s2"] and backend.calls == 3 and len(cache) == 3


def test_a_batch_sampled_without_a_seed_skips_the_cache(cache):
    backend = CachedBackend(ScriptedBackend(["x", "y"]), cache)
    sampled = GenerationConfig(temperature=0.9)
    assert [c.text for c in backend.generate_batch(["a", "a"], sampled)] == ["x", "y"]
    assert len(cache) == 0 and backend.calls == 2


def test_the_wrapper_delegates_every_method_of_the_interface(cache):
    """Each public method of Backend is written out on CachedBackend (no __getattr__), so
    nothing the interface declares bypasses the wrapper or reaches the wrapped backend's
    defaults instead of its own methods."""
    declared = {
        name
        for name, value in vars(Backend).items()
        if callable(value) and not name.startswith("_") and name != "require"
    }
    assert declared <= set(vars(CachedBackend)), declared - set(vars(CachedBackend))
    assert "__getattr__" not in vars(CachedBackend)

    class Scoring(ScriptedBackend):
        def __init__(self) -> None:
            super().__init__([])
            self.capabilities = Capabilities(
                loglikelihood=True, perplexity=True, token_logprobs=True
            )
            self.closed = False

        def _loglikelihood(self, context: str, continuation: str) -> float:
            return -float(len(continuation))

        def _token_logprobs(self, text: str) -> list[TokenLogprob]:
            return [TokenLogprob(text, None, 0)]

        def _perplexity_stats(self, text: str, stride: int | None) -> PerplexityStats:
            return PerplexityStats(tokens=2, nll_sum=2.0)

        def cache_identity(self) -> dict[str, Any]:
            return {"name": self.name, "weights": "v2"}

        def close(self) -> None:
            self.closed = True

    inner = Scoring()
    backend = CachedBackend(inner, cache)
    assert backend.loglikelihood("a", "bc") == -2.0
    assert backend.score_choices("a", ["b", "cde"]) == [(-1.0, 1), (-3.0, 3)]
    assert backend.token_logprobs("hi") == [TokenLogprob("hi", None, 0)]
    assert backend.perplexity_stats("hi").tokens == 2
    assert backend.perplexity("hi") == pytest.approx(2.718281828)
    assert backend.cache_identity() == {"name": "scripted", "weights": "v2"}
    backend.close()
    assert inner.closed


def test_the_default_identity_names_the_class_and_the_backend():
    identity = ScriptedBackend([], name="mine").cache_identity()
    assert identity == {"class": "promptkit.backends._scripted.ScriptedBackend", "name": "mine"}


def test_the_identity_of_an_api_backend_holds_where_it_sends_and_never_the_key():
    openai = pytest.importorskip("openai")
    from promptkit.backends._openai import OpenAIBackend
    from promptkit.backends._openai_spec import azure_from_spec, from_spec

    key = "sk-live-abcdefghijklmnop123456"

    def identity(**options: Any) -> dict[str, Any]:
        backend = from_spec("m", api_key=key, **options)
        backend.close()
        return backend.cache_identity()

    first = identity(base_url="http://127.0.0.1:8000/v1")
    others = [
        identity(base_url="http://127.0.0.1:1/v1"),
        identity(base_url="http://127.0.0.1:8000/v1", organization="org-2"),
        identity(base_url="http://127.0.0.1:8000/v1", completions=True),
    ]
    assert first["base_url"] == "http://127.0.0.1:8000/v1/"
    assert all(other != first for other in others)
    azure = [
        azure_from_spec("dep", endpoint="https://a.example", api_key=key, api_version=v)
        for v in ("2024-06-01", "2024-10-21")
    ]
    ids = [a.cache_identity() for a in azure]
    assert ids[0]["api_version"] == "2024-06-01" and ids[0] != ids[1]
    assert ids[0]["base_url"].startswith("https://a.example") and ids[0]["model"] == "dep"
    for backend in azure:
        backend.close()
    client = openai.OpenAI(api_key=key, base_url="http://h/v1", project="p1")
    assert OpenAIBackend("m", client=client).cache_identity()["project"] == "p1"
    client.close()
    for found in (first, *others, *ids):
        assert key not in json.dumps(found) and "abcdefghij" not in json.dumps(found)


@pytest.mark.timeout(60)
def test_a_cached_answer_for_one_server_is_not_served_for_another(tmp_path, monkeypatch):
    """`promptkit run sentiment` answered (and cached) by one server; pointed at a dead one
    (port 1), it must fail rather than print the cached answer."""
    pytest.importorskip("openai")
    fastapi = pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from click.testing import CliRunner
    from fastapi.responses import JSONResponse
    from servers import serve_in_thread

    from promptkit.cli import cli

    app = fastapi.FastAPI()
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "positive"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }

    @app.post("/v1/chat/completions")
    async def chat() -> Any:
        return JSONResponse(answer)

    monkeypatch.setenv("PROMPTKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    args = ["run", "sentiment", "--sample", "--backend", "openai:m"]
    with serve_in_thread(app) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")
        served = CliRunner().invoke(cli, args)
        assert (served.exit_code, served.output.strip()) == (0, "positive")
        assert CliRunner().invoke(cli, args).output.strip() == "positive"  # now from the cache
    assert len(ResponseCache(tmp_path / "responses.sqlite")) == 1
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    dead = CliRunner().invoke(cli, args)
    assert dead.exit_code != 0 and "positive" not in dead.output
    assert "cannot connect" in dead.output
