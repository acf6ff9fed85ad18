"""Testing your own application with the scripted backend: no model, no network, no flakiness.

Your app takes a backend as a parameter; in tests you hand it a ScriptedBackend with the replies
you want, then assert on what your app did and on the requests it sent.

    python examples/testing_with_scripted_backend.py
    pytest examples/testing_with_scripted_backend.py
"""

from __future__ import annotations

from typing import Literal

import promptkit as pk
from promptkit.backends import Backend, ScriptedBackend

triage = pk.Prompt(
    instruction="Route the e-mail to a team.",
    query="E-mail: {{ body }}",
    output_type=Literal["billing", "support", "sales"],
)


def route_email(body: str, backend: Backend) -> str:
    """The application code under test: returns a queue name, 'manual' when the model fails."""
    try:
        return triage.run({"body": body}, backend=backend, max_attempts=2).output
    except pk.errors.OutputValidationError:
        return "manual"


def test_routes_to_the_label_the_model_gives():
    backend = ScriptedBackend(["Billing"])
    assert route_email("I was charged twice", backend) == "billing"
    sent = backend.requests[0].prompt
    assert sent[-1] == {"role": "user", "content": "E-mail: I was charged twice"}


def test_falls_back_to_manual_when_the_model_never_answers_validly():
    backend = ScriptedBackend(["no idea", "still no idea"])
    assert route_email("???", backend) == "manual"
    assert len(backend.requests) == 2  # the app re-asked once, with the error


def test_backend_failures_surface_as_typed_errors():
    backend = ScriptedBackend([pk.errors.BackendError("timeout", retryable=True)])
    try:
        route_email("hello", backend)
    except pk.errors.BackendError as exc:
        assert exc.retryable
    else:
        raise AssertionError("expected a BackendError")


if __name__ == "__main__":
    for name, test in sorted(globals().items()):
        if name.startswith("test_"):
            test()
            print(f"ok  {name}")
