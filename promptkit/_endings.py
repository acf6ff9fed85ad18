"""The shortest-ending search: a short valid ending of a partial answer, over bytes.

What keeps constrained decoding inside its token budget: when the tokens left are few, the
decoder asks how the answer can end and writes that. The search runs on a byte-level matcher
(:meth:`promptkit._grammar.Grammar.byte_matcher`), so it needs no model tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._llg import BYTE_EOS

if TYPE_CHECKING:
    from llguidance import LLMatcher

__all__ = ["shortest_ending"]

# Bytes preferred when looking for a short ending: closers, then separators, then fillers.
_CLOSERS = b'"}]'
_LETTERS = bytes(range(97, 123)) + bytes(range(65, 91))
_PREFERRED = _CLOSERS + b",:0123456789" + _LETTERS + b"-. "
_ORDER = tuple(_PREFERRED) + tuple(b for b in range(256) if b not in _PREFERRED)
# In a state met before, look first for a byte that leads somewhere else: closers, then
# punctuation (``@`` in an e-mail pattern), then the rest.
_SYMBOLS = bytes(b for b in range(33, 127) if not chr(b).isalnum() and b not in _CLOSERS)
_ESCAPE = _CLOSERS + _SYMBOLS
_ESCAPE_ORDER = tuple(_ESCAPE) + tuple(b for b in _ORDER if b not in _ESCAPE)
_ESCAPE_TRIES = 96  # candidates tried for a way out of a repeated state


def _mask(matcher: LLMatcher) -> int:
    return int.from_bytes(matcher.compute_bitmask(), "little")


def shortest_ending(matcher: LLMatcher, limit: int) -> bytes | None:
    """A short byte string that completes what a byte-level ``matcher`` has consumed.

    Greedy: bytes the grammar forces are taken as they are; otherwise the best-ranked allowed
    byte (closers ``"`` ``}`` ``]`` first, then ``,`` ``:`` ``0`` ...), except one already taken
    from a state with the same allowed set since the last closer; in a state met before, a byte
    that leads elsewhere comes first (so ``a*b`` ends with ``b`` instead of looping on ``a``,
    ``[a-z]+@`` reaches the ``@`` after one letter, and ``[0-9]+`` stops when it may). Not
    always the shortest, always valid; None when no ending of at most ``limit`` bytes was found.
    The matcher is left as it was.
    """
    matcher = matcher.deep_copy()
    out = bytearray()
    taken: set[tuple[int, int]] = set()
    seen: set[int] = set()
    while len(out) <= limit:
        if matcher.is_accepting():
            return bytes(out)
        forced = matcher.compute_ff_bytes()
        if forced:
            if not matcher.consume_tokens(list(forced)):
                return None
            out += forced
            if any(byte in _CLOSERS for byte in forced):
                taken.clear()
                seen.clear()
            continue
        mask = _mask(matcher)
        if mask >> BYTE_EOS & 1:
            return bytes(out)
        chosen = _way_out(matcher, mask, taken) if mask in seen else -1
        seen.add(mask)
        if chosen < 0:
            chosen = next((b for b in _ORDER if mask >> b & 1 and (mask, b) not in taken), -1)
        if chosen < 0:  # every allowed byte was taken here before: take the best-ranked one
            chosen = next((b for b in _ORDER if mask >> b & 1), -1)
            if chosen < 0:
                return None
        if not matcher.consume_token(chosen):
            return None
        out.append(chosen)
        if chosen in _CLOSERS:
            taken.clear()
            seen.clear()
        else:
            taken.add((mask, chosen))
    return None


def _way_out(matcher: LLMatcher, mask: int, taken: set[tuple[int, int]]) -> int:
    """In a state met before: an allowed byte after which the allowed set changes (or the
    answer may end), so that the ending makes progress; -1 when none was found."""
    tries = 0
    for byte in _ESCAPE_ORDER:
        if not mask >> byte & 1 or (mask, byte) in taken:
            continue
        matcher.consume_token(byte)
        moved = matcher.is_accepting() or _mask(matcher) != mask
        matcher.rollback(1)
        if moved:
            return byte
        tries += 1
        if tries >= _ESCAPE_TRIES:
            break
    return -1
