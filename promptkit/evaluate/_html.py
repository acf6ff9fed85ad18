"""``report.html``: an evaluation report as one self-contained page, for reading in a browser
opened from disk (no network, no scripts or styles from elsewhere).

An accuracy report's page holds the summary (one row per variant: a template at a shot count),
the plot (the PNG inlined as base64), McNemar's comparisons and a table of items against
variants with filters (failures only, items where the variants differ), a search box and a
detail view of one item under each variant (rendered prompt, raw text, attempts, assertion
results). A pass@k report's page is the same with problems for items and samples for variants
(each sample's completion, raw text, how its program ended and the tail of its output).

Everything from the report (model text above all) reaches the page escaped: the visible parts
through Jinja2's autoescaping, the whole report as JSON in a ``<script type="application/json">``
block whose ``<``, ``>`` and ``&`` are written as JSON escapes, so no text can close the block.
The page's script reads that block and builds the detail view with ``textContent`` only.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from ._schema import ItemResult, PassAtKReport, Report

_PAGE = Path(__file__).with_name("_report_page")
_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


@dataclass(frozen=True)
class _Variant:
    """One column of the item table: a template at one shot count, on the main backend or on
    a ``--vs-backend`` one (``backend`` set)."""

    template: str
    shots: int
    backend: str | None = None

    @property
    def label(self) -> str:
        label = f"{self.template} · {self.shots} shot{'' if self.shots == 1 else 's'}"
        return label if self.backend is None else f"{self.backend} · {label}"


@dataclass(frozen=True)
class _Row:
    """One dataset item across every variant (None where a variant has no such item)."""

    line: int
    inputs: str
    expected: str
    cells: list[ItemResult | None]

    @property
    def failed(self) -> bool:
        return any(cell is None or not cell.correct for cell in self.cells)

    @property
    def differs(self) -> bool:
        outcomes = {
            None if c is None else (c.correct, _compact(c.prediction), c.valid) for c in self.cells
        }
        return len(outcomes) > 1


def render_html(report: Report, plot_png: bytes | None = None) -> str:
    """The page for ``report`` (accuracy or pass@k); ``plot_png``: the plot to inline, None
    when there is none (the page then says how to get it)."""
    if report.pass_at_k is not None:
        return _pass_at_k_page(report, report.pass_at_k, plot_png)
    return _accuracy_page(report, plot_png)


def write_html(path: Path, report: Report, plot_png: bytes | None = None) -> Path:
    """Write :func:`render_html`'s page to ``path`` and return it. Raises OSError when the file
    cannot be written."""
    path.write_text(render_html(report, plot_png), encoding="utf-8")
    return path


def _accuracy_page(report: Report, plot_png: bytes | None) -> str:
    variants = [
        _Variant(name, shot.shots) for name, shots in report.templates.items() for shot in shots
    ]
    summaries = [shot for shots in report.templates.values() for shot in shots]
    first_template = next(iter(report.templates), "")
    for run in report.vs_backends:  # the first template on each other backend
        variants += [_Variant(first_template, shot.shots, run.backend) for shot in run.reports]
        summaries += run.reports
    by_variant = [{item.line: item for item in shot.results} for shot in summaries]
    rows = []
    for line in sorted({line for items in by_variant for line in items}):
        cells = [items.get(line) for items in by_variant]
        known = next(cell for cell in cells if cell is not None)
        rows.append(_Row(line, _compact(known.inputs), _expected(known), cells))
    first, second = [*report.templates, "", ""][:2]  # the templates McNemar compares
    data = {
        "kind": "accuracy",
        "variants": [v.label for v in variants],
        "items": {
            str(row.line): [None if c is None else c.model_dump(mode="json") for c in row.cells]
            for row in rows
        },
    }
    return _render(
        "report.html.j2",
        data,
        plot_png,
        report=report,
        variants=variants,
        summaries=list(zip(variants, summaries, strict=True)),
        pass_rate_names=sorted({n for shot in summaries for n in shot.assertion_pass_rates}),
        rows=rows,
        first=first,
        second=second,
    )


def _pass_at_k_page(report: Report, run: PassAtKReport, plot_png: bytes | None) -> str:
    data = {
        "kind": "pass@k",
        "items": {
            str(problem.line): {
                "task_id": problem.task_id,
                "samples": [sample.model_dump(mode="json") for sample in problem.results],
            }
            for problem in run.problems
        },
    }
    return _render("pass_at_k.html.j2", data, plot_png, report=report, run=run)


def _render(template: str, data: Any, plot_png: bytes | None, **context: Any) -> str:
    environment = Environment(
        loader=FileSystemLoader(_PAGE), autoescape=True, undefined=StrictUndefined
    )
    environment.globals["compact"] = _compact
    return environment.get_template(template).render(
        context,
        plot=None if plot_png is None else base64.b64encode(plot_png).decode("ascii"),
        data=_json_block(data),
        style=Markup((_PAGE / "report.css").read_text(encoding="utf-8")),
        script=Markup((_PAGE / "report.js").read_text(encoding="utf-8")),
    )


def _expected(item: ItemResult) -> str:
    """An item's expected output as the table shows it: a dash for an item graded by its
    assertions alone (its ``expected`` is null in report.json)."""
    if item.expected is None and item.assertions:
        return "—"
    return _compact(item.expected)


def _compact(value: Any) -> str:
    """A value as the table shows it: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _json_block(value: Any) -> Markup:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` left to end
    the block or open a comment (each written as its JSON escape, which parses back the same);
    infinite and NaN floats (a label's log-probability can be -inf), which JSON cannot hold,
    as the strings "-inf", "inf" and "nan"."""
    text = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False)
    return Markup(text.translate(_JSON_ESCAPES))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
