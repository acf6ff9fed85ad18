"""promptkit serve: latency added by the server, and throughput under 32 concurrent clients.

    python bench/serve.py [--requests 200] [--clients 32] [--per-client 20]

A small GPT (2 layers, 128 wide, GPT-2's tokenizer from ../shared/data, random weights) saved
as a checkpoint and served by ``promptkit serve`` in its own process on a loopback port;
``max_tokens=1`` completions. Clients: a plain keep-alive ``http.client`` connection (what the
server itself adds) and the official ``openai`` client (which adds its own ~2 ms per request on
this machine: building the request, validating the response into its models).

1. Overhead: median latency of a request through the server vs the same backend call made
   in-process (target: under 3 ms added).
2. Throughput: 32 client threads x 20 requests each through the server vs the same number of
   calls in-process, one after another (target: no errors, at least 80% of the backend alone).
   The clients run on the same 2 cores as the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import torch

from promptkit.backends import GenerationConfig
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch._checkpoint import save_checkpoint
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.backends.scratch.gpt2 import GPT, GPTConfig

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"
PROMPT = "The quick brown fox jumps over the lazy dog"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=20)
    args = parser.parse_args()
    if not (TOKENIZER / "tokenizer.json").is_file():
        sys.exit(f"needs GPT-2's tokenizer in {TOKENIZER}")
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_folder(TOKENIZER)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=256, n_layer=2, n_head=2, n_embd=128
    )
    model = GPT(config).eval()
    backend = ScratchBackend(model, tokenizer)
    one = GenerationConfig(max_tokens=1)

    def local() -> float:
        began = time.perf_counter()
        backend.generate(PROMPT, one)
        return time.perf_counter() - began

    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(model, tokenizer, folder)
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "promptkit",
                "serve",
                "--backend",
                f"scratch:{folder}",
                "--port",
                str(port),
                "--model-name",
                "bench",
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{url}/v1/models", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        sys.exit("the server did not start")
                    time.sleep(0.2)
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            body = json.dumps(
                {"model": "bench", "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
            )

            def raw_request(connection: http.client.HTTPConnection) -> None:
                headers = {"Content-Type": "application/json"}
                connection.request("POST", "/v1/completions", body, headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

            connection = http.client.HTTPConnection("127.0.0.1", port)

            def raw() -> float:
                began = time.perf_counter()
                raw_request(connection)
                return time.perf_counter() - began

            def sdk() -> float:
                began = time.perf_counter()
                client.completions.create(model="bench", prompt=PROMPT, max_tokens=1, temperature=0)
                return time.perf_counter() - began

            for _ in range(20):  # warm-up every path
                local(), raw(), sdk()
            inside = statistics.median(local() for _ in range(args.requests))
            through = statistics.median(raw() for _ in range(args.requests))
            with_sdk = statistics.median(sdk() for _ in range(args.requests))
            print(
                f"max_tokens=1, median of {args.requests}: in-process {inside * 1e3:.2f} ms; "
                f"through the server {through * 1e3:.2f} ms -> {(through - inside) * 1e3:.2f} "
                f"ms added (target < 3 ms); with the openai client {with_sdk * 1e3:.2f} ms -> "
                f"{(with_sdk - inside) * 1e3:.2f} ms added"
            )

            total = args.clients * args.per_client
            began = time.perf_counter()
            for _ in range(total):
                backend.generate(PROMPT, one)
            alone = total / (time.perf_counter() - began)
            errors: list[Exception] = []

            def raw_client(_: int) -> None:
                own = http.client.HTTPConnection("127.0.0.1", port)
                for _ in range(args.per_client):
                    try:
                        raw_request(own)
                    except Exception as exc:
                        errors.append(exc)
                own.close()

            def sdk_client(_: int) -> None:
                with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as c:
                    for _ in range(args.per_client):
                        try:
                            c.completions.create(
                                model="bench", prompt=PROMPT, max_tokens=1, temperature=0
                            )
                        except openai.OpenAIError as exc:
                            errors.append(exc)

            for label, run in (("http.client", raw_client), ("openai client", sdk_client)):
                errors.clear()
                began = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    list(pool.map(run, range(args.clients)))
                served = total / (time.perf_counter() - began)
                print(
                    f"{args.clients} {label}s x {args.per_client} requests: {len(errors)} "
                    f"errors, {served:.0f} req/s through the server vs {alone:.0f} req/s "
                    f"in-process ({served / alone:.0%}, target >= 80%)"
                )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
