"""llguidance, imported on first use: checked grammar compilation and a byte-level view.

Every grammar promptkit compiles goes through :func:`compile_grammar`, which validates it and
raises :class:`~promptkit.errors.ConstraintError` naming what llguidance cannot do. The
byte-level tokenizer (the 256 bytes and an end token) lets text be checked against a grammar,
and a partial answer be completed, without a model tokenizer. A model tokenizer's llguidance
view is built once and cached (:func:`llg_tokenizer`), as is the thread pool that computes the
masks of several rows at once (:func:`executor`).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .errors import ConfigurationError, ConstraintError

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

__all__ = [
    "BYTE_EOS",
    "byte_matcher",
    "byte_tokenizer",
    "compile_grammar",
    "executor",
    "llg_tokenizer",
    "load_llguidance",
    "text_matches",
]

BYTE_EOS = 256  # the end token of the byte-level tokenizer


def load_llguidance() -> Any:
    """The ``llguidance`` module; raises ConfigurationError saying how to install it."""
    try:
        import llguidance
    except ImportError:
        raise ConfigurationError(
            "constrained decoding and grammar checks need llguidance: "
            "pip install 'promptkit[local]' (or pip install llguidance)"
        ) from None
    return llguidance


@lru_cache(maxsize=512)
def compile_grammar(kind: Literal["regex", "lark"], source: str, what: str) -> str:
    """A regular expression or Lark grammar as a validated llguidance grammar.

    ``what`` describes the grammar in the error. Raises ConstraintError naming the feature
    llguidance cannot compile, ConfigurationError when llguidance is not installed.
    """
    matcher_cls = load_llguidance().LLMatcher
    if kind == "regex":
        compiled: str = matcher_cls.grammar_from_regex(source)
    else:
        compiled = matcher_cls.grammar_from_lark(source)
    failed, messages = matcher_cls.validate_grammar_with_warnings(compiled, None)
    if failed:
        detail = messages[0].strip() if messages else "unknown error"
        feature = _feature(detail)
        raise ConstraintError(
            f"llguidance cannot compile {what} into a decoding constraint: "
            f"{feature}. Simplify the output type, or run with constrained='fallback' to "
            "parse and re-ask instead (constrained=False turns constraints off)",
            feature=feature,
        )
    return compiled


def _feature(message: str) -> str:
    """The unsupported feature in an llguidance error, as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    first = re.sub(r"^at \d+\(\d+\): ", "", lines[0] if lines else message)
    return first.removeprefix("failed to compile JSON schema: ")


class _Bytes:
    """A tokenizer whose tokens are the 256 bytes, plus an end token (for llguidance)."""

    eos_token_id = BYTE_EOS
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<end>"]
    special_token_ids: ClassVar[list[int]] = [BYTE_EOS]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@lru_cache(maxsize=1)
def byte_tokenizer() -> LLTokenizer:
    """The llguidance tokenizer whose tokens are single bytes (``BYTE_EOS`` ends)."""
    llg = load_llguidance()
    tokenizer: LLTokenizer = llg.LLTokenizer(llg.TokenizerWrapper(_Bytes()))
    return tokenizer


def byte_matcher(compiled: str) -> LLMatcher:
    """A fresh matcher of a compiled grammar over single bytes."""
    matcher: LLMatcher = load_llguidance().LLMatcher(byte_tokenizer(), compiled, log_level=0)
    return matcher


def text_matches(compiled: str, text: str) -> bool:
    """Whether ``text`` is a complete answer of a compiled grammar."""
    matcher = byte_matcher(compiled)
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[int, LLTokenizer]] = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()
_EXECUTOR: list[Any] = []


def llg_tokenizer(owner: Any, build: Callable[[int], LLTokenizer], vocab_size: int) -> LLTokenizer:
    """The llguidance tokenizer of ``owner`` (a tokenizer object) for a model vocabulary of
    ``vocab_size``: built once by ``build(vocab_size)`` (about 0.3 s for GPT-2), then cached."""
    with _TOKENIZERS_LOCK:
        per_owner = _TOKENIZERS.setdefault(owner, {})
        if vocab_size not in per_owner:
            per_owner[vocab_size] = build(vocab_size)
        return per_owner[vocab_size]


def executor() -> Any:
    """llguidance's thread pool for computing the masks of several rows at once (made once)."""
    if not _EXECUTOR:
        threads = max(1, min(4, (os.cpu_count() or 1) // 2))
        _EXECUTOR.append(load_llguidance().LLExecutor(num_threads=threads))
    return _EXECUTOR[0]
