"""Every exception promptkit raises, in one tree.

Errors of *use* (something the caller can fix in their code, template or settings) sit apart from
errors of the *world* (a model that answered badly, a service that failed)::

    PromptkitError
    ├── UsageError                     the caller asked for something that cannot work
    │   ├── TemplateError              a template cannot be parsed, loaded or rendered
    │   │   └── MissingVariableError   the template uses variables that were not given
    │   ├── InputValidationError       the inputs do not match the prompt's input type
    │   ├── ConfigurationError         a backend spec, option or setting is wrong or missing
    │   ├── UnsupportedCapabilityError the backend cannot do what was asked (names both)
    │   ├── ConstraintError            the output type cannot become (or meet) a decoding constraint
    │   └── ContextWindowError         the prompt does not fit the model's context window
    ├── OutputValidationError          the model's text never became a valid output
    │   └── OutputParseError           one text could not be parsed/validated (no attempts run)
    ├── MaxStepsError                  the model kept calling tools past ``max_steps`` rounds
    └── BackendError                   the model or service failed (``retryable``: can a retry help)

Every error's message says what was wrong and how to fix it. Secrets never appear in a message.

:class:`OutputValidationError` keeps every attempt of a run. This module sits below everything
else, so it types those attempts by their shape (:class:`AttemptRecord`, which
:class:`promptkit.Attempt` has) instead of importing the run loop that raises it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

__all__ = [
    "BackendError",
    "ConfigurationError",
    "ConstraintError",
    "ContextWindowError",
    "InputValidationError",
    "MaxStepsError",
    "MissingVariableError",
    "OutputParseError",
    "OutputValidationError",
    "PromptkitError",
    "TemplateError",
    "UnsupportedCapabilityError",
    "UsageError",
]


class AttemptUsage(Protocol):
    """The token counts of one attempt (a :class:`promptkit.backends.Usage`)."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def total_tokens(self) -> int: ...


class AttemptRecord(Protocol):
    """One call to the model as an error keeps it (a :class:`promptkit.Attempt`): what was
    sent, the raw text that came back, and why it was refused (None when accepted)."""

    @property
    def prompt(self) -> str | Sequence[Mapping[str, object]]: ...

    @property
    def text(self) -> str: ...

    @property
    def error(self) -> str | None: ...

    @property
    def usage(self) -> AttemptUsage: ...

    @property
    def latency_s(self) -> float: ...


class PromptkitError(Exception):
    """The root of every error promptkit raises."""


class UsageError(PromptkitError):
    """The caller asked for something that cannot work; the fix is in their code or files."""


class TemplateError(UsageError):
    """A template cannot be parsed, loaded or rendered.

    ``source`` names the file (or ``"<string>"``) and ``line`` the 1-based line, when known.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        self.reason = message
        if source is not None and line is not None:
            message = f"{source}:{line}: {message}"
        elif source is not None:
            message = f"{source}: {message}"
        super().__init__(message)


class MissingVariableError(TemplateError):
    """A template uses variables that were not given; ``names`` lists every one of them."""

    def __init__(
        self,
        names: Iterable[str],
        *,
        available: Iterable[str] = (),
        source: str | None = None,
        line: int | None = None,
    ):
        self.names = tuple(sorted(set(names)))
        self.available = tuple(sorted(set(available)))
        listed = ", ".join(repr(n) for n in self.names)
        message = f"template uses undefined variable(s) {listed}"
        if self.available:
            message += f"; the defined inputs are: {', '.join(self.available)}"
        message += ". Declare them as inputs or pass values for them."
        super().__init__(message, source=source, line=line)


class InputValidationError(UsageError):
    """The inputs given to a prompt do not match its input type (pydantic's message kept)."""


class ConfigurationError(UsageError):
    """A backend spec, option, file or setting is wrong or missing."""


class UnsupportedCapabilityError(UsageError):
    """The backend cannot do what was asked; ``backend`` and ``capability`` name both."""

    def __init__(self, backend: str, capability: str, hint: str = ""):
        self.backend = backend
        self.capability = capability
        message = f"backend {backend!r} does not support {capability}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class ConstraintError(UsageError):
    """An output type cannot be turned into a decoding constraint, or cannot be met.

    ``feature`` names what llguidance does not support (or ``None`` when the problem is the
    request, e.g. ``max_tokens`` too small for any valid output, when ``min_tokens`` says how
    many the shortest valid answer found takes). Run with
    ``constrained="fallback"`` to fall back to parse-and-re-ask, or ``constrained=False``.
    """

    def __init__(self, message: str, *, feature: str | None = None, min_tokens: int | None = None):
        self.feature = feature
        self.min_tokens = min_tokens  # tokens the shortest valid answer found needs
        super().__init__(message)


class ContextWindowError(UsageError):
    """The prompt (plus the tokens asked for) does not fit the model's context window."""

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        max_tokens: int | None = None,
        context_window: int | None = None,
    ):
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_window = context_window
        super().__init__(message)


class OutputValidationError(PromptkitError):
    """The model's output never parsed and validated into the declared output type.

    ``attempts`` holds every attempt (rendered prompt, raw text, error), ``raw_text`` the last
    raw text, so nothing the model said is lost.
    """

    def __init__(self, message: str, *, attempts: Sequence[AttemptRecord] = (), raw_text: str = ""):
        self.attempts: tuple[AttemptRecord, ...] = tuple(attempts)
        self.raw_text = raw_text
        super().__init__(message)


class OutputParseError(OutputValidationError):
    """One text could not be parsed or validated into the output type (``raw_text`` keeps it)."""

    def __init__(self, message: str, *, raw_text: str):
        super().__init__(message, raw_text=raw_text)


class MaxStepsError(PromptkitError):
    """A run with ``run_tools=True`` reached ``max_steps`` rounds of tool calls and the model
    asked for more instead of answering.

    ``steps`` holds every round taken (a :class:`promptkit.ToolStep`: the calls and their
    results), ``pending`` the calls the model asked for next (not run), ``attempts`` every call
    to the model: nothing the model said is lost.
    """

    def __init__(
        self,
        message: str,
        *,
        max_steps: int,
        steps: Sequence[object] = (),
        pending: Sequence[object] = (),
        attempts: Sequence[AttemptRecord] = (),
    ):
        self.max_steps = max_steps
        self.steps: tuple[object, ...] = tuple(steps)
        self.pending: tuple[object, ...] = tuple(pending)
        self.attempts: tuple[AttemptRecord, ...] = tuple(attempts)
        super().__init__(message)


class BackendError(PromptkitError):
    """The model or service failed. ``retryable`` says whether trying again can help; ``kind``
    names the failure where the service said (``authentication``, ``permission``,
    ``rate_limit``, ``timeout``, ``connection``, ``content_filter``, ``bad_request``,
    ``not_found``, ``server``)."""

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        retryable: bool = False,
        kind: str | None = None,
    ):
        self.backend = backend
        self.retryable = retryable
        self.kind = kind
        super().__init__(f"{backend}: {message}" if backend else message)
