"""Prefix caching across requests: the keys and values of prompts already run, reused by later
prompts that start with the same tokens (a few-shot run computes its instruction and
demonstrations once, a server its system prompt once).

A :class:`PrefixCache` is a radix tree over token ids (as SGLang's RadixAttention): each node
holds a run of tokens and, for those positions, every layer's keys and values (and the inputs of
the local convolution, for models that have one), sequence first. A lookup walks the tree along
a prompt's ids and returns the pieces of the longest cached prefix; an insertion stores the part
of a prompt that is not cached yet, splitting a node where the prompt leaves it. The tree never
holds more than ``max_bytes`` of tensors: after an insertion, the least recently used leaves are
evicted until it fits (a node's ancestors are used whenever it is, so they outlive it).

Stored tensors are never written again (a split copies both halves), so a lookup hands out the
tensors themselves and copies them into the request's cache outside the lock; one lock guards
the tree and the counters, so threads may share a cache.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from ...errors import ConfigurationError
from .gpt2 import GPT, KVCache
from .llama import Llama

__all__ = [
    "DEFAULT_PREFIX_CACHE_BYTES",
    "CachedPrefix",
    "PrefixCache",
    "PrefixCacheStats",
    "check_budget",
    "prefill_from_cache",
    "prefill_shared_start",
    "reuse_prefixes",
    "store_prefixes",
    "weights_version",
]

DEFAULT_PREFIX_CACHE_BYTES = 256 * 2**20  # ScratchBackend's default budget (256 MiB)
SHARED_START_MIN = 16  # fewest uncached tokens a batch's rows share for a pass of their own

Slab = list[torch.Tensor]  # the tensors of a run of positions, each ``(length, ...)``


@dataclass(frozen=True)
class PrefixCacheStats:
    """What a :class:`PrefixCache` has done since it was made (or last cleared)."""

    lookups: int  # prompts looked up
    hits: int  # prompts that reused at least one cached token
    tokens_reused: int  # prompt tokens whose keys and values came from the cache
    tokens_computed: int  # prompt tokens run through the model
    evictions: int  # nodes evicted to stay within max_bytes
    bytes: int  # bytes of tensors held now
    max_bytes: int  # the budget


@dataclass(frozen=True)
class CachedPrefix:
    """The cached part of one prompt: its first ``length`` tokens, as pieces of slabs."""

    length: int
    pieces: tuple[tuple[Slab, int], ...]  # (a node's slab, how many of its positions to take)

    def write(self, targets: Sequence[torch.Tensor], start: int, count: int) -> None:
        """Copy the first ``count`` cached positions into ``targets`` (one per slab tensor,
        sequence first) from position ``start`` on."""
        done = 0
        for slab, taken in self.pieces:
            take = min(taken, count - done)
            if take <= 0:
                return
            for target, source in zip(targets, slab, strict=True):
                target[start + done : start + done + take] = source[:take]
            done += take


_NOTHING = CachedPrefix(0, ())


class _Node:
    """A run of tokens after its parent's, with their slab."""

    __slots__ = ("children", "ids", "last_used", "nbytes", "parent", "slab")

    def __init__(self, ids: tuple[int, ...], slab: Slab, parent: _Node | None, used: int):
        self.ids = ids
        self.slab = slab
        self.parent = parent
        self.children: dict[int, _Node] = {}  # by first token
        self.last_used = used
        self.nbytes = sum(t.numel() * t.element_size() for t in slab)


def check_budget(max_bytes: object) -> int:
    """``max_bytes`` if it is a valid budget (a non-negative integer); raises
    ConfigurationError naming ``prefix_cache_bytes`` otherwise."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigurationError(
            "prefix_cache_bytes must be a non-negative integer number of bytes (0 disables the "
            f"prefix cache), got {max_bytes!r}"
        )
    return max_bytes


def _common_length(ids: tuple[int, ...], prompt: Sequence[int], start: int, limit: int) -> int:
    """How many of ``ids`` equal ``prompt[start:]``, stopping at position ``limit``."""
    span = min(len(ids), limit - start)
    if span <= 0:
        return 0
    if tuple(prompt[start : start + span]) == ids[:span]:
        return span
    return next(i for i in range(span) if ids[i] != prompt[start + i])


class PrefixCache:
    """Keys and values of prompt prefixes shared across requests, bounded by ``max_bytes``
    (0 disables storing; the token counters still count). See the module docstring.

    ``owner`` is what the stored tensors were computed from (the model's weights version): a
    call to :meth:`check_owner` with a different one empties the cache, so changed weights are
    never answered from the old ones' keys and values.

    Raises ConfigurationError for a ``max_bytes`` that is not a non-negative integer.
    """

    def __init__(self, max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES):
        self.max_bytes = check_budget(max_bytes)
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self._root = _Node((), [], None, 0)
        self._leaves: set[_Node] = set()
        self._bytes = 0
        self._owner: Any = None
        self._counts = dict.fromkeys(
            ("lookups", "hits", "tokens_reused", "tokens_computed", "evictions"), 0
        )

    def stats(self) -> PrefixCacheStats:
        """The counters and the bytes held now."""
        with self._lock:
            return PrefixCacheStats(**self._counts, bytes=self._bytes, max_bytes=self.max_bytes)

    def clear(self) -> None:
        """Drop every stored prefix and reset the counters."""
        with self._lock:
            self._drop_all()
            self._counts = dict.fromkeys(self._counts, 0)

    def check_owner(self, owner: Any) -> None:
        """Empty the cache if its prefixes were computed by another ``owner`` (weights)."""
        with self._lock:
            if owner != self._owner:
                self._drop_all()
                self._owner = owner

    def lookup(self, prompt: Sequence[int], limit: int) -> CachedPrefix:
        """The longest cached prefix of ``prompt``, at most ``limit`` tokens long (a prompt
        needs at least its last token computed, for the logits that follow it)."""
        with self._lock:
            self._counts["lookups"] += 1
            if not self.max_bytes:
                return _NOTHING
            return self._walk(prompt, limit, next(self._clock))

    def cached_length(self, prompt: Sequence[int]) -> int:
        """How many of ``prompt``'s first tokens are cached (not counted as a lookup, and not
        a use of them)."""
        with self._lock:
            return self._walk(prompt, len(prompt), None).length

    def _walk(self, prompt: Sequence[int], limit: int, now: int | None) -> CachedPrefix:
        """Follow ``prompt`` down the tree (marking the nodes used at ``now``, if given)."""
        node, length, pieces = self._root, 0, []
        while length < limit:
            child = node.children.get(prompt[length])
            if child is None:
                break
            same = _common_length(child.ids, prompt, length, limit)
            if now is not None:
                child.last_used = now
            pieces.append((child.slab, same))
            length += same
            if same < len(child.ids):
                break
            node = child
        return CachedPrefix(length, tuple(pieces))

    def record(self, reused: Sequence[int], computed: Sequence[int]) -> None:
        """Count the prompt tokens that one forward pass took from the cache and computed."""
        with self._lock:
            self._counts["hits"] += sum(1 for n in reused if n > 0)
            self._counts["tokens_reused"] += sum(reused)
            self._counts["tokens_computed"] += sum(computed)

    def insert(self, prompt: Sequence[int], slab_of: Callable[[int, int], Slab]) -> None:
        """Store ``prompt``'s keys and values: ``slab_of(start, stop)`` gives those of its
        positions ``start..stop-1`` (called only for the part not cached yet, and copied, so
        it may return views of a request's cache). Then evict down to ``max_bytes``."""
        if not self.max_bytes or not prompt:
            return
        with self._lock:
            now = next(self._clock)
            node, length = self._root, 0
            while length < len(prompt):
                child = node.children.get(prompt[length])
                if child is None:
                    break
                same = _common_length(child.ids, prompt, length, len(prompt))
                if same < len(child.ids):
                    child = self._split(child, same)
                child.last_used = now
                node, length = child, length + same
            if length == len(prompt):
                return
            slab = [t.clone() for t in slab_of(length, len(prompt))]
            leaf = _Node(tuple(prompt[length:]), slab, node, now)
            if leaf.nbytes > self.max_bytes:
                return  # it could only push everything else out and then itself
            node.children[leaf.ids[0]] = leaf
            self._leaves.discard(node)
            self._leaves.add(leaf)
            self._bytes += leaf.nbytes
            while self._bytes > self.max_bytes:
                self._evict(min(self._leaves, key=lambda n: n.last_used))

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut ``node`` after ``at`` tokens: a new parent holds the first ``at``, ``node`` keeps
        the rest (both copied, so neither keeps the other's memory alive)."""
        parent = node.parent
        assert parent is not None  # the root is never split
        head = _Node(node.ids[:at], [t[:at].clone() for t in node.slab], parent, node.last_used)
        node.ids = node.ids[at:]
        node.slab = [t[at:].clone() for t in node.slab]
        node.nbytes -= head.nbytes
        node.parent = head
        head.children[node.ids[0]] = node
        parent.children[head.ids[0]] = head
        return head

    def _evict(self, leaf: _Node) -> None:
        parent = leaf.parent
        assert parent is not None
        del parent.children[leaf.ids[0]]
        self._leaves.discard(leaf)
        self._bytes -= leaf.nbytes
        self._counts["evictions"] += 1
        if not parent.children and parent is not self._root:
            self._leaves.add(parent)

    def _drop_all(self) -> None:
        self._root = _Node((), [], None, 0)
        self._leaves = set()
        self._bytes = 0


def weights_version(model: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Where each weight lives and how often it was changed in place: differs after training
    steps, merged adapters, reloaded or moved weights (the owner of a model's prefixes)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _row_views(cache: KVCache, row: int) -> Slab:
    """Sequence-first views of one row of ``cache``: every layer's keys, values and inputs."""
    keys = [k[row].transpose(0, 1) for k in cache.keys]  # (capacity, nh, hs) each
    values = [v[row].transpose(0, 1) for v in cache.values]
    return keys + values + [i[row] for i in cache.inputs]  # inputs: (capacity, C)


def prefill_from_cache(
    prefixes: PrefixCache, cache: KVCache, prompts: Sequence[Sequence[int]], longest: int
) -> int:
    """Copy the cached prefixes of ``prompts`` (left-padded rows that end at column
    ``longest``) into the empty ``cache`` and return the first column left to compute, which
    ``cache.length`` is set to.

    One forward pass computes the same columns of every row, so that column is the smallest of
    the rows' padding plus cached length: a row with more cached recomputes some of it, a row
    whose padding reaches past it reuses nothing. Padding columns before it are set to zeros
    (masked out, and finite, unlike the empty cache's contents)."""
    found = [prefixes.lookup(ids, len(ids) - 1) for ids in prompts]
    pads = [longest - len(ids) for ids in prompts]
    start = min(pad + prefix.length for pad, prefix in zip(pads, found, strict=True))
    reused = [max(0, start - pad) for pad in pads]
    prefixes.record(reused, [len(ids) - n for ids, n in zip(prompts, reused, strict=True)])
    for row, (prefix, pad, count) in enumerate(zip(found, pads, reused, strict=True)):
        if not start:
            break
        views = _row_views(cache, row)
        for view in views:
            view[: min(pad, start)].zero_()
        prefix.write(views, pad, count)
    cache.length = start
    return start


def store_prefixes(
    prefixes: PrefixCache, cache: KVCache, prompts: Sequence[Sequence[int]], longest: int
) -> None:
    """Store every prompt's keys and values from ``cache`` once they are computed (columns up
    to ``longest``, rows left-padded as in :func:`prefill_from_cache`)."""
    for row, ids in enumerate(prompts):
        prefixes.insert(ids, partial(_columns, _row_views(cache, row), longest - len(ids)))


def _columns(views: Slab, pad: int, start: int, stop: int) -> Slab:
    """Positions ``start..stop-1`` of a row that starts at column ``pad``."""
    return [view[pad + start : pad + stop] for view in views]


def prefill_shared_start(
    prefixes: PrefixCache, model: GPT | Llama, prompts: Sequence[Sequence[int]]
) -> None:
    """Cache the start that every row of a batch shares, computed once in a pass of its own,
    when at least :data:`SHARED_START_MIN` of its tokens are not cached yet (concurrent
    requests with one system prompt), so that the rows reuse it instead of each computing it.
    """
    if len(prompts) < 2 or not prefixes.max_bytes:
        return
    shared: list[int] = []
    for tokens in zip(*prompts, strict=False):  # up to the shortest
        if any(token != tokens[0] for token in tokens):
            break
        shared.append(tokens[0])
    if len(shared) - prefixes.cached_length(shared) < SHARED_START_MIN:
        return
    cache = model.new_cache(1, len(shared))
    start = prefill_from_cache(prefixes, cache, [shared], len(shared))
    model(torch.tensor([shared[start:]], device=cache.keys[0].device), cache=cache)
    store_prefixes(prefixes, cache, [shared], len(shared))


def reuse_prefixes(
    prefixes: PrefixCache,
    model: GPT | Llama,
    cache: KVCache,
    prompts: Sequence[Sequence[int]],
    longest: int,
) -> int:
    """Before the prefill of ``prompts`` (left-padded rows ending at column ``longest``) into
    the empty ``cache``: drop prefixes of other weights than ``model``'s, compute the start the
    rows share once (:func:`prefill_shared_start`), and copy the cached prefixes in
    (:func:`prefill_from_cache`). Returns the first column the prefill must compute."""
    prefixes.check_owner(weights_version(model))
    prefill_shared_start(prefixes, model, prompts)
    return prefill_from_cache(prefixes, cache, prompts, longest)
