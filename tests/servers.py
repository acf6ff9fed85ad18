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


def stream_then_disconnect(url: str, path: str, body: Any, *, key: str | None = None) -> bytes:
    """Start a streamed request over a raw socket, read up to the first event, then drop the
    connection (what ``curl -N ... | head -2`` does); returns what was read."""
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
        while b"data:" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received
