"""The SQLite response cache: deterministic requests only, keyed by everything, shared safely."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Literal

import pytest

import promptkit as pk
from promptkit.backends import GenerationConfig, ScriptedBackend
from promptkit.backends.base import Completion, Usage
from promptkit.cache import CachedBackend, ResponseCache, default_cache_path, request_key
from promptkit.errors import ConfigurationError
from promptkit.grammar import Grammar


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
    base = request_key("scratch:/m", "hi", GenerationConfig())
    assert request_key("scratch:/m", "hi", GenerationConfig()) == base
    different = [
        request_key("scratch:/other", "hi", GenerationConfig()),
        request_key("scratch:/m", "hi!", GenerationConfig()),
        request_key("scratch:/m", [{"role": "user", "content": "hi"}], GenerationConfig()),
        request_key("scratch:/m", "hi", GenerationConfig(max_tokens=7)),
        request_key("scratch:/m", "hi", GenerationConfig(stop=("\n",))),
        request_key("scratch:/m", "hi", GenerationConfig(grammar=Grammar("regex", "a+"))),
        request_key("scratch:/m", "hi", GenerationConfig(grammar=Grammar("regex", "b+"))),
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

        def score_choices(self, context: str, choices: list[str]) -> list[tuple[float, int]]:
            return [(-1.0, 1) for _ in choices]

    backend = CachedBackend(Counting([], context_window=10), cache)
    assert backend.count_tokens("x") == 1000 and backend.context_window == 10
    assert backend.score_choices("a", ["b"]) == [(-1.0, 1)]
