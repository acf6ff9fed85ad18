"""Safe Jinja2 templates: sandboxed, strict about undefined names, with line numbers in errors.

Input values are data. Values are only ever substituted into a compiled template, never
compiled themselves, so ``{{ 7*7 }}`` inside a value stays text; chat roles are split from the
template *source* before rendering, so a value holding a line ``system:`` cannot start a message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import _template_limits as _limits
from ._template_folder import LOADING_NODES, FolderLoader, loaded_templates
from ._template_limits import LIMITS, TemplateLimits
from .errors import MissingVariableError, TemplateError

__all__ = [
    "CompiledTemplate",
    "Segment",
    "TemplateLimits",
    "compile_template",
    "guess_language",
    "sandboxed_environment",
    "split_roles",
]

# A role line as Prompty writes it: "system:", "user:", "assistant:" alone on a line, optionally
# preceded by "#" and followed by attributes in brackets (which are accepted and ignored).
_ROLE_LINE = re.compile(
    r"^[ \t]*#?[ \t]*(system|user|assistant|function|tool)[ \t]*(\[[^\]\n]*\])?[ \t]*:[ \t]*$",
    re.MULTILINE | re.IGNORECASE,
)

_LANGUAGE_HINTS: tuple[tuple[str, str], ...] = (
    (r"^\s*#include\s*<", "c++"),
    (r"^\s*package\s+main\b|^\s*func\s+\w+\(", "go"),
    (r"\bfn\s+\w+\s*\(|\blet\s+mut\b|\bimpl\b\s+\w+", "rust"),
    (r"\bpublic\s+(static\s+)?(class|void)\b|\bSystem\.out\.println\b", "java"),
    (r"^\s*(def|class)\s+\w+.*:\s*$|^\s*(from\s+\w+\s+)?import\s+\w+", "python"),
    (r"\b(const|let|var)\s+\w+\s*=|=>|\bfunction\s+\w+\s*\(|console\.log", "javascript"),
    (r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE\s+TABLE)\b", "sql"),
    (r"^#!/bin/(ba)?sh|^\s*echo\s", "bash"),
)


def guess_language(code: str, default: str = "python") -> str:
    """Guess a code snippet's programming language from telltale syntax (``default`` if none)."""
    for pattern, language in _LANGUAGE_HINTS:
        flags = re.MULTILINE | (re.IGNORECASE if language == "sql" else 0)
        if re.search(pattern, code, flags):
            return language
    return default


def _to_json(value: Any, indent: int | None = None) -> str:
    """``{{ value | tojson }}``: plain JSON (Jinja's own filter escapes for HTML)."""
    return json.dumps(value, indent=indent, ensure_ascii=False)


class _LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the budget wired into what no sandbox hook sees: every
    ``{% for %}`` iterates through a step-charging wrapper, and ``~`` checks its operands."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        charged = nodes.Call(
            nodes.EnvironmentAttribute("charged_loop"), [node.iter], [], None, None
        )
        limited = nodes.For(node.target, charged, node.body, node.else_, node.test, node.recursive)
        limited.set_lineno(node.lineno)
        limited.set_environment(self.environment)
        super().visit_For(limited, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("str_join(environment.check_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class _Environment(ImmutableSandboxedEnvironment):
    """The one Jinja2 environment: sandboxed, immutable values, undefined names are errors, and
    every render bounded by the limits of :mod:`promptkit._template_limits`."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"**", "*", "%", "+"})
    concat = staticmethod(_limits.joined)

    @staticmethod
    def charged_loop(items: Any) -> _limits.Charged:
        """The iterable of a ``{% for %}``: one step per iteration."""
        return _limits.Charged(items, "a loop")

    @staticmethod
    def check_concat(values: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of ``~``, checked against ``max_length``."""
        return _limits.check_concat(values)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """``**``, ``*``, ``%`` and ``+``, refused before they build something over the limits."""
        _limits.check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call a template makes: checked before it runs (widths, ``lipsum``, recursion
        depth), its result checked after."""
        budget = _limits.active()
        if isinstance(__obj, LoopContext) and args:
            args = (_limits.Charged(args[0], "a recursive loop"), *args[1:])
        elif __obj is _LIPSUM:
            count = args[0] if args else kwargs.get("n", 5)
            longest = args[3] if len(args) > 3 else kwargs.get("max", 100)
            if isinstance(count, int) and isinstance(longest, int):
                budget.charge(max(count, 0) * max(longest, 0), "lipsum")
        else:
            args = _check_method(__obj, args, kwargs, budget)
        budget.depth += 1
        try:
            if budget.depth > budget.limits.max_depth:
                raise _limits.exceeded(
                    "max_depth", budget.limits.max_depth, "calls nested (macro recursion?) past"
                )
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        return _limits.check_result(result, "a call's result")


def _check_method(
    function: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], budget: Any
) -> tuple[Any, ...]:
    """Checks for the str, bytes and int methods that can build large values (``str.format`` is
    the sandbox's wrapper of the bound method); returns the arguments to call with."""
    bound = getattr(function, "__wrapped__", function)
    owner = getattr(bound, "__self__", None)
    name = getattr(bound, "__name__", "")
    if isinstance(owner, str) and name == "format":
        _limits.check_str_format(owner, args, kwargs)
    elif isinstance(owner, str) and name == "format_map" and args and isinstance(args[0], Mapping):
        _limits.check_str_format(owner, (), args[0])
    elif isinstance(owner, (str, bytes)):
        return _limits.check_method(name, owner, args, budget)
    elif isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int):
            budget.length(length, "int.to_bytes's length")
    return args


def _limited_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a Jinja filter) checked and charged before it runs, its result after.

    The wrapper takes the context, which also keeps Jinja from running it while it folds
    constants at compile time (where a huge ``center`` would otherwise allocate at load).
    Filters that only shorten or recase a string skip the checks when given one.
    """
    passes = getattr(getattr(function, "jinja_pass_arg", None), "name", None)
    what = f"the {name!r} filter"
    light = name in _LIGHT_ON_TEXT

    @jinja2.pass_context
    def limited(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        if light and type(value) in _SCALARS:
            return function(value, *args, **kwargs)
        value = _limits.check_filter(name, value, args, kwargs)
        if passes == "context":
            result = function(context, value, *args, **kwargs)
        elif passes == "eval_context":
            result = function(context.eval_ctx, value, *args, **kwargs)
        elif passes == "environment":
            result = function(context.environment, value, *args, **kwargs)
        else:
            result = function(value, *args, **kwargs)
        return _limits.check_result(result, what)

    return limited


# Filters that take no context and, given a string or a number, return a string of about its
# length at most or a number (in time linear in it): nothing to check for them.
_SCALARS = (str, int, float, bool)
_LIGHT_ON_TEXT = frozenset(
    [
        "abs",
        "capitalize",
        "count",
        "default",
        "d",
        "float",
        "int",
        "round",
        "guess_language",
        "length",
        "lower",
        "safe",
        "string",
        "striptags",
        "title",
        "trim",
        "upper",
        "wordcount",
    ]
)


_ENV = _Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    finalize=_limits.check_text,
)
_ENV.filters["guess_language"] = guess_language
_ENV.filters["tojson"] = _to_json
_ENV.filters.update({name: _limited_filter(name, f) for name, f in _ENV.filters.items()})
_LIPSUM = _ENV.globals["lipsum"]


def sandboxed_environment(**options: Any) -> jinja2.Environment:
    """A copy of the environment with other Jinja2 ``options`` (``trim_blocks``...), for
    templates written for other tools (a model's chat template): the same sandbox and limits,
    loop controls (``break``/``continue``), undefined names falsy as in plain Jinja2, and its
    own globals, so adding one does not reach promptkit's templates."""
    environment = _ENV.overlay(
        undefined=jinja2.Undefined, extensions=["jinja2.ext.loopcontrols"], **options
    )
    environment.globals = dict(environment.globals)
    return environment


@lru_cache(maxsize=64)
def _folder_environment(folder: Path, source: str) -> _Environment:
    """The environment whose loader reads templates from ``folder`` (same limits)."""
    environment = _ENV.overlay(loader=FolderLoader(folder, source))
    assert isinstance(environment, _Environment)
    return environment


def _referenced_templates(
    tree: nodes.Template, environment: _Environment, name: str, line_of: Any
) -> frozenset[str]:
    """The undeclared variables of every template ``tree`` extends, includes or imports
    (loaded now, see :func:`~promptkit._template_folder.loaded_templates`). Raises
    TemplateError for one that cannot load, is unsafe or has role lines."""
    variables: set[str] = set()
    for target, text, loaded, line in loaded_templates(tree, environment, name, line_of):
        if _ROLE_LINE.search(text):
            raise TemplateError(
                f"template {target!r} has role lines (system:, user:...); a template that is "
                "extended, included or imported must be plain text, since roles are read from "
                "this template's own source",
                source=name,
                line=line,
            )
        _reject_private_access(loaded, target, lambda lineno: lineno)
        variables.update(meta.find_undeclared_variables(loaded))
    return frozenset(variables)


@dataclass(frozen=True)
class Segment:
    """A slice of template source: its chat role (None before any role line) and first line."""

    role: str | None
    source: str
    line: int  # 1-based line of the segment's first source line in the file


def split_roles(body: str, first_line: int = 1) -> list[Segment]:
    """Split template source at role lines (``system:``, ``user:``, ``assistant:``).

    Text before the first role line has role None. ``function``/``tool`` roles are rejected:
    promptkit renders prompts, not tool calls.
    """
    segments: list[Segment] = []
    position, role, line = 0, None, first_line
    for match in _ROLE_LINE.finditer(body):
        segments.append(Segment(role, body[position : match.start()], line))
        line = first_line + body.count("\n", 0, match.end()) + 1
        role = match.group(1).lower()
        if role in ("function", "tool"):
            raise TemplateError(
                f"role {role!r} is not supported in templates; use system, user or assistant",
                line=line - 1,
            )
        position = match.end() + 1
    segments.append(Segment(role, body[position:], line))
    return [s for s in segments if s.role is not None or s.source.strip()]


class CompiledTemplate:
    """One compiled template and the variables it needs; renders under ``limits``."""

    def __init__(
        self,
        source: str,
        *,
        name: str = "<template>",
        first_line: int = 1,
        limits: TemplateLimits = LIMITS,
        folder: Path | None = None,
    ):
        self.source = source
        self.name = name
        self.first_line = first_line
        self.limits = limits
        environment = _ENV if folder is None else _folder_environment(folder, name)
        try:
            tree = environment.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                exc.message or "syntax error", source=name, line=self._line(exc)
            ) from None
        _reject_private_access(tree, name, self._line_of)
        self.variables: frozenset[str] = frozenset(meta.find_undeclared_variables(tree))
        # the names printed as they are (``{{ name }}``), not through an attribute or filter
        self.printed: frozenset[str] = frozenset(
            node.name
            for output in tree.find_all(nodes.Output)
            for node in output.nodes
            if isinstance(node, nodes.Name)
        )
        self.variable_lines: dict[str, int] = {}
        for node in tree.find_all(nodes.Name):
            if node.ctx == "load" and node.name in self.variables:
                self.variable_lines.setdefault(node.name, self._line_of(node.lineno))
        if folder is not None:
            inherited = _referenced_templates(tree, environment, name, self._line_of)
            self.variables |= inherited
            loading = next(iter(tree.find_all(LOADING_NODES)), None)
            for variable in inherited:
                lineno = loading.lineno if loading is not None else None
                self.variable_lines.setdefault(variable, self._line_of(lineno))
        else:
            for loader_node in tree.find_all(LOADING_NODES):
                raise TemplateError(
                    "extends, include and import load other templates only from a template "
                    "file's folder, and this template has none (pass Prompt(..., "
                    "template_folder=DIR))",
                    source=name,
                    line=_lineno(loader_node, self._line_of),
                )
        try:
            self._template = environment.from_string(tree)
        except RecursionError:
            raise TemplateError(
                "the template nests too deeply to compile; flatten its expressions", source=name
            ) from None
        # A flat copy of the (fixed) globals: Jinja copies them into every render's context, and
        # copying its ChainMap is a Python-level walk that costs more than the render itself.
        self._template.globals = dict(self._template.globals)
        self._pieces = _substitution_pieces(tree, self.variables)
        self.constant = not self.variables

    def _line_of(self, lineno: int | None) -> int:
        return self.first_line + (lineno or 1) - 1

    def _line(self, exc: jinja2.TemplateSyntaxError) -> int:
        return self._line_of(exc.lineno)

    def render(self, context: Mapping[str, Any]) -> str:
        """Render with ``context`` under the template's limits.

        Raises MissingVariableError for a missing variable, TemplateError for a failed or
        unsafe operation or a limit that fired (its message names the limit, e.g. ``max_steps``).
        """
        missing = self.variables.difference(context)
        if missing:
            raise MissingVariableError(missing, available=context.keys(), source=self.name)
        if self._pieces is not None:
            return "".join(p if isinstance(p, str) else str(context[p[0]]) for p in self._pieces)
        _limits.start(self.limits)
        try:
            return self._template.render(context)
        except TemplateError as exc:
            raise self._error(exc.reason, exc.__traceback__) from None
        except RecursionError as exc:
            raise self._error(
                f"template limit 'max_depth' exceeded: Python's recursion limit was reached "
                f"before the limit of {self.limits.max_depth:,} nested calls "
                "(a template may not loop, recurse or build text without bound)",
                exc.__traceback__,
            ) from None
        except MemoryError as exc:
            raise self._error(
                "rendering ran out of memory; the template builds too much text",
                exc.__traceback__,
            ) from None
        except SecurityError as exc:
            raise self._error(
                f"unsafe template operation refused: {exc}", exc.__traceback__
            ) from None
        except jinja2.UndefinedError as exc:
            raise self._error(f"{exc.message}", exc.__traceback__) from None
        except jinja2.TemplateError as exc:
            raise self._error(str(exc), exc.__traceback__) from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise self._error(
                f"rendering failed: {type(exc).__name__}: {exc}", exc.__traceback__
            ) from None

    def _error(self, reason: str, traceback: TracebackType | None) -> TemplateError:
        """A TemplateError at the template line the traceback was rendering, when known."""
        line = None
        while traceback is not None:
            if traceback.tb_frame.f_code.co_filename == "<template>":
                line = self._line_of(traceback.tb_lineno)
            traceback = traceback.tb_next
        return TemplateError(reason, source=self.name, line=line)


def _substitution_pieces(
    tree: nodes.Template, variables: frozenset[str]
) -> list[str | tuple[str]] | None:
    """For a template that only substitutes plain names (``Text: {{ text }}``), its pieces:
    literal strings and ``(name,)`` tuples. Rendering those is a join, the same text Jinja2
    would produce, several times faster. None for anything else (filters, tags, expressions).
    """
    pieces: list[str | tuple[str]] = []
    for statement in tree.body:
        if not isinstance(statement, nodes.Output):
            return None
        for node in statement.nodes:
            if isinstance(node, nodes.TemplateData):
                pieces.append(node.data)
            elif isinstance(node, nodes.Name) and node.ctx == "load" and node.name in variables:
                pieces.append((node.name,))
            else:
                return None
    return pieces


def _reject_private_access(tree: nodes.Template, name: str, line_of: Any) -> None:
    """Refuse ``x.__class__``, ``x['__globals__']`` and the like before anything runs, and
    ``self`` (Jinja's template object, through which blocks can call themselves)."""
    for variable in tree.find_all(nodes.Name):
        if variable.name == "self":
            raise TemplateError(
                "'self' is Jinja's template object, which templates may not use; "
                "name the input something else",
                source=name,
                line=_lineno(variable, line_of),
            )
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            attr = node.arg.value if isinstance(node.arg.value, str) else None
        if attr is not None and attr.startswith("_"):
            raise TemplateError(
                f"access to private attribute {attr!r} is not allowed in templates",
                source=name,
                line=_lineno(node, line_of),
            )


def _lineno(node: nodes.Node, line_of: Any) -> int:
    return int(line_of(node.lineno))


def compile_template(
    source: str,
    *,
    name: str = "<template>",
    first_line: int = 1,
    limits: TemplateLimits = LIMITS,
    folder: Path | None = None,
) -> CompiledTemplate:
    """Compile template source (see :class:`CompiledTemplate`; ``folder``: where ``{% extends
    %}`` and its kin load templates from, none when None); raises TemplateError."""
    return CompiledTemplate(source, name=name, first_line=first_line, limits=limits, folder=folder)
