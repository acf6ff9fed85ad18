"""Writing an evaluation's reports: ``report.json`` (the :class:`Report` schema), ``report.md``
(tables), ``accuracy.png`` (accuracy against shots) and ``report.html`` (the page of
:mod:`._html`); and the one-line summaries the ``eval`` command prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ._html import write_html
from ._schema import BackendComparison, BackendRun, Comparison, Report, ShotReport


def markdown(name: str, reports: Sequence[ShotReport]) -> str:
    """A Markdown table of one template's reports, and one of its assertions' pass rates when
    the items have assertions."""
    lines = [
        f"### {name}",
        "",
        "| shots | accuracy | field accuracy | valid | mean attempts | prompt tokens | "
        "completion tokens | mean latency (s) | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in reports:
        fields = "-" if r.field_accuracy is None else f"{r.field_accuracy:.1%}"
        lines.append(
            f"| {r.shots} | {r.accuracy:.1%} | {fields} | {r.validity:.1%} | "
            f"{r.mean_attempts:.2f} | {r.prompt_tokens} | {r.completion_tokens} | "
            f"{r.mean_latency_s:.3f} | {len(r.errors)} |"
        )
    return "\n".join(lines + _pass_rates(reports)) + "\n"


def _pass_rates(reports: Sequence[ShotReport]) -> list[str]:
    """A table of each assertion's pass rate (by metric name, else type) per shot count."""
    keys = sorted({key for r in reports for key in r.assertion_pass_rates})
    if not keys:
        return []
    header = " | ".join(k.replace("|", "\\|") for k in keys)
    lines = ["", f"| shots | {header} |", "| ---: |" + " ---: |" * len(keys)]
    for r in reports:
        rates = r.assertion_pass_rates
        cells = [f"{rates[k]:.1%}" if k in rates else "-" for k in keys]
        lines.append(f"| {r.shots} | " + " | ".join(cells) + " |")
    return lines


def comparison_line(comparison: Comparison) -> str:
    """One line saying which template alone got how many items right, and McNemar's p."""
    return (
        f"shots {comparison.shots}: only first right {comparison.only_first}, only second "
        f"right {comparison.only_second}, McNemar p = {comparison.p_value:.3g}"
    )


def model_calls(runs: dict[str, list[ShotReport]], generated: int | None, *, scoring: bool) -> str:
    """How many of an evaluation's requests reached the model. ``generated``: the generations
    the response cache passed on (None: no cache, so every request did); scoring requests are
    never cached."""
    requests = sum(report.requests for reports in runs.values() for report in reports)
    if generated is None:
        return f"{requests} model call(s) (no cache)"
    reached = generated + (requests if scoring else 0)
    return (
        f"{reached} model call(s) for {requests} request(s) ({requests - reached} from the cache)"
    )


def write_report(
    out: str | Path,
    runs: dict[str, list[ShotReport]],
    *,
    backend: str,
    data: str,
    comparisons: Sequence[Comparison] = (),
    method: Literal["generate", "score"] = "generate",
    fingerprint: dict[str, Any] | None = None,
    vs_backends: Sequence[BackendRun] = (),
    backend_comparisons: Sequence[BackendComparison] = (),
) -> list[Path]:
    """Write ``report.json`` (a :class:`Report`, with the run's ``fingerprint`` when given),
    ``report.md``, ``accuracy.png`` and ``report.html`` (every item, with filters and a detail
    view) into ``out``; returns the paths written (the plot is left out, with a note in the
    Markdown and the page, when matplotlib is not installed). ``vs_backends``: the first
    template on other backends, drawn on the same chart (see
    :mod:`~promptkit.evaluate._vs_backends`). Raises OSError when the folder cannot be
    written."""
    from ._vs_backends import backend_lines, backends_markdown

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    report = Report(
        backend=backend,
        data=data,
        method=method,
        templates=runs,
        comparisons=list(comparisons),
        fingerprint=fingerprint,
        vs_backends=list(vs_backends),
        backend_comparisons=list(backend_comparisons),
    )
    written = [folder / "report.json"]
    written[0].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    parts = [f"# Evaluation on {data} with {backend}\n"]
    parts += [markdown(name, reports) for name, reports in runs.items()]
    if comparisons:
        first, second = list(runs)[:2]
        parts.append(
            f"### {first} vs {second} (McNemar's exact test)\n\n"
            f"| shots | only {first} right | only {second} right | p-value |\n"
            "| ---: | ---: | ---: | ---: |\n"
            + "".join(
                f"| {c.shots} | {c.only_first} | {c.only_second} | {c.p_value:.3g} |\n"
                for c in comparisons
            )
        )
    parts += backends_markdown(vs_backends, backend_comparisons, markdown)
    plot = folder / "accuracy.png"
    named = {f"{backend} ({name})": r for name, r in runs.items()} if vs_backends else runs
    drawn = _plot(plot, named, *backend_lines(vs_backends))
    if drawn:
        parts.append("![accuracy against shots](accuracy.png)\n")
    else:
        parts.append("(No plot: install matplotlib, e.g. pip install 'promptkit[eval]'.)\n")
    parts.append("Every item, with filters and details: [report.html](report.html)\n")
    written.append(folder / "report.md")
    written[-1].write_text("\n".join(parts), encoding="utf-8")
    if drawn:
        written.append(plot)
    written.append(write_html(folder / "report.html", report, plot.read_bytes() if drawn else None))
    return written


def _plot(
    path: Path,
    runs: dict[str, list[ShotReport]],
    extra: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
    levels: Mapping[str, float] | None = None,
) -> bool:
    lines: dict[str, tuple[Sequence[int], Sequence[float]]] = {
        name: ([r.shots for r in reports], [r.accuracy for r in reports])
        for name, reports in runs.items()
    }
    lines |= extra or {}
    ticks = sorted({x for xs, _ in lines.values() for x in xs})
    return line_plot(
        path,
        lines,
        x_label="demonstrations (shots)",
        y_label="accuracy",
        x_ticks=ticks,
        levels=levels or {},
    )


def line_plot(
    path: Path,
    lines: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    x_ticks: Sequence[int],
    log_x: bool = False,
    levels: Mapping[str, float] | None = None,
) -> bool:
    """Draw ``lines`` (label -> x and y values, y between 0 and 1) and ``levels`` (label -> a y
    value drawn as a dashed line across the chart) into the PNG at ``path``; False when
    matplotlib is not installed (the report then says how to get the plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, (xs, ys) in lines.items():
        axes.plot(xs, ys, marker="o", label=label)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, y) in enumerate((levels or {}).items(), start=len(lines)):
        axes.axhline(y, linestyle="--", color=colours[index % len(colours)], label=label)
    if log_x:
        axes.set_xscale("log")
    axes.set_xticks(x_ticks, [str(t) for t in x_ticks])
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_ylim(0, 1.02)  # a line at 1.0 stays visible above the frame
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True
