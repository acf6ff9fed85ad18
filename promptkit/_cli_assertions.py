"""The ``eval`` command's options for assertions: the grader and the sandbox, checked against
the assertions the data uses before any backend is built."""

from __future__ import annotations

from collections.abc import Set
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from .evaluate import Sandbox

__all__ = ["assertion_sandbox"]


def assertion_sandbox(
    types: Set[str], grader_spec: str | None, unsafe_exec: bool, exec_timeout: float
) -> Sandbox | None:
    """The sandbox the data's python assertions run in (None: the data has none), after
    checking that the options fit the assertion ``types`` the data uses.

    Raises UsageError for llm-rubric assertions without --grader, --grader without them, and
    --unsafe-exec or --exec-timeout without python assertions; ConfigurationError when python
    assertions cannot be isolated here (see :meth:`Sandbox.check`).
    """
    if "llm-rubric" in types and not grader_spec:
        raise UsageError(
            "the data has llm-rubric assertions: pass --grader SPEC, the backend that judges them"
        )
    if grader_spec and "llm-rubric" not in types:
        raise UsageError("--grader: the data has no llm-rubric assertion to grade")
    if "python" not in types:
        given = {"--unsafe-exec": unsafe_exec, "--exec-timeout": exec_timeout != 3.0}
        if any(given.values()):
            named = ", ".join(k for k, v in given.items() if v)
            raise UsageError(f"{named}: only with --metric pass@k or python assertions in the data")
        return None
    from .evaluate import Sandbox, SandboxLimits

    sandbox = Sandbox(SandboxLimits(timeout_s=exec_timeout), unsafe=unsafe_exec)
    sandbox.check()
    return sandbox
