"""Constrained decoding: which grammar, if any, a run's decoding on a backend is held to."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Union

from ._grammar import Grammar, grammar_for, span_grammar
from ._parsing import OutputSpec
from .errors import ConstraintError, UnsupportedCapabilityError, UsageError

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = ["Constrained", "decoding_grammar"]

logger = logging.getLogger("promptkit")
Constrained = Union[bool, Literal["fallback"], None]


def decoding_grammar(
    output: OutputSpec,
    backend: Backend,
    constrained: Constrained = None,
    *,
    inputs: Mapping[str, Any] | None = None,
    chat: bool = True,
    owner: object = None,
) -> Grammar | None:
    """The grammar that decoding ``output`` on ``backend`` is constrained to, or None; see
    :meth:`promptkit.Prompt.constraint` for ``constrained``, ``inputs`` and ``chat`` (whether
    the prompt goes to the backend as chat messages). ``owner`` (the prompt) is named in the
    log line of a ``"fallback"``.

    Raises UsageError for an unknown ``constrained``, UnsupportedCapabilityError when it is
    True and the backend cannot constrain the output, ConstraintError when the grammar does
    not compile (unless ``"fallback"``).
    """
    if constrained not in (None, True, False, "fallback"):
        raise UsageError(
            f"constrained must be None, True, False or 'fallback', got {constrained!r}"
        )
    if constrained is False:
        return None
    masks = backend.capabilities.token_masks
    spans = span_grammar(output, inputs) if inputs is not None and masks else None
    grammar = grammar_for(output, inputs) if spans is None else spans
    if grammar is None:
        return None
    if not backend.capabilities.enforces(grammar, chat=chat):
        if constrained is True:
            raise UnsupportedCapabilityError(
                backend.name,
                "constrained decoding (token masks)",
                "use a local backend (scratch, hf), or run with constrained=None",
            )
        return None
    try:
        grammar.compiled()
    except ConstraintError as exc:
        if constrained != "fallback":
            raise
        logger.info("constraints off for %s, parsing and re-asking instead: %s", owner, exc)
        return None
    return grammar
