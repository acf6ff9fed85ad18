"""The server's worker thread: a fault outside the backend's calls fails that round's requests
and the worker goes on serving."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")

from promptkit.backends import GenerationConfig
from promptkit.backends._scripted import ScriptedBackend
from promptkit.server._errors import ApiError
from promptkit.server._worker import Worker


def test_a_fault_in_a_round_fails_its_requests_and_the_worker_lives_on(monkeypatch):
    worker = Worker(ScriptedBackend(["first answer", "second answer"]))
    faults = ["grouping went wrong"]
    real_round = worker._round

    def faulty_round(waiting):
        if faults:
            raise RuntimeError(faults.pop())
        real_round(waiting)

    monkeypatch.setattr(worker, "_round", faulty_round)
    config = GenerationConfig(max_tokens=4)

    async def ask() -> tuple[object, object]:
        try:
            await asyncio.wait_for(worker.generate("hello", config), timeout=10)
        except ApiError as error:
            failed: object = error
        else:
            failed = None
        answer = await asyncio.wait_for(worker.generate("hello", config), timeout=10)
        return failed, answer

    try:
        failed, answer = asyncio.run(ask())
    finally:
        worker.close()
    assert isinstance(failed, ApiError) and failed.status_code == 500  # an internal error
    assert "RuntimeError" in str(failed)
    assert answer.text == "first answer"  # type: ignore[attr-defined]
