"""Concurrent generate calls on a local model share batches (promptkit.backends._coalesce)."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from promptkit.backends import GenerationConfig
from promptkit.backends._coalesce import Coalescer

GREEDY = GenerationConfig(max_tokens=4, temperature=0)


class Batches:
    """A batch function that records the batches it ran and answers ``item * 10`` (after a
    pause, as a model's pass takes time); ``fail`` items make any batch holding them fail."""

    def __init__(self, pause: float = 0.05, fail: frozenset[int] = frozenset()):
        self.pause = pause
        self.fail = fail
        self.batches: list[tuple[list[int], GenerationConfig]] = []
        self.lock = threading.Lock()

    def __call__(self, items: list[int], config: GenerationConfig) -> list[int]:
        with self.lock:
            self.batches.append((list(items), config))
        time.sleep(self.pause)
        bad = self.fail.intersection(items)
        if bad:
            raise ValueError(f"item {min(bad)} is bad")
        return [item * 10 for item in items]


def _together(coalescer: Coalescer, calls: list[tuple[int, GenerationConfig]]) -> list[object]:
    """Run the calls in as many threads, started together; each result or error in order."""
    start = threading.Barrier(len(calls))

    def one(call: tuple[int, GenerationConfig]) -> object:
        start.wait()
        try:
            return coalescer.run(*call)
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def test_concurrent_calls_share_batches_and_each_gets_its_own_answer():
    batches = Batches()
    coalescer = Coalescer(batches)
    results = _together(coalescer, [(i, GREEDY) for i in range(8)])
    assert results == [i * 10 for i in range(8)]
    sizes = [len(items) for items, _ in batches.batches]
    assert sorted(i for items, _ in batches.batches for i in items) == list(range(8))
    assert len(sizes) < 8 and max(sizes) > 1  # 8 calls in fewer passes


def test_callers_that_come_back_keep_meeting_in_batches():
    batches = Batches(pause=0.02)
    coalescer = Coalescer(batches, gather_s=0.5)

    def caller(first: int) -> list[int]:
        return [coalescer.run(first + 100 * k, GREEDY) for k in range(5)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(caller, range(4)))
    assert results == [[(i + 100 * k) * 10 for k in range(5)] for i in range(4)]
    sizes = [len(items) for items, _ in batches.batches]
    assert sum(sizes) == 20 and len(sizes) <= 7  # not 20 passes: the callers are gathered
    assert max(sizes) == 4 and sum(size >= 3 for size in sizes) >= len(sizes) - 2


def test_calls_with_other_configs_are_never_mixed():
    batches = Batches()
    coalescer = Coalescer(batches)
    other = GREEDY.replace(max_tokens=9)
    calls = [(i, GREEDY if i % 2 else other) for i in range(6)]
    assert _together(coalescer, calls) == [i * 10 for i in range(6)]
    for items, config in batches.batches:
        assert {i % 2 for i in items} == {1 if config == GREEDY else 0}


def test_callers_with_other_configs_do_not_make_a_leader_wait():
    # two callers share a config, a third has its own: a leader stops waiting once as many
    # requests wait as its last batch held, whatever their configs (waiting for its own kind
    # only, it waited out gather_s again and again: 4 s here)
    batches = Batches(pause=0.01)
    coalescer = Coalescer(batches, gather_s=1.0)
    configs = [GREEDY, GREEDY, GREEDY.replace(max_tokens=9)]

    def caller(first: int) -> list[int]:
        return [coalescer.run(first + 100 * k, configs[first]) for k in range(5)]

    began = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(caller, range(3)))
    assert results == [[(i + 100 * k) * 10 for k in range(5)] for i in range(3)]
    assert time.perf_counter() - began < 0.9


def test_a_failing_batch_is_run_again_one_by_one():
    batches = Batches(fail=frozenset({3}))
    coalescer = Coalescer(batches)
    results = _together(coalescer, [(i, GREEDY) for i in range(6)])
    assert [r for i, r in enumerate(results) if i != 3] == [i * 10 for i in range(6) if i != 3]
    assert isinstance(results[3], ValueError) and str(results[3]) == "item 3 is bad"
    with pytest.raises(ValueError, match="item 3 is bad"):  # alone too: its own error
        coalescer.run(3, GREEDY)


def test_batches_hold_at_most_max_rows():
    batches = Batches()
    coalescer = Coalescer(batches, max_rows=3)
    assert _together(coalescer, [(i, GREEDY) for i in range(9)]) == [i * 10 for i in range(9)]
    assert max(len(items) for items, _ in batches.batches) <= 3


def test_a_lone_caller_does_not_wait():
    batches = Batches(pause=0)
    coalescer = Coalescer(batches, gather_s=5.0)
    began = time.perf_counter()
    assert [coalescer.run(i, GREEDY) for i in range(3)] == [0, 10, 20]
    assert time.perf_counter() - began < 1.0
    assert [items for items, _ in batches.batches] == [[0], [1], [2]]


def test_max_rows_must_be_positive():
    with pytest.raises(ValueError, match="max_rows must be at least 1, got 0"):
        Coalescer(Batches(), max_rows=0)


def test_a_batch_that_calls_back_runs_that_call_directly():
    coalescer: Coalescer
    inner: list[list[int]] = []

    def calling_back(items: list[int], config: GenerationConfig) -> list[int]:
        if items == [1]:  # a batch function that needs another answer first
            inner.append([coalescer.run(2, config)])
        return [item * 10 for item in items]

    coalescer = Coalescer(calling_back)
    with ThreadPoolExecutor(2) as pool:
        assert pool.submit(coalescer.run, 1, GREEDY).result(timeout=10) == 10
        assert pool.submit(coalescer.run, 3, GREEDY).result(timeout=10) == 30  # not stuck
    assert inner == [[20]]


CTRL_C_REACHES_US = pytest.mark.skipif(
    not hasattr(signal, "pthread_kill")
    or threading.current_thread() is not threading.main_thread(),
    reason="needs POSIX signals and the main thread",
)


@pytest.fixture
def ctrl_c():
    """Python's own Ctrl-C handler for the test (a process started in the background by a
    shell, as a CI step may be, ignores SIGINT), restored afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_main_after(seconds: float) -> None:
    """Ctrl-C, as the main thread receives it, in ``seconds``."""
    main = threading.main_thread().ident
    assert main is not None
    threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGINT)).start()


@CTRL_C_REACHES_US
def test_a_caller_interrupted_while_it_waits_leaves_the_queue(ctrl_c):
    running = threading.Event()

    def slow(items: list[int], config: GenerationConfig) -> list[int]:
        running.set()
        time.sleep(0.6)
        return [item * 10 for item in items]

    coalescer = Coalescer(slow)
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(coalescer.run, 1, GREEDY)
        assert running.wait(10)
        _interrupt_main_after(0.2)
        with pytest.raises(KeyboardInterrupt):
            coalescer.run(2, GREEDY)  # waits behind the leader's batch, then Ctrl-C
        assert leader.result(timeout=10) == 10
        assert pool.submit(coalescer.run, 3, GREEDY).result(timeout=10) == 30  # not stuck


@CTRL_C_REACHES_US
def test_a_leader_interrupted_while_it_gathers_passes_the_lead_on(ctrl_c):
    release = threading.Event()

    def gated(items: list[int], config: GenerationConfig) -> list[int]:
        release.wait(10)
        return [item * 10 for item in items]

    coalescer = Coalescer(gated, gather_s=3.0)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(coalescer.run, 0, GREEDY)
        time.sleep(0.1)
        rest = [pool.submit(coalescer.run, i, GREEDY) for i in (1, 2, 3)]  # one batch of 3
        time.sleep(0.1)
        release.set()
        assert [f.result(timeout=10) for f in (first, *rest)] == [0, 10, 20, 30]
        _interrupt_main_after(0.3)
        with pytest.raises(KeyboardInterrupt):
            coalescer.run(9, GREEDY)  # alone, waiting for 3 callers that do not come
        assert pool.submit(coalescer.run, 4, GREEDY).result(timeout=10) == 40  # not stuck
