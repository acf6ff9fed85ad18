"""Test helpers: serve an ASGI app on a free loopback port (in a thread, or ``promptkit serve``
in its own process), and talk to it over plain sockets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any


def serve_in_thread(app):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; a context manager
    yielding the base URL."""
    import uvicorn

    @contextlib.contextmanager
    def running():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()

    return running()


@contextlib.contextmanager
def serve_process(*options: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``promptkit serve OPTIONS`` in its own process on a free port: yields the base URL and
    the process (killed on exit if it is still running)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "promptkit", "serve", "--port", str(port), *options],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("promptkit serve did not start") from None
                time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def post(url: str, path: str, body: Any, *, key: str | None = None, timeout: float = 30):
    """POST ``body`` (a JSON value, or raw bytes) and return ``(status, parsed JSON answer)``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data, headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def get(url: str, path: str, *, key: str | None = None, timeout: float = 30):
    """GET ``path`` and return ``(status, body bytes)``."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def connect(url: str) -> socket.socket:
    """A plain TCP connection to the server at ``url`` (an idle client)."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def stream_then_disconnect(
    url: str, path: str, body: Any, *, key: str | None = None, events: int = 1
) -> bytes:
    """Start a streamed request over a raw socket, read up to the first ``events`` events, then
    drop the connection (what ``curl -N ... | head -2`` does); returns what was read."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key else "")
        + "\r\n"
    )
    received = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + data)
        while received.count(b"data:") < events:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received


def chat_reply(content: str, *, prompt_tokens: int = 5, completion_tokens: int = 1) -> Any:
    """A chat completion answer, as the OpenAI API sends it."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def fake_openai(answer, *, delay: float = 0.0, polls_to_finish: int = 2):
    """An ASGI app faking the OpenAI API: ``/v1/chat/completions``, and the ``files`` and
    ``batches`` endpoints a Batch API run uses (a Starlette app).

    ``answer(body)`` decides each chat request's reply from its body: a string (the answer's
    text) or ``(status, error JSON)``; it serves direct requests and every line of a batch.
    Direct requests wait ``delay`` seconds (without blocking others; ``delay`` in
    ``app.state.fake`` changes it); set ``refuse_next`` in
    ``app.state.fake`` to answer that many of them with a 429 first. A batch stays
    ``validating``, then ``in_progress`` for ``polls_to_finish`` retrievals, then completes:
    answers in its output file, errors in its error file. ``app.state.fake`` records the
    direct request bodies (``chat``), the most requests in flight at once (``most_in_flight``),
    the uploaded batch files (``uploads``: their lines) and every batch created (``batches``).
    """
    import asyncio
    import email.parser
    import email.policy
    import itertools

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    fake: dict[str, Any] = {
        "chat": [],
        "refuse_next": 0,
        "delay": delay,
        "in_flight": 0,
        "most_in_flight": 0,
        "uploads": [],
        "files": {},
        "batches": {},
    }
    numbers = itertools.count(1)

    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        given = answer(body)
        return (200, chat_reply(given)) if isinstance(given, str) else given

    async def chat(request):
        body = await request.json()
        if fake["refuse_next"] > 0:  # a rate limit the SDK waits out and retries
            fake["refuse_next"] -= 1
            limited = {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}
            return JSONResponse(limited, status_code=429, headers={"retry-after-ms": "10"})
        fake["chat"].append(body)
        fake["in_flight"] += 1
        fake["most_in_flight"] = max(fake["most_in_flight"], fake["in_flight"])
        try:
            await asyncio.sleep(fake["delay"])
            status, content = reply(body)
        finally:
            fake["in_flight"] -= 1
        return JSONResponse(content, status_code=status)

    def new_file(data: bytes, purpose: str) -> dict[str, Any]:
        file_id = f"file-{next(numbers)}"
        fake["files"][file_id] = data
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": 0,
            "filename": f"{file_id}.jsonl",
            "purpose": purpose,
            "status": "processed",
        }

    async def upload(request):
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            head + await request.body()
        )
        parts = {
            part.get_param("name", header="content-disposition"): part
            for part in message.iter_parts()
        }
        data = parts["file"].get_payload(decode=True)
        purpose = parts["purpose"].get_payload(decode=True).decode()
        fake["uploads"].append([json.loads(line) for line in data.decode().splitlines()])
        return JSONResponse(new_file(data, purpose))

    async def create(request):
        body = await request.json()
        batch_id = f"batch_{next(numbers)}"
        fake["batches"][batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "metadata": body.get("metadata"),
            "status": "validating",
            "created_at": 0,
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "polls": 0,
        }
        return JSONResponse({k: v for k, v in fake["batches"][batch_id].items() if k != "polls"})

    def finish(batch: dict[str, Any]) -> None:
        lines = [json.loads(line) for line in fake["files"][batch["input_file_id"]].splitlines()]
        output, errors = [], []
        for line in lines:
            status, content = reply(line["body"])
            record = {
                "id": f"batch_req_{next(numbers)}",
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": "req", "body": content},
                "error": None,
            }
            (output if status == 200 else errors).append(json.dumps(record) + "\n")
        batch["status"] = "completed"
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(output),
            "failed": len(errors),
        }
        if output:
            batch["output_file_id"] = new_file("".join(output).encode(), "batch_output")["id"]
        if errors:
            batch["error_file_id"] = new_file("".join(errors).encode(), "batch_output")["id"]

    async def retrieve(request):
        batch_id = request.path_params["batch_id"]
        batch = fake["batches"].get(batch_id)
        if batch is None:
            return JSONResponse({"error": {"message": "no such batch", "code": None}}, 404)
        batch["polls"] += 1
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and batch["polls"] > polls_to_finish:
            finish(batch)
        return JSONResponse({k: v for k, v in batch.items() if k != "polls"})

    async def content(request):
        file_id = request.path_params["file_id"]
        if file_id not in fake["files"]:
            return JSONResponse({"error": {"message": "no such file", "code": None}}, 404)
        return Response(fake["files"][file_id], media_type="application/octet-stream")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/files", upload, methods=["POST"]),
            Route("/v1/batches", create, methods=["POST"]),
            Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
            Route("/v1/files/{file_id}/content", content, methods=["GET"]),
        ]
    )
    app.state.fake = fake
    return app
