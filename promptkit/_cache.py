"""A response cache in SQLite: the same deterministic request is answered from disk.

Only deterministic requests are cached — temperature 0, or a fixed seed — keyed by the
backend's :meth:`~promptkit.backends.Backend.cache_identity` (everything besides the request that
decides an answer: for API backends the base URL, endpoint, deployment, API version and
organization, never the key; for local models the weights' fingerprint, the dtype and any
adapter) and the full request: prompt (text or messages) and every generation setting, grammar
included. Keys are SHA-256 digests; values are the completion's text, usage and finish reason.
Nothing else is stored: no API keys, no headers.

Several processes may share one file: SQLite's write-ahead log lets readers and a writer work
at once, each write is one short transaction, and a busy database is waited on (up to 30 s).
When the file grows past ``max_bytes`` the least recently used entries are evicted.

    backend = CachedBackend(pk.get_backend("hf:gpt2"), ResponseCache())
    prompt.run(inputs, backend=backend)     # a rerun makes no model call

The default location is ``$PROMPTKIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/promptkit`` (else
``~/.cache/promptkit``), file ``responses.sqlite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._cache_dir import cache_dir
from .backends._base import (
    Backend,
    BatchAPI,
    Completion,
    GenerationConfig,
    PerplexityStats,
    PromptInput,
    TokenLogprob,
    Usage,
)
from .backends._tool_calls import FunctionCall
from .errors import ConfigurationError

__all__ = [
    "CachedBackend",
    "ResponseCache",
    "cache_dir",
    "default_cache_path",
    "is_deterministic",
]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    size INTEGER NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_last_used ON responses (last_used);
"""


def default_cache_path() -> Path:
    """Where the cache lives unless told otherwise (see the module docstring)."""
    return cache_dir() / "responses.sqlite"


def is_deterministic(config: GenerationConfig) -> bool:
    """Whether a request always gives the same answer (greedy, or sampling with a seed)."""
    return config.temperature == 0 or config.seed is not None


def request_key(identity: Mapping[str, Any], prompt: PromptInput, config: GenerationConfig) -> str:
    """SHA-256 of the backend's cache identity (JSON data) and the full request."""
    settings = dataclasses.asdict(config)
    grammar = config.grammar
    settings["grammar"] = None if grammar is None else [grammar.kind, grammar.source]
    settings["stop"] = list(config.stop)
    payload = {
        "backend": dict(identity),
        "prompt": prompt if isinstance(prompt, str) else [dict(m) for m in prompt],
        "config": settings,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """Completions stored in one SQLite file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_bytes: int | None = None):
        self.path = Path(path) if path is not None else default_cache_path()
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        if self.max_bytes <= 0:
            raise ConfigurationError(f"max_bytes must be positive, got {self.max_bytes}")
        self.hits = 0
        self.misses = 0
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection().executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(
                f"cannot open the response cache at {str(self.path)!r}: {exc}; choose another "
                "place (PROMPTKIT_CACHE_DIR) or turn the cache off (--no-cache)"
            ) from None

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection())

    def get(self, key: str) -> Completion | None:
        row = (
            self._connection()
            .execute("SELECT value FROM responses WHERE key = ?", (key,))
            .fetchone()
        )
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        with self._transaction() as db:
            db.execute("UPDATE responses SET last_used = ? WHERE key = ?", (time.time(), key))
        data = json.loads(row[0])
        return Completion(
            text=data["text"],
            usage=Usage(**data["usage"]),
            finish_reason=data["finish_reason"],
            tool_calls=tuple(FunctionCall(**call) for call in data.get("tool_calls", [])),
        )

    def put(self, key: str, completion: Completion) -> None:
        value = json.dumps(
            {
                "text": completion.text,
                "usage": {
                    "prompt_tokens": completion.usage.prompt_tokens,
                    "completion_tokens": completion.usage.completion_tokens,
                },
                "finish_reason": completion.finish_reason,
                "tool_calls": [dict(call.as_data()) for call in completion.tool_calls],
            },
            ensure_ascii=False,
        )
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO responses (key, value, size, last_used) VALUES (?,?,?,?)",
                (key, value, len(key) + len(value.encode()), time.time()),
            )
            self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> None:
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]
        if total <= self.max_bytes:
            return
        excess = total - int(self.max_bytes * 0.9)  # make some room, not one entry at a time
        freed = 0
        keys = []
        for key, size in db.execute("SELECT key, size FROM responses ORDER BY last_used"):
            keys.append(key)
            freed += size
            if freed >= excess:
                break
        db.executemany("DELETE FROM responses WHERE key = ?", [(k,) for k in keys])

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def size_bytes(self) -> int:
        """Bytes of the stored entries (keys and values)."""
        row = self._connection().execute("SELECT COALESCE(SUM(size), 0) FROM responses")
        return int(row.fetchone()[0])

    def clear(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM responses")

    def close(self) -> None:
        """Close this thread's connection (a later call opens a new one)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def __repr__(self) -> str:
        return f"<ResponseCache {str(self.path)!r}>"


class _Transaction:
    """``with`` block around BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")


class CachedBackend(Backend):
    """A backend whose deterministic generations go through a :class:`ResponseCache`.

    ``generate`` and ``generate_batch`` are cached; every other method of the interface
    (streaming, scoring, token counting, closing) is passed to the wrapped backend as it is.
    ``calls`` counts the prompts that reached the wrapped backend.
    """

    def __init__(self, backend: Backend, cache: ResponseCache):
        self.backend = backend
        self.cache = cache
        self.name = backend.name
        self.capabilities = backend.capabilities
        self.context_window = backend.context_window
        self.calls = 0  # prompts that reached the wrapped backend

    def cache_identity(self) -> dict[str, Any]:
        """The wrapped backend's identity: a cache in front changes no answer."""
        return self.backend.cache_identity()

    def generate(self, prompt: PromptInput, config: GenerationConfig | None = None) -> Completion:
        config = config or GenerationConfig()
        if not is_deterministic(config):
            self.calls += 1
            return self.backend.generate(prompt, config)
        key = request_key(self.cache_identity(), prompt, config)
        found = self.cache.get(key)
        if found is not None:
            return found
        self.calls += 1
        completion = self.backend.generate(prompt, config)
        self.cache.put(key, completion)
        return completion

    def generate_batch(
        self, prompts: Sequence[str], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Answer the prompts asked before from the cache and send the rest to the wrapped
        backend as one batch (every prompt when sampling without a seed)."""
        config = config or GenerationConfig()
        if not is_deterministic(config):
            self.calls += len(prompts)
            return self.backend.generate_batch(prompts, config)
        identity = self.cache_identity()
        keys = [request_key(identity, prompt, config) for prompt in prompts]
        return self._cached(
            keys, lambda missing: self.backend.generate_batch([prompts[i] for i in missing], config)
        )

    def generate_samples(
        self, prompt: PromptInput, config: GenerationConfig, seeds: Sequence[int]
    ) -> list[Completion]:
        """Answer the seeds drawn before from the cache (each sample is deterministic under
        its seed) and draw the rest from the wrapped backend together."""
        identity = self.cache_identity()
        keys = [request_key(identity, prompt, config.replace(seed=seed)) for seed in seeds]
        return self._cached(
            keys,
            lambda missing: self.backend.generate_samples(
                prompt, config, [seeds[i] for i in missing]
            ),
        )

    def _cached(
        self, keys: list[str], draw: Callable[[list[int]], list[Completion]]
    ) -> list[Completion]:
        """The cached answer of each key; ``draw(missing)`` generates those of the missing
        positions together, and they are stored."""
        answers: list[Completion | None] = [self.cache.get(key) for key in keys]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        if missing:
            self.calls += len(missing)
            for i, completion in zip(missing, draw(missing), strict=True):
                self.cache.put(keys[i], completion)
                answers[i] = completion
        return [answer for answer in answers if answer is not None]

    async def agenerate(
        self, prompt: PromptInput, config: GenerationConfig | None = None
    ) -> Completion:
        """:meth:`generate` in a worker thread (the cache is synchronous)."""
        import asyncio

        return await asyncio.to_thread(self.generate, prompt, config)

    def stream(self, prompt: PromptInput, config: GenerationConfig | None = None) -> Iterator[str]:
        return self.backend.stream(prompt, config)

    def astream(
        self, prompt: PromptInput, config: GenerationConfig | None = None
    ) -> AsyncIterator[str]:
        return self.backend.astream(prompt, config)

    def loglikelihood(self, context: str, continuation: str) -> float:
        return self.backend.loglikelihood(context, continuation)

    def score_choices(self, context: str, choices: Sequence[str]) -> list[tuple[float, int]]:
        return self.backend.score_choices(context, choices)

    def token_logprobs(self, text: str) -> list[TokenLogprob]:
        return self.backend.token_logprobs(text)

    def perplexity(self, text: str, stride: int | None = None) -> float:
        return self.backend.perplexity(text, stride)

    def perplexity_stats(self, text: str, stride: int | None = None) -> PerplexityStats:
        return self.backend.perplexity_stats(text, stride)

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def batch_api(self) -> BatchAPI:
        """The wrapped backend's batch endpoint (its answers do not go through the cache)."""
        return self.backend.batch_api()

    def warm_up(self, announce: Callable[[str], None] | None = None) -> None:
        self.backend.warm_up(announce)

    def close(self) -> None:
        """Close the wrapped backend (the cache, which may be shared, stays open)."""
        self.backend.close()

    async def aclose(self) -> None:
        await self.backend.aclose()
