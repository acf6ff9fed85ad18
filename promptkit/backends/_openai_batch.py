"""OpenAI's Batch API: many requests in one JSONL file, answered within 24 hours at half price.

:class:`OpenAIBatch` (``backend.batch_api()`` of an ``openai:`` backend) writes each request as
a line whose body is exactly what :meth:`~promptkit.backends.Backend.generate` would send,
uploads the file (``files``, purpose ``batch``), creates the batch (``batches``), polls it with
backoff until it ends, and reads back the answers and the errors (the output and error files)
as promptkit Completions and errors. Every call goes through the backend's error mapping, so a
failure is a promptkit error (BackendError with ``kind`` and ``retryable``), and the SDK retries
failed calls as it does for ``generate``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..errors import BackendError, PromptkitError, UsageError
from ._base import BatchAPI, Completion, GenerationConfig, PromptInput, encode_line
from ._openai_mapping import scrub, status_error

__all__ = ["FINAL_STATES", "OpenAIBatch"]

FINAL_STATES = ("completed", "expired", "cancelled", "failed")  # a batch that will not change
COMPLETION_WINDOW = "24h"  # the only window the API offers
FIRST_POLL_S = 5.0  # the first wait between polls; each next one is 1.5 times longer
MAX_POLL_S = 60.0  # the longest wait between polls
MAX_WAIT_S = 26 * 3600.0  # the 24-hour window and the time to finish it
SHOWN_ERRORS = 5  # how many of a failed batch's errors its message quotes


class OpenAIBatch(BatchAPI):
    """One backend's requests through the Batch API (see the module docstring): at most
    50,000 requests and 200 MB a batch.

    ``poll_s`` is the first wait between polls, multiplied by 1.5 after each up to
    ``max_poll_s``; :meth:`wait` gives up after ``max_wait_s``. They default to the module's
    FIRST_POLL_S, MAX_POLL_S and MAX_WAIT_S.
    """

    def __init__(
        self,
        name: str,
        client: Any,
        errors: Callable[[], AbstractContextManager[None]],
        body: Callable[[PromptInput, GenerationConfig], tuple[str, Any]],
        answer: Callable[[str, Any], Completion],
        *,
        poll_s: float | None = None,
        max_poll_s: float | None = None,
        max_wait_s: float | None = None,
    ):
        self.name = name
        self.poll_s = FIRST_POLL_S if poll_s is None else poll_s
        self.max_poll_s = MAX_POLL_S if max_poll_s is None else max_poll_s
        self.max_wait_s = MAX_WAIT_S if max_wait_s is None else max_wait_s
        self._client = client
        self._errors = errors
        self._body = body
        self._answer = answer

    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def __repr__(self) -> str:
        return f"<OpenAIBatch {self.name!r}>"

    def line(self, custom_id: str, prompt: PromptInput, config: GenerationConfig) -> dict[str, Any]:
        """One line of a batch's input file: the request :meth:`generate` would send.

        Raises what ``generate`` raises before sending (InputValidationError,
        UnsupportedCapabilityError).
        """
        url, body = self._body(prompt, config)
        return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}

    def submit(self, lines: Sequence[Mapping[str, Any]], metadata: Mapping[str, str]) -> str:
        """Upload ``lines`` (from :meth:`line`, one endpoint) as a JSONL file and create a
        batch of them; returns the batch id.

        Raises UsageError for no lines or lines for two endpoints, BackendError when the
        service refuses.
        """
        endpoints = sorted({str(line["url"]) for line in lines})
        if len(endpoints) != 1:
            raise UsageError(f"a batch holds requests for one endpoint, got {endpoints or 'none'}")
        data = b"".join(encode_line(line) for line in lines)
        if len(lines) > self.max_requests or len(data) > self.max_bytes:
            raise UsageError(
                f"a batch holds at most {self.max_requests} requests in {self.max_bytes} bytes "
                f"(max_requests, max_bytes), got {len(lines)} in {len(data)}"
            )
        with self._errors():
            upload = self._client.files.create(
                file=("promptkit-batch.jsonl", data, "application/jsonl"), purpose="batch"
            )
            batch = self._client.batches.create(
                input_file_id=upload.id,
                endpoint=endpoints[0],
                completion_window=COMPLETION_WINDOW,
                metadata=dict(metadata),
            )
        return str(batch.id)

    def wait(self, batch_id: str) -> Any:
        """Poll the batch until it ends (completed, expired or cancelled: each may hold
        answers), waiting longer between polls; returns the SDK's batch.

        Raises BackendError for a batch that failed (its validation errors quoted), for one
        still running after ``max_wait_s`` (kind ``timeout``: resume to wait again), and when
        polling fails.
        """
        started = time.monotonic()
        pause = self.poll_s
        while True:
            with self._errors():
                batch = self._client.batches.retrieve(batch_id)
            if batch.status == "failed":
                raise BackendError(
                    f"batch {batch_id} failed: {self._failures(batch)}",
                    backend=self.name,
                    kind="bad_request",
                )
            if batch.status in FINAL_STATES:
                return batch
            if time.monotonic() - started + pause > self.max_wait_s:
                raise BackendError(
                    f"batch {batch_id} is still {batch.status} after {self.max_wait_s:.0f} s; "
                    "run again with --resume to keep waiting for it",
                    backend=self.name,
                    retryable=True,
                    kind="timeout",
                )
            time.sleep(pause)
            pause = min(pause * 1.5, self.max_poll_s)

    def answers(self, batch: Any) -> dict[str, Completion | PromptkitError]:
        """Each request's answer in an ended batch, by custom id: a Completion, or the promptkit
        error of a request that failed (an error line, or an answer that cannot be used).
        Requests with neither (an expired or cancelled batch) are left out.

        Raises BackendError when a file cannot be read or a line is not a batch result.
        """
        found: dict[str, Completion | PromptkitError] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            for custom_id, outcome in self._results(file_id, str(batch.endpoint)):
                found[custom_id] = outcome
        return found

    def _results(
        self, file_id: str | None, endpoint: str
    ) -> Iterator[tuple[str, Completion | PromptkitError]]:
        if not file_id:
            return
        with self._errors():
            text = self._client.files.content(file_id).text
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                custom_id = str(line["custom_id"])
                response, error = line.get("response"), line.get("error")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BackendError(
                    f"line {number} of the batch file {file_id} is not a batch result ({exc}): "
                    f"{scrub(raw[:200], ())}",
                    backend=self.name,
                    kind="bad_response",
                ) from None
            yield custom_id, self._outcome(endpoint, response, error)

    def _outcome(self, endpoint: str, response: Any, error: Any) -> Completion | PromptkitError:
        """A Completion of a 200 answer; the error of any other line."""
        status = response.get("status_code") if isinstance(response, dict) else None
        body = response.get("body") if isinstance(response, dict) else None
        if status == 200 and not error:
            try:
                return self._answer(endpoint, body)
            except PromptkitError as exc:
                return exc
        detail = error if isinstance(error, dict) else None
        if detail is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"]
        detail = detail or {}
        message = scrub(str(detail.get("message") or f"no answer (HTTP {status})"), ())
        code = detail.get("code")
        if isinstance(status, int) and status >= 400:
            message = f"Error code: {status} - {message}"  # as the SDK words a direct answer
            return status_error(status, code if isinstance(code, str) else None, message, self.name)
        kind = code if isinstance(code, str) else "other"
        expired = kind == "batch_expired"  # the window closed first: sending it again can help
        return BackendError(message, backend=self.name, kind=kind, retryable=expired)

    @staticmethod
    def _failures(batch: Any) -> str:
        errors = (batch.errors.data if batch.errors is not None else None) or []
        shown = [
            f"{e.message} (line {e.line})" if e.line else str(e.message)
            for e in errors[:SHOWN_ERRORS]
        ]
        more = f" and {len(errors) - SHOWN_ERRORS} more" if len(errors) > SHOWN_ERRORS else ""
        return scrub("; ".join(shown) + more, ()) if shown else "the service gave no reason"
