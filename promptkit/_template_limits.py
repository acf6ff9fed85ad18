"""The resource limits of template rendering, stated and enforced in one place.

A template is code from a file, so a hostile or careless one must not hang the process or exhaust
its memory. Every render runs under a :class:`TemplateLimits` budget, kept per thread (``promptkit
serve`` renders in worker threads, where ``signal.alarm`` cannot help), and every limit is checked
*before* the work or allocation it guards, so a refused template fails fast and small:

``max_steps``
    Loop iterations plus the items that filters walk (``sum``, ``join``, ``sort``, ``map``...),
    every 4 characters ``wordwrap`` reflows and the words ``lipsum`` writes, per render.
``max_length``
    Characters of any string an operation builds (``*``, ``~``, ``+``, ``center``, ``indent``,
    ``format``, ``str.format`` widths, ``replace``, ``join``...), items of any sequence built by
    ``*``, the text an expression turns into, and the whole rendered text.
``max_depth``
    Nesting of calls: macros calling macros (recursion), recursive loops, ``caller()``.
``max_int_digits``
    Decimal digits of an integer built by ``**`` or ``*`` (Python's own limit for printing one).

A limit that fires raises :class:`~promptkit.errors.TemplateError` whose message names it
(``template limit 'max_steps' exceeded: ...``).
"""

from __future__ import annotations

import math
import re
import string
import threading
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass
from itertools import islice
from typing import Any

from .errors import TemplateError

__all__ = ["LIMITS", "TemplateLimits"]


@dataclass(frozen=True)
class TemplateLimits:
    """The limits every render runs under (see the module docstring for what each counts)."""

    max_steps: int = 500_000  # loop iterations + items filters walk, per render (< 1 s)
    max_length: int = 4_000_000  # characters of a built string or of the rendered text (~1M tokens)
    max_depth: int = 100  # nesting of macro calls, recursive loops and caller()
    max_int_digits: int = 4_300  # digits of an integer built by ** or * (Python's print limit)


LIMITS = TemplateLimits()


class _ThreadBudget(threading.local):
    """Each thread's budget: renders in one thread run one after another (rendering never
    awaits), so one object per thread, reset by each render, is never shared by two renders."""

    budget: _Budget | None = None


_THREAD = _ThreadBudget()


class _Budget:
    """What one render has used so far."""

    __slots__ = ("depth", "limits", "steps")

    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self.steps = 0
        self.depth = 0

    def charge(self, steps: int, what: str) -> None:
        """Count ``steps`` of work; raises TemplateError once over ``max_steps``."""
        self.steps += steps
        if self.steps > self.limits.max_steps:
            raise exceeded("max_steps", self.limits.max_steps, f"{what} takes the render past")

    def length(self, size: int, what: str) -> None:
        """Refuse to build ``what`` of ``size`` characters (or items) over ``max_length``."""
        if size > self.limits.max_length:
            raise exceeded("max_length", self.limits.max_length, f"{what} would be {size:,}, over")


def exceeded(limit: str, value: int, detail: str) -> TemplateError:
    """The error for a limit that fired: names the limit, its value and what hit it."""
    return TemplateError(
        f"template limit {limit!r} exceeded: {detail} the limit of {value:,} (a template may "
        "not loop, recurse or build text without bound; see promptkit.TemplateLimits)"
    )


def start(limits: TemplateLimits) -> None:
    """Start a render's budget under ``limits`` in the current thread: one budget per thread,
    reset for each render (renders do not nest)."""
    budget = _THREAD.budget
    if budget is None:
        _THREAD.budget = _Budget(limits)
    else:
        budget.limits = limits
        budget.steps = 0
        budget.depth = 0


def active() -> _Budget:
    """The budget of the render in progress (or of the thread's last one; a fresh default one
    before any, e.g. while Jinja folds constants at compile time)."""
    return _THREAD.budget or _Budget(LIMITS)


class Charged:
    """An iterable that charges one step per item it yields (``len`` passes through when the
    underlying iterable has one, so ``loop.length`` does not consume it)."""

    __slots__ = ("_budget", "_items", "_iterator", "_what")

    def __init__(self, items: Any, what: str) -> None:
        self._items = items
        self._iterator = iter(items)
        self._budget = active()
        self._what = what

    def __iter__(self) -> Charged:
        return self

    def __next__(self) -> Any:
        item = next(self._iterator)
        budget = self._budget
        budget.steps += 1
        if budget.steps > budget.limits.max_steps:
            budget.charge(0, self._what)
        return item

    def __len__(self) -> int:
        return len(self._items)


def text_size(value: Any, budget: _Budget, *, indent: int = 0) -> int:
    """About how many characters ``str(value)`` (or JSON with ``indent``) takes, found without
    building it; every container item visited is a step. Raises TemplateError over the limits."""
    limit = budget.limits.max_length
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, (bytes, bytearray)):
            total += 4 * len(item) + 3
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() * 3 // 10 + 2
        elif isinstance(item, Mapping):
            budget.charge(len(item), "turning a mapping into text")
            total += 2 + len(item) * (4 + indent * (depth + 1))
            stack.extend((v, depth + 1) for pair in item.items() for v in pair)
        elif isinstance(item, (list, tuple, set, frozenset)):
            budget.charge(len(item), "turning a sequence into text")
            total += 2 + len(item) * (2 + indent * (depth + 1))
            stack.extend((v, depth + 1) for v in item)
        else:
            total += 32
        if total > limit:
            raise exceeded("max_length", limit, "the text of a value would be over")
    return total


def check_text(value: Any) -> Any:
    """``finalize`` of every ``{{ expression }}``: refuse a value whose text is over the limit."""
    if type(value) is str:
        if len(value) > LIMITS.max_length:
            active().length(len(value), "an expression's text")
        return value  # (a render with a lower limit still stops at the whole text's length)
    if isinstance(value, (list, tuple, set, frozenset, Mapping)):
        text_size(value, active())
    return value


def joined(pieces: Any) -> str:
    """``concat`` of the environment: joins rendered pieces (a template, a macro, a
    ``{% set %}`` block) while their total stays under ``max_length``."""
    budget = _THREAD.budget or _Budget(LIMITS)
    limit = budget.limits.max_length
    if isinstance(pieces, list):
        total = sum(map(len, pieces))
        if total > limit:
            budget.length(total, "the rendered text")
        return "".join(pieces)
    # The first few pieces are taken at C speed (each is at most max_length already: an
    # expression's text is checked, literal text is part of the source); a template that loops
    # yields more and is measured piece by piece.
    kept = list(islice(pieces, 8))
    total = sum(map(len, kept))
    if total > limit:
        budget.length(total, "the rendered text")
    for piece in pieces:
        total += len(piece)
        if total > limit:
            budget.length(total, "the rendered text")
        kept.append(piece)
    return "".join(kept)


def check_concat(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The operands of ``~``: their texts together must stay under ``max_length``."""
    budget = active()
    total = sum(len(v) if isinstance(v, str) else text_size(v, budget) for v in values)
    budget.length(total, "a '~' concatenation")
    return values


_BITS_PER_DIGIT = math.log2(10)


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``**``, ``*``, ``%`` and ``+`` whose result would be over the limits."""
    budget = active()
    limits = budget.limits
    max_bits = limits.max_int_digits * _BITS_PER_DIGIT
    numbers = (
        isinstance(left, int)
        and isinstance(right, int)
        and not isinstance(left, bool)
        and not isinstance(right, bool)
    )
    if operator == "**" and numbers and right > 0 and abs(left) > 1:
        if math.log2(abs(left)) * right > max_bits:
            raise exceeded(
                "max_int_digits",
                limits.max_int_digits,
                f"{left} ** {right} would have more digits than",
            )
    elif operator == "*":
        if numbers:
            if left.bit_length() + right.bit_length() > max_bits + 1:
                raise exceeded(
                    "max_int_digits", limits.max_int_digits, "a product would have more digits than"
                )
            return
        sequence, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(count, int) and isinstance(sequence, (str, bytes, list, tuple)):
            budget.length(len(sequence) * max(count, 0), "a repeated sequence")
            if isinstance(sequence, (list, tuple)) and count > 1:
                budget.length(
                    text_size(sequence, budget) * count, "the text of a repeated sequence"
                )
    elif operator == "%" and isinstance(left, str):
        check_printf(left, right, budget)
    elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, Sized):
        budget.length(len(left) + len(right), "a '+' concatenation")


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")


def check_printf(fmt: str, args: Any, budget: _Budget) -> None:
    """Refuse a ``%`` format (the ``format`` filter, ``'...' % x``) whose widths, precisions or
    arguments would build text over ``max_length``."""
    total = len(fmt)
    star = False
    for match in _PRINTF.finditer(fmt):
        for number in match.group(1, 2):
            if number == "*":
                star = True
            elif number:
                total += _width(number, budget)
    values = args if isinstance(args, tuple) else (args,)
    for value in values:
        if star and isinstance(value, int):
            total += value
        total += len(value) if isinstance(value, str) else text_size(value, budget)
    budget.length(total, "the formatted text")


def _width(digits: str, budget: _Budget) -> int:
    if len(digits) > len(str(budget.limits.max_length)):
        budget.length(budget.limits.max_length + 1, "a format width")
    return int(digits)


def check_str_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse ``'...'.format(...)`` whose widths or arguments would build text over
    ``max_length`` (nested widths such as ``{:{w}}`` count every integer argument)."""
    budget = active()
    total = len(fmt)
    nested = False
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec:
            nested |= "{" in spec
            total += sum(_width(d, budget) for d in re.findall(r"\d+", spec))
    for value in (*args, *kwargs.values()):
        if nested and isinstance(value, int):
            total += value
        total += len(value) if isinstance(value, str) else text_size(value, budget)
    budget.length(total, "the formatted text")


def check_method(
    name: str, owner: str | bytes, args: tuple[Any, ...], budget: _Budget
) -> tuple[Any, ...]:
    """Refuse a str or bytes method call (``center``, ``ljust``, ``rjust``, ``zfill``,
    ``expandtabs``, ``replace``, ``translate``, ``join``) whose result would be over
    ``max_length``; returns the arguments to call it with (``join``'s items as a list)."""
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        budget.length(args[0], f"{type(owner).__name__}.{name}'s width")
    elif name == "expandtabs":
        size = args[0] if args and isinstance(args[0], int) else 8
        tab = "\t" if isinstance(owner, str) else b"\t"
        budget.length(len(owner) + owner.count(tab) * size, "the expanded text")  # type: ignore[arg-type]
    elif name == "replace" and len(args) >= 2:
        check_replace(owner, args[0], args[1], budget)
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        budget.length(len(owner) * longest, "the translated text")
    elif name == "join" and args and isinstance(args[0], (list, tuple, Charged)):
        args = (collect(args[0], len(owner), budget), *args[1:])
    return args


def collect(items: Any, separator: int, budget: _Budget) -> list[Any]:
    """The items of a join as a list, each charged a step, refused as soon as their text and
    ``separator`` characters between them would be over ``max_length``."""
    kept: list[Any] = []
    total = 0
    for item in items:
        budget.charge(1, "joining")
        total += separator + (
            len(item) if isinstance(item, (str, bytes)) else text_size(item, budget)
        )
        if total > budget.limits.max_length:
            budget.length(total, "the joined text")
        kept.append(item)
    return kept


def check_replace(text: Any, old: Any, new: Any, budget: _Budget) -> None:
    """Refuse a replace whose result would be over ``max_length``."""
    kind = type(text) if isinstance(text, (str, bytes)) else None
    if kind is not None and isinstance(old, kind) and isinstance(new, kind):
        count = text.count(old) if old else len(text) + 1
        budget.length(len(text) + count * (len(new) - len(old)), "the replaced text")


def check_result(result: Any, what: str) -> Any:
    """A call's or filter's result: strings and sequences over ``max_length`` are refused, and an
    iterator is charged a step per item it yields."""
    if isinstance(result, (str, bytes, list, tuple, dict)):
        active().length(len(result), what)
    elif isinstance(result, Iterator) and not isinstance(result, Charged):
        return Charged(result, what)
    return result


# Filters that walk every item of their value (lazy ones, such as map, are charged per item
# they yield instead) and filters that turn a non-string value into its text.
_WALKING_FILTERS = frozenset(
    [
        "dictsort",
        "groupby",
        "items",
        "join",
        "list",
        "max",
        "min",
        "reverse",
        "sort",
        "sum",
        "tojson",
        "pprint",
        "unique",
        "xmlattr",
    ]
)
_TEXT_FILTERS = frozenset(
    [
        "capitalize",
        "center",
        "format",
        "indent",
        "lower",
        "pprint",
        "replace",
        "string",
        "striptags",
        "title",
        "trim",
        "truncate",
        "upper",
        "urlencode",
        "urlize",
        "wordcount",
        "wordwrap",
    ]
)


_SIZED_BY_TEXT = frozenset(["center", "format", "indent", "replace", "urlize", "wordwrap"])


def check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Charge and check a filter call before it runs; returns the value to pass on (an iterator
    that ``join`` must measure first is made a list)."""
    budget = active()
    if name == "join" and not isinstance(value, str):
        separator = _argument(args, kwargs, 0, "d")
        if _argument(args, kwargs, 1, "attribute") is None:
            return collect(value, len(separator) if isinstance(separator, str) else 0, budget)
        value = list(value)
    walks = name in _WALKING_FILTERS and isinstance(value, Sized)
    if walks and not isinstance(value, (str, Charged)):
        budget.charge(len(value), f"the {name!r} filter")
    if name in _TEXT_FILTERS and not isinstance(value, str):
        text_size(value, budget)
    _check_filter_arguments(name, value, args, kwargs, budget)
    return value


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _check_filter_arguments(
    name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], budget: _Budget
) -> None:
    # The text these filters work on (its size was checked above when it is not a string).
    text = value if isinstance(value, str) else str(value) if name in _SIZED_BY_TEXT else ""
    if name == "center":
        width = _argument(args, kwargs, 0, "width")
        if isinstance(width, int):
            budget.length(width, "the 'center' filter's width")
    elif name == "indent":
        width = _argument(args, kwargs, 0, "width")
        size = len(width) if isinstance(width, str) else width if isinstance(width, int) else 4
        budget.length(len(text) + (text.count("\n") + 1) * size, "the indented text")
    elif name == "wordwrap":
        budget.charge(len(text) // 4, "the 'wordwrap' filter")
        wrapper = _argument(args, kwargs, 3, "wrapstring")
        extra = len(wrapper) if isinstance(wrapper, str) else 1
        width = _argument(args, kwargs, 0, "width")
        lines = len(text) // max(width if isinstance(width, int) else 79, 1) + 1
        budget.length(len(text) + lines * extra, "the wrapped text")
    elif name == "urlize":
        budget.charge(len(text) // 2, "the 'urlize' filter")
    elif name == "format":
        check_printf(text, args or dict(kwargs), budget)
    elif name == "replace":
        check_replace(
            text, _argument(args, kwargs, 0, "old"), _argument(args, kwargs, 1, "new"), budget
        )
    elif name in ("batch", "slice"):
        count = _argument(args, kwargs, 0, "linecount" if name == "batch" else "slices")
        if isinstance(count, int):
            budget.charge(max(count, 0) if name == "slice" else 0, "the 'slice' filter")
            budget.length(count, f"the {name!r} filter's count")
    elif name == "tojson":
        indent = _argument(args, kwargs, 0, "indent")
        text_size(value, budget, indent=indent if isinstance(indent, int) else 0)
    elif name == "pprint":
        budget.length(2 * text_size(value, budget), "the pretty-printed text")
