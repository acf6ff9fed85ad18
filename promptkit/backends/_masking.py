"""The token mask shared by the local backends: a grammar decides which tokens may come next.

:class:`TokenMasker` holds one llguidance matcher per sequence of a batch. Each step it computes
the allowed tokens of every live row (in parallel, into one bitmask) and applies them to the
logits in eager PyTorch (greedy decoding on ``scratch:`` skips a row whose most likely token is
allowed: it takes that token anyway); after sampling, :meth:`TokenMasker.advance` feeds the
chosen token to the row's matcher, and :meth:`TokenMasker.forced` says which tokens the grammar
now forces (the scratch backend feeds them without sampling: fast-forward). transformers'
``generate`` uses the same masker through :class:`~promptkit.backends._hf.GrammarLogitsProcessor`.

The token budget is part of the constraint: each row keeps a short valid ending of its answer
(found on a byte-level view of the grammar). When the tokens left come close to what that ending
needs, only tokens that still leave room to finish are allowed (the most likely ones, checked one
by one), and when nothing else fits the ending is forced. Farther from the end one token can
still commit to more than the budget holds (a ``{`` opening an object of many required fields),
so the backends draw through :meth:`TokenMasker.sample`, which draws again when the token drawn
does not :meth:`~TokenMasker.fits`. So an answer is complete and valid when ``max_tokens`` runs
out, and ``max_tokens`` too small for any valid answer is an error before generation starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._endings import shortest_ending
from .._grammar import Grammar
from .._llg import BYTE_EOS, executor, load_llguidance
from ..errors import BackendError, ConstraintError
from ._base import GenerationConfig
from ._local import any_allowed, sample_next, top_token, top_tokens

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

__all__ = ["TokenMasker"]

NEAR = 16  # start guarding the budget this many tokens before the ending must begin
CANDIDATES = 8  # most likely tokens checked one by one near the end of the budget
SLACK = 8  # until this close to NEAR, the ending is looked for only every REFRESH tokens
REFRESH = 4
ENDING_LIMIT = 8192  # bytes searched for a valid ending before giving up on one
TAIL_CUTS = 4  # shortened known endings tried after a token before searching for a new one


class _Row:
    """The constraint state of one sequence."""

    def __init__(self, matcher: LLMatcher, byte_matcher: LLMatcher):
        self.matcher = matcher
        self.bytes = byte_matcher
        self.produced = 0  # tokens consumed so far
        self.tail: bytes | None = None  # a valid ending from the current state (cached)
        self.ending: list[int] | None = None  # ``tail`` as tokens (cached)
        self.ending_length = 0  # length of the last ending found
        self.since = 0  # tokens taken since it was found
        self.endings_after: dict[int, tuple[bytes, list[int]]] = {}  # after candidate tokens
        self.forced: list[int] = []  # an ending being forced because the budget requires it


class TokenMasker:
    """Allowed-token masks for a batch of ``batch`` sequences constrained by ``grammar``.

    ``greedy``: decoding takes the most likely token (so near the end of the budget only that
    one needs checking).

    Raises ConstraintError when the grammar cannot be compiled, or when ``max_tokens`` cannot
    hold any valid answer.
    """

    def __init__(
        self,
        grammar: Grammar,
        tokenizer: LLTokenizer,
        *,
        batch: int,
        vocab_size: int,
        max_tokens: int,
        greedy: bool = False,
    ):
        llg = load_llguidance()
        compiled = grammar.compiled()
        if tokenizer.vocab_size != vocab_size:
            raise ValueError(
                f"the llguidance tokenizer has {tokenizer.vocab_size} tokens, the model "
                f"{vocab_size}; build it with n_vocab={vocab_size}"
            )
        self.grammar = grammar
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self.candidates = 1 if greedy else CANDIDATES  # greedy takes the top token or nothing
        self._token_bytes: dict[int, bytes] = {}
        self._tokenized: dict[bytes, list[int]] = {}  # endings as tokens, by their bytes
        self.rows: list[_Row] = []
        self._unmasked: dict[int, int] = {}  # rows a lazy apply left unmasked: their top token
        first = llg.LLMatcher(tokenizer, compiled, log_level=0)
        if first.is_error():
            raise ConstraintError(
                f"llguidance cannot use {grammar.describe()}: {first.get_error()}",
                feature=first.get_error(),
            )
        first_bytes = grammar.byte_matcher()
        for i in range(batch):
            matcher = first if i == 0 else first.deep_copy()
            self.rows.append(_Row(matcher, first_bytes if i == 0 else first_bytes.deep_copy()))
        self._check_budget()
        words = (vocab_size + 31) // 32
        self._bitmask = torch.full((batch, words), -1, dtype=torch.int32)

    @classmethod
    def for_request(
        cls, config: GenerationConfig, tokenizer: LLTokenizer, *, batch: int, vocab_size: int
    ) -> TokenMasker:
        """The masker of a generation request (``config.grammar`` must be set)."""
        if config.grammar is None:
            raise ValueError("the request has no grammar to constrain to")
        return cls(
            config.grammar,
            tokenizer,
            batch=batch,
            vocab_size=vocab_size,
            max_tokens=config.max_tokens,
            greedy=config.temperature == 0,
        )

    def _check_budget(self) -> None:
        """Find the answer's shortest ending, before any token, for every row (they all start in
        the same state: a row without it would look far from its budget and be left unguarded
        for its first tokens). Raises ConstraintError when it does not fit ``max_tokens``."""
        first = self.rows[0]
        ending = self._ending(first)
        for row in self.rows[1:]:
            row.tail, row.ending_length = first.tail, first.ending_length
            row.ending = None if ending is None else list(ending)
        if ending is not None and len(ending) > self.max_tokens:
            text = self.tokenizer.decode_str(ending)
            raise ConstraintError(
                f"max_tokens={self.max_tokens} is too small for any valid answer: the shortest "
                f"answer found, {text!r}, takes {len(ending)} tokens; raise max_tokens to at "
                f"least {len(ending)}",
                min_tokens=len(ending),
            )

    # -- per step -----------------------------------------------------------------------------

    def apply(self, logits: torch.Tensor, rows: Sequence[int], *, lazy: bool = False) -> None:
        """Set to -inf, in place, the logits ``(B, vocab)`` of every token that ``rows`` may not
        take next (other rows are left alone).

        ``lazy``, for greedy decoding that draws through :meth:`sample`: a row whose most likely
        token is allowed is left unmasked, since greedy decoding takes that token anyway, and
        :meth:`sample` masks it should that token not fit the budget. This spares computing
        and applying a mask over the whole vocabulary at most steps."""
        free = [i for i in rows if not (self.rows[i].forced or self.rows[i].matcher.is_stopped())]
        self._unmasked = {}
        if lazy and self.candidates == 1 and free:
            tops = top_tokens(logits).tolist()  # one argmax over the batch
            for i in free:
                if self.rows[i].matcher.validate_tokens([tops[i]]) == 1:
                    self._unmasked[i] = tops[i]
        self._mask(logits, [i for i in rows if i not in self._unmasked])
        for i in free:
            if self._guard_due(self.rows[i]) and self._guard_budget(
                i, logits[i], self._unmasked.get(i)
            ):
                self._unmasked.pop(i, None)  # its most likely token may be gone

    def _mask(self, logits: torch.Tensor, rows: Sequence[int]) -> None:
        """Compute the allowed tokens of ``rows`` and set the others' logits to -inf."""
        if not rows:
            return
        free = [i for i in rows if not (self.rows[i].forced or self.rows[i].matcher.is_stopped())]
        bitmask = self._bitmask
        width = bitmask.size(1) * 4
        if len(free) == 1:  # one row: no need for the thread pool
            row_mask = bitmask[free[0]]
            self.rows[free[0]].matcher.unsafe_compute_mask_ptr(row_mask.data_ptr(), width)
        elif free:
            matchers = [(self.rows[i].matcher, i) for i in free]
            executor().unsafe_compute_mask_ptr(matchers, bitmask.data_ptr(), width, bitmask.size(0))
        for i in rows:
            row = self.rows[i]
            if row.forced or row.matcher.is_stopped():
                only = row.forced[0] if row.forced else self.eos
                bitmask[i].zero_()
                bitmask[i, only // 32] = _bit(only % 32)
        blocked = self._blocked(rows, logits.size(-1)).to(logits.device)
        if len(rows) == len(self.rows):
            logits.masked_fill_(blocked, float("-inf"))
        else:
            on_device = torch.tensor(list(rows), dtype=torch.long, device=logits.device)
            logits[on_device] = logits[on_device].masked_fill(blocked, float("-inf"))

    def _blocked(self, rows: Sequence[int], vocab: int) -> torch.Tensor:
        """``(len(rows), vocab)`` booleans, True where the token is not allowed."""
        packed = self._bitmask.numpy().view(np.uint8)  # little-endian: bit t % 8 of byte t // 8
        if len(rows) < len(self.rows):
            packed = packed[list(rows)]
        bits = np.unpackbits(np.invert(packed), axis=-1, bitorder="little", count=vocab)
        return torch.from_numpy(bits).view(torch.bool)  # 0/1 bytes reinterpreted, no copy

    def _guard_due(self, row: _Row) -> bool:
        """Whether the budget guard looks at ``row`` this step: not while it is far from the
        end of its budget with no ending known, except every few tokens."""
        left = self.max_tokens - row.produced
        return not (
            row.tail is None and left > row.ending_length + NEAR + SLACK and row.since < REFRESH
        )

    def _guard_budget(self, i: int, logits: torch.Tensor, top: int | None = None) -> bool:
        """Near the end of the budget, keep only tokens after which the answer can still end;
        whether it did (and so changed the row's ``logits``). ``top``: the row's most likely
        token when already known."""
        row = self.rows[i]
        left = self.max_tokens - row.produced
        ending = self._ending(row)
        if ending is None or left - len(ending) > NEAR:
            return False
        if ending and len(ending) > left:  # no room for anything else: force the ending
            row.forced = list(ending)
            self._only(logits, [ending[0]])
            return True
        # The ending found is one way to finish; the model's own candidates stay allowed when
        # an ending still fits after them, even when the ending found exactly fills the budget
        # (forcing it then would overrule a model that prefers another answer of that length).
        keep = [ending[0]] if ending else [self.eos]
        if self.candidates == 1:
            candidates = [top_token(logits) if top is None else top]
        else:
            values, ids = torch.topk(logits, min(self.candidates, logits.size(-1)))
            candidates = ids[values > float("-inf")].tolist()  # masked tokens are no candidates
        for token in candidates:
            if token in keep:
                continue
            if self.fits(i, token):  # cheap when the known ending still ends after it
                keep.append(token)
        self._only(logits, keep)
        return True

    def sample(
        self,
        logits: torch.Tensor,
        rows: Sequence[int],
        config: GenerationConfig,
        generators: Sequence[torch.Generator] | None,
    ) -> torch.Tensor:
        """The next token of every row of masked ``logits`` ``(B, vocab)``, as
        :func:`~promptkit.backends._local.sample_next` draws it, except that a token of one of
        ``rows`` that does not :meth:`fit <fits>` the budget is set to -inf (in place) and that
        row drawn again. Raises BackendError when no allowed token leaves room to end."""
        if config.temperature == 0 and len(self._unmasked) == logits.size(0):
            tokens = [self._unmasked[i] for i in range(logits.size(0))]  # known from apply
        else:
            tokens = sample_next(logits, config, generators).tolist()
        for i in rows:
            token = tokens[i]
            while not self.fits(i, token):
                logits[i, token] = float("-inf")
                if self._unmasked.pop(i, None) is not None:  # left unmasked: mask it now
                    self._mask(logits, [i])
                if not any_allowed(logits[i]):
                    raise BackendError(
                        "constrained decoding went wrong: no allowed token leaves room to end "
                        f"the answer within max_tokens={self.max_tokens}"
                    )
                own = [generators[i]] if generators else None
                token = int(sample_next(logits[i : i + 1], config, own)[0])
            tokens[i] = token
        return torch.tensor(tokens, device=logits.device)

    def fits(self, i: int, token: int) -> bool:
        """Whether row ``i`` may take ``token`` (one the mask allows) without outgrowing its
        budget: an ending of the answer in the tokens then left follows it.

        The mask alone cannot promise it far from the budget, where tokens are not checked
        one by one: a ``{`` may open an object whose required fields take more tokens than are
        left. So the local backends ask this of the token they sampled, and sample again
        without it when it does not fit. Cheap for a token after which the ending known, or
        what is left of it, still ends the answer (inside a string, a number, a closing
        quote: :meth:`_ending_after`); otherwise an ending is looked for after it. Either is
        kept for :meth:`advance`.
        """
        row = self.rows[i]
        if row.forced or token == self.eos or row.matcher.is_stopped():
            return True
        left = self.max_tokens - row.produced - 1  # after this token
        checked = row.endings_after.get(token)
        if checked is not None:
            return len(checked[1]) <= left
        ending = self._ending(row)
        if ending is None:
            return True  # no ending known to compare with: the mask is all there is
        if ending and ending[0] == token:
            return True  # the known way to finish (it fits whenever anything does)
        if row.tail is not None:
            after, tail_ends = self._ending_after(row, token, row.tail, left)
            if after is not None:
                row.endings_after[token] = after
                return True
            if tail_ends:  # the known ending still ends it, but too long: no search either
                return False
        return self._fits_after(row, token, left)

    def _ending_after(
        self, row: _Row, token: int, tail: bytes, left: int
    ) -> tuple[tuple[bytes, list[int]] | None, bool]:
        """An ending (bytes, tokens) of at most ``left`` tokens after ``token``, known without a
        search: ``tail`` (the row's known ending) itself, as inside a string; else what is left
        of it once the token's bytes took the place of its first few (``tail[cut:]``: ``"``
        closing a string whose ending began ``","``; ``45`` in a date whose ending began
        ``01-``). Also whether ``tail`` itself still ends the answer after ``token``: then a
        search would find an ending no shorter, and a token none of these fit is refused."""
        taken = self._bytes(token)
        shared = next(
            (k for k, (a, b) in enumerate(zip(taken, tail, strict=False)) if a != b),
            min(len(taken), len(tail)),
        )  # bytes the token and the tail begin with alike
        cuts = dict.fromkeys((0, shared, len(taken), *range(1, len(taken))))
        tail_ends = False
        for cut in [c for c in cuts if c <= len(tail)][:TAIL_CUTS]:
            rest = tail[cut:]
            tokens = self._tokenization(rest)
            checked = [token, *tokens, self.eos]
            if row.matcher.validate_tokens(checked) == len(checked):  # one check: cheap
                tail_ends = tail_ends or cut == 0
                if len(tokens) <= left:
                    return (rest, list(tokens)), tail_ends
        if not tail_ends:  # tokenized otherwise, the tail may still end it: check its bytes
            checked_bytes = [*taken, *tail, BYTE_EOS]
            tail_ends = row.bytes.validate_tokens(checked_bytes) == len(checked_bytes)
            if tail_ends:
                tokens = self._tokens(row, tail, [token])
                if len(tokens) <= left:
                    return (tail, tokens), True
        return None, tail_ends

    @staticmethod
    def _only(logits: torch.Tensor, tokens: list[int]) -> None:
        kept = logits[tokens].clone()
        logits.fill_(float("-inf"))
        logits[tokens] = kept
        if not torch.isfinite(kept).any():  # the forced token was masked by nothing but -inf
            logits[tokens] = 0.0

    def _fits_after(self, row: _Row, token: int, left: int) -> bool:
        """Whether an ending of at most ``left`` tokens follows ``token`` (kept for advance)."""
        after = row.bytes.deep_copy()
        if not after.consume_tokens(list(self._bytes(token))):
            return False
        tail = shortest_ending(after, ENDING_LIMIT)
        if tail is None:
            return False
        ending = self._tokens(row, tail, [token])
        row.endings_after[token] = (tail, ending)
        return len(ending) <= left

    def advance(self, i: int, token: int) -> None:
        """Feed the token that row ``i`` took to its matcher."""
        row = self.rows[i]
        if row.forced:
            row.forced.pop(0)
        if not row.matcher.consume_token(token):
            raise BackendError(
                f"constrained decoding went wrong: token {token} was refused by the grammar "
                f"({row.matcher.get_error()})"
            )
        if token != self.eos:
            row.bytes.consume_tokens(list(self._bytes(token)))
        row.produced += 1
        row.since += 1
        taken = self._bytes(token) if token != self.eos else b""
        if token in row.endings_after:  # found when the token was checked: it fits the budget
            row.tail, row.ending = row.endings_after[token]
            row.ending_length, row.since = len(row.ending), 0
        elif row.tail is not None and row.tail.startswith(taken):
            row.tail = row.tail[len(taken) :]  # the rest of the ending still ends the answer
            row.ending = row.ending[1:] if row.ending and row.ending[0] == token else None
        else:
            row.tail = row.ending = None
        row.endings_after.clear()

    def forced(self, i: int) -> list[int]:
        """Tokens row ``i`` must take next, whatever the model says (possibly none).

        The grammar forces text, and llguidance splits it into tokens its own way, which can
        take more tokens than the ending the budget counts on (``],`` then ``[`` where the
        ending has ``],[``). Where the answer could then no longer end within ``max_tokens``,
        none are returned: the row samples that text token by token under the budget guard."""
        row = self.rows[i]
        if row.forced:
            return list(row.forced)
        if row.matcher.is_stopped():
            return []
        tokens = list(row.matcher.compute_ff_tokens())
        return tokens if not tokens or self._ends_after(row, tokens) else []

    def _ends_after(self, row: _Row, tokens: list[int]) -> bool:
        """Whether an ending of the answer still fits the budget after ``tokens`` (which the
        row's matcher accepts); True when no ending is known, as in :meth:`fits`."""
        left = self.max_tokens - row.produced - len(tokens)
        ending = self._ending(row)
        if ending is None or ending[: len(tokens)] == tokens:
            return left >= 0  # the known ending goes through them: it fits if anything does
        taken = b"".join(self._bytes(token) for token in tokens)
        if row.tail is not None and row.tail.startswith(taken):  # the rest of the known ending
            rest = self._tokenization(row.tail[len(taken) :])
            checked = [*tokens, *rest, self.eos]
            if len(rest) <= left and row.matcher.validate_tokens(checked) == len(checked):
                return True
        after = row.bytes.deep_copy()
        if left < 0 or not after.consume_tokens(list(taken)):
            return left >= 0
        tail = shortest_ending(after, ENDING_LIMIT)
        return tail is None or len(self._tokens(row, tail, tokens)) <= left

    def finished(self, i: int) -> bool:
        """Whether row ``i``'s answer is complete and nothing more may follow."""
        return bool(self.rows[i].matcher.is_stopped())

    # -- endings ------------------------------------------------------------------------------

    def _ending(self, row: _Row) -> list[int] | None:
        """Tokens of a short valid ending from the row's state (None when none was found)."""
        if row.tail is None:
            tail = b"" if row.matcher.is_accepting() else shortest_ending(row.bytes, ENDING_LIMIT)
            if tail is None:
                return None
            row.tail, row.ending = tail, None
            row.since = 0
        if row.ending is None:
            row.ending = self._tokens(row, row.tail, ())
            if self.grammar.leading_space and row.produced == 0:
                self._prefer_spaced(row)
            row.ending_length = len(row.ending)
        return row.ending

    def _prefer_spaced(self, row: _Row) -> None:
        """The shortest ending in bytes is not always the shortest in tokens: before an answer
        that may start with a space, `` negative`` can be one token where ``negative`` is
        three. Take the spaced form when it is shorter, so that a tight ``max_tokens`` is not
        spent (or refused) on the unspaced spelling."""
        assert row.tail is not None and row.ending is not None
        if row.tail.startswith(b" "):
            return
        spaced = b" " + row.tail
        check = row.bytes.deep_copy()
        if not (check.consume_tokens(list(spaced)) and check.is_accepting()):
            return
        tokens = self._tokens(row, spaced, ())
        if len(tokens) < len(row.ending) and row.matcher.validate_tokens(tokens) == len(tokens):
            row.tail, row.ending = spaced, tokens

    def _tokens(self, row: _Row, tail: bytes, after: Sequence[int]) -> list[int]:
        """``tail`` as tokens the row's matcher accepts after the tokens ``after``."""
        tokens = list(self._tokenization(tail))
        checked = [*after, *tokens]
        if row.matcher.validate_tokens(checked) == len(checked):
            return tokens
        single = [self.tokenizer.tokenize_bytes(bytes([b])) for b in tail]
        if all(len(t) == 1 for t in single):
            return [t[0] for t in single]
        return tokens

    def _tokenization(self, tail: bytes) -> list[int]:
        """The tokenizer's tokens of ``tail`` (cached: the same ending recurs step after step,
        inside a string or a number); not to be modified."""
        tokens = self._tokenized.get(tail)
        if tokens is None:
            tokens = self._tokenized[tail] = list(self.tokenizer.tokenize_bytes(tail))
        return tokens

    def _bytes(self, token: int) -> bytes:
        found = self._token_bytes.get(token)
        if found is None:
            found = self._token_bytes[token] = self.tokenizer.decode_bytes([token])
        return found


def _bit(position: int) -> int:
    """The int32 value with one bit set (bit 31 is the sign bit)."""
    return (1 << position) - (1 << 32) if position == 31 else 1 << position
