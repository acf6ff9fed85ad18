"""Templates that load other templates (``{% extends %}``, ``{% include %}``, ``{% import %}``)
load them from one folder, a template file's own, and nowhere else, all of them when the file
loads (so ``promptkit check`` sees what a render would fail on)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import Any

import jinja2
from jinja2 import nodes

from ._references import read_confined
from .errors import TemplateError

__all__ = ["LOADING_NODES", "FolderLoader", "loaded_templates", "split_front_matter"]

LOADING_NODES = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)
_MAX_TEMPLATE_REFERENCES = 32  # templates one template may reach through extends/include/import


def split_front_matter(text: str) -> tuple[str | None, str, int]:
    """A template file's YAML front matter (None without one), its body and the body's first
    line. Raises TemplateError when the front matter is never closed."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None, text, 1
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise TemplateError(
            "front matter opened with '---' on line 1 is never closed by a '---' line", line=1
        )
    return "".join(lines[1:end]), "".join(lines[end + 1 :]), end + 2


class FolderLoader(jinja2.BaseLoader):
    """Loads the templates that ``{% extends %}``, ``{% include %}`` and ``{% import %}`` name
    from one folder (a template file's own), and nowhere else: relative names without ``..``,
    regular files within the size limit of ``${file:...}``; a ``.prompty`` file gives its body.
    Raises TemplateError for any other name."""

    def __init__(self, folder: Path, source: str) -> None:
        self.folder = folder
        self.source = source

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        shown = f"template {template!r}"
        parts = PurePath(template).parts
        if PurePath(template).is_absolute() or ".." in parts or not parts:
            raise TemplateError(
                f"{shown}: templates are loaded only from this template's own folder "
                f"({self.folder}); name one there, without '..' or an absolute path",
                source=self.source,
            )
        path, data = read_confined(template, self.folder, self.folder, shown, self.source, None)
        try:
            text = data.decode("utf-8-sig").replace("\r\n", "\n")
        except UnicodeDecodeError:
            raise TemplateError(f"{shown} is not UTF-8 text", source=self.source) from None
        body = split_front_matter(text)[1] if path.suffix == ".prompty" else text
        loaded = _modified(path)
        return body, str(path), lambda: _modified(path) == loaded


def _modified(path: Path) -> float | None:
    """When ``path`` last changed (None when it is gone): a loaded template is reloaded when
    this moves."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def loaded_templates(
    tree: nodes.Template, environment: jinja2.Environment, name: str, line_of: Any
) -> Iterator[tuple[str, str, nodes.Template, int]]:
    """Every template ``tree`` extends, includes or imports, recursively, each once: its name,
    source, parsed tree and the line (of ``name``) that first reaches it. Raises TemplateError
    for a name that is not a quoted string, a template that cannot load or parse, or more than
    _MAX_TEMPLATE_REFERENCES of them."""
    seen: set[str] = set()
    pending = [tree]
    while pending:
        current = pending.pop()
        for node in current.find_all(LOADING_NODES):
            assert isinstance(node, LOADING_NODES)
            line = int(line_of(node.lineno))
            target = node.template
            if not isinstance(target, nodes.Const) or not isinstance(target.value, str):
                raise TemplateError(
                    "the template an extends, include or import names must be a quoted string "
                    "(it is loaded and checked when the file loads)",
                    source=name,
                    line=line,
                )
            if target.value in seen:
                continue
            seen.add(target.value)
            if len(seen) > _MAX_TEMPLATE_REFERENCES:
                raise TemplateError(
                    f"more than {_MAX_TEMPLATE_REFERENCES} templates reached through extends, "
                    "include and import",
                    source=name,
                )
            assert environment.loader is not None
            text = environment.loader.get_source(environment, target.value)[0]
            try:
                loaded = environment.parse(text, target.value)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"template {target.value!r} line {exc.lineno}: {exc.message}", source=name
                ) from None
            yield target.value, text, loaded, line
            pending.append(loaded)
