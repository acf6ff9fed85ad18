"""report.html: one self-contained page (summary, plot, items against variants, filters, search,
detail view), model text escaped everywhere, checked as HTML here and in a real headless browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

import pytest

import promptkit as pk
from promptkit.backends import ScriptedBackend
from promptkit.evaluate import (
    AssertionResult,
    AttemptRecord,
    Comparison,
    EvalItem,
    ItemResult,
    PassAtKReport,
    ProblemResult,
    Report,
    SampleRecord,
    ShotReport,
    evaluate,
    write_pass_at_k_report,
    write_report,
)
from promptkit.evaluate._html import render_html

# Model text that would run (or fetch a file, logging a console error) if it reached the page
# unescaped: in a raw answer, an input, a prediction and an assertion's reason.
SCRIPT = "</script><script>window.pwned = true;</script><!--"
IMAGE = '<img src="nowhere.png" onerror="window.pwned = true">'
SCORES = {"positive": -0.25, "negative": float("-inf")}  # JSON has no -inf
PNG = b"\x89PNG\r\n\x1a\n" + b"not really a picture"


def _item(
    line: int, prediction: str, *, expected: str = "positive", text: str | None = None, **more: Any
) -> ItemResult:
    text = prediction if text is None else text
    attempt = AttemptRecord(
        text=text, error=None, prompt_tokens=12, completion_tokens=2, latency_s=0.05
    )
    fields: dict[str, Any] = {
        "line": line,
        "inputs": {"text": f"review {line}"},
        "expected": expected,
        "prediction": prediction,
        "text": text,
        "valid": True,
        "correct": prediction == expected,
        "attempts": [attempt],
        "requests": 1,
        "prompt_tokens": 12,
        "completion_tokens": 2,
        "latency_s": 0.05,
        "prompt": f"Review: review {line}\nSentiment:",
    }
    return ItemResult(**(fields | more))


def _shots(shots: int, results: list[ItemResult], **more: Any) -> ShotReport:
    n = len(results)
    return ShotReport(
        shots=shots,
        items=n,
        accuracy=sum(r.correct for r in results) / n,
        field_accuracy=None,
        validity=1.0,
        mean_attempts=1.0,
        requests=n,
        prompt_tokens=12 * n,
        completion_tokens=2 * n,
        mean_latency_s=0.05,
        errors=[],
        results=results,
        **more,
    )


def hand_report() -> Report:
    """Two templates, terse at 0 and 2 shots and chatty at 0: line 1 right everywhere, line 2
    wrong only for terse at 0 shots (the variants differ; its raw answer holds a script), line 3
    wrong everywhere with the same answer (a failure, but no difference)."""
    contains = AssertionResult(
        type="icontains", value="positive", passed=False, score=0.0, reason=SCRIPT, weight=1.0
    )
    tricky = _item(
        2,
        "negative",
        text=f"negative {SCRIPT}",
        inputs={"text": IMAGE},
        assertions=[contains],
        prompt=[
            {"role": "system", "content": "Label the review."},
            {"role": "user", "content": IMAGE},
        ],
    )
    third = {"expected": "negative"}
    terse = [
        _shots(
            0,
            [_item(1, "positive"), tricky, _item(3, "positive", **third)],
            assertion_pass_rates={"icontains": 0.5},
        ),
        _shots(
            2,
            [
                _item(1, "positive"),
                _item(2, "positive", scores=SCORES),
                _item(3, "positive", **third),
            ],
        ),
    ]
    chatty = [
        _shots(0, [_item(1, "positive"), _item(2, "positive"), _item(3, "positive", **third)])
    ]
    return Report(
        backend="scripted", data="reviews.jsonl", method="generate",
        templates={"terse": terse, "chatty": chatty},
    )  # fmt: skip


class _Page(HTMLParser):
    """What a test reads off the page: the rows' classes, every src/href, the script blocks."""

    def __init__(self, html: str):
        super().__init__()
        self.rows: list[str] = []
        self.links: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._script: dict[str, str | None] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and "item" in (found.get("class") or "").split():
            self.rows.append(found["class"] or "")
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag == "script":
            self._script = found

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts.append((self._script, data))
            self._script = None


def test_the_page_escapes_model_text_and_keeps_the_report_as_json():
    report = hand_report()
    html = render_html(report, PNG)
    page = _Page(html)
    # only the page's own two script blocks: nothing from the model opened a third
    assert [attrs.get("type") for attrs, _ in page.scripts] == ["application/json", None]
    assert "window.pwned" not in page.scripts[1][1]
    assert SCRIPT not in html and IMAGE not in html and "&lt;img src=" in html  # the inputs
    # the JSON block parses back to every item exactly, model text included
    block = json.loads(page.scripts[0][1], parse_constant=_not_json)
    assert block["variants"] == ["terse · 0 shots", "terse · 2 shots", "chatty · 0 shots"]
    terse_zero = report.templates["terse"][0].results
    assert block["items"]["2"][0] == terse_zero[1].model_dump(mode="json")
    assert block["items"]["2"][0]["text"] == f"negative {SCRIPT}"
    assert block["items"]["2"][1]["scores"] == {"positive": -0.25, "negative": "-inf"}


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON (JSON.parse would fail)")


def test_the_page_needs_no_network_and_inlines_the_plot():
    html = render_html(hand_report(), PNG)
    links = _Page(html).links
    assert links and all(link.startswith("data:") for link in links), links
    assert f"data:image/png;base64,{base64.b64encode(PNG).decode()}" in links
    assert 'id="no-plot"' not in html
    assert 'id="no-plot"' in render_html(hand_report(), None)


def test_rows_are_items_flagged_for_the_filters():
    page = _Page(render_html(hand_report()))
    assert page.rows == ["item", "item failed differs", "item failed"]


def _summary(html: str) -> str:
    return html.split('<section id="summary">', 1)[1].split("</section>", 1)[0]


def test_assertion_pass_rates_and_comparisons_reach_the_summary():
    summary = _summary(render_html(hand_report()))
    assert "<th>icontains passed</th>" in summary
    # per variant, the last figure: the pass rate where that variant's items had assertions
    assert re.findall(r"<td>([^<]*)</td>\s*</tr>", summary) == ["50.0%", "-", "-"]
    assert "McNemar" not in summary  # no comparison in the report, no table
    compared = hand_report().model_copy(
        update={"comparisons": [Comparison(shots=0, only_first=0, only_second=1, p_value=1.0)]}
    )
    summary = _summary(render_html(compared))
    assert "<h3>terse vs chatty (McNemar's exact test)</h3>" in summary
    assert "<th>only terse right</th><th>only chatty right</th>" in summary
    assert "<tr><td>0</td><td>0</td><td>1</td><td>1</td></tr>" in summary


def by_assertions_report() -> Report:
    """Line 1 graded by its expected label, line 2 by its assertion alone (expected null)."""
    passed = AssertionResult(
        type="not-icontains", value="positive", passed=True, score=1.0,
        reason="inverted (not-icontains): missing ['positive']", weight=1.0,
    )  # fmt: skip
    alone = _item(2, "negative", assertions=[passed], correct=True)
    results = [_item(1, "positive"), alone.model_copy(update={"expected": None})]
    return Report(
        backend="scripted", data="reviews.jsonl", method="generate",
        templates={"terse": [_shots(0, results)]},
    )  # fmt: skip


def test_an_item_graded_by_assertions_alone_shows_no_expected_output():
    html = render_html(by_assertions_report())
    expected = re.findall(r'<td class="text"><div class="clip">([^<]*)</div></td>', html)[1::2]
    assert expected == ["positive", "—"]  # not "null", which reads as an expected JSON null


def test_an_evaluation_records_the_prompt_it_sent_and_writes_the_page(tmp_path):
    labels = pk.Prompt(
        query="Review: {{ text }}\nSentiment:",
        output_type=Literal["positive", "negative"],
        examples=[pk.Example({"text": "good"}, "positive")],
        style="completion",
    )
    items = [EvalItem(1, {"text": "fine <b>film</b>"}, "positive")]
    reports = evaluate(labels, items, backend=ScriptedBackend(["positive"] * 2), shots=[0, 1])
    assert reports[0].results[0].prompt == labels.render({"text": "fine <b>film</b>"}, 0)
    assert "good" in str(reports[1].results[0].prompt)  # the demonstration was sent
    written = write_report(tmp_path, {"labels": reports}, backend="scripted", data="d.jsonl")
    assert written[-1] == tmp_path / "report.html"
    assert "[report.html](report.html)" in (tmp_path / "report.md").read_text()
    html = written[-1].read_text(encoding="utf-8")
    assert "fine &lt;b&gt;film&lt;/b&gt;" in html and "<b>film" not in html
    assert _Page(html).rows == ["item"]
    again = Report.model_validate_json((tmp_path / "report.json").read_text())
    assert again.templates["labels"][0].results[0].prompt == reports[0].results[0].prompt


def test_an_item_that_failed_before_sending_has_no_prompt():
    labels = pk.Prompt(query="{{ text }}", output_type=str, style="completion")
    failing = ScriptedBackend([pk.errors.BackendError("the server is down", retryable=False)])
    (report,) = evaluate(labels, [EvalItem(1, {"text": "x"}, "y")], backend=failing)
    assert report.results[0].error and report.results[0].prompt is None


# -- in a real browser: Debian's chromium and chromium-driver, driven through selenium (about 3 s,
# so in the fast tier; it skips, saying why, where either is missing) ---------------------------


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install 'promptkit[dev]')"
    )
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    yield driver
    driver.quit()


@pytest.mark.timeout(60)
def test_the_page_works_in_a_headless_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = tmp_path / "report.html"
    page.write_text(render_html(hand_report(), None), encoding="utf-8")
    browser.get(page.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#item-table tbody tr.item")
    assert len(rows) == 3

    def visible() -> list[str]:
        return [r.get_attribute("data-line") for r in rows if r.is_displayed()]

    browser.find_element(By.ID, "failures-only").click()
    assert visible() == ["2", "3"]
    assert browser.find_element(By.ID, "shown").text == "2 of 3 items"
    browser.find_element(By.ID, "differ-only").click()
    assert visible() == ["2"]
    browser.find_element(By.ID, "failures-only").click()
    browser.find_element(By.ID, "differ-only").click()
    search = browser.find_element(By.ID, "search")
    search.send_keys("PWNED")  # any case: line 2's input and raw text
    assert visible() == ["2"]
    search.send_keys(" nowhere-else")  # every word must be found
    assert visible() == [] and browser.find_element(By.ID, "none-shown").is_displayed()
    search.clear()
    search.send_keys("review 3")  # line 3's input
    assert visible() == ["3"]
    search.clear()
    search.send_keys(" ")  # nothing to look for: every row
    assert visible() == ["1", "2", "3"]

    # the detail of line 2 under terse at 0 shots: the model's text shown as text, not run
    opener = rows[1].find_elements(By.CSS_SELECTOR, "td.cell button")[0]
    opener.click()
    detail = browser.find_element(By.ID, "detail")
    assert detail.is_displayed()
    assert browser.switch_to.active_element == browser.find_element(By.ID, "close-detail")
    assert browser.find_element(By.ID, "detail-title").text == "Line 2"
    texts = [pre.text for pre in detail.find_elements(By.TAG_NAME, "pre")]
    assert f"negative {SCRIPT}" in texts and IMAGE in texts  # raw text; input and prompt
    assert "Label the review." in texts  # the rendered chat prompt
    cells = [td.text for td in detail.find_elements(By.CSS_SELECTOR, "table.assertions td")]
    assert cells[:3] == ["icontains", "positive", "failed"] and cells[-1] == SCRIPT
    tabs = detail.find_elements(By.CSS_SELECTOR, ".tabs button")
    assert [t.get_attribute("aria-selected") for t in tabs] == ["true", "false", "false"]
    tabs[1].click()  # terse at 2 shots: its label scores, -inf shown as such
    cells = [td.text for td in detail.find_elements(By.CSS_SELECTOR, "table.scores td")]
    assert cells == ["positive", "-0.2500", "negative", "-inf"]
    tabs = detail.find_elements(By.CSS_SELECTOR, ".tabs button")
    tabs[2].click()
    assert "correct" in browser.find_element(By.ID, "detail-body").text
    browser.find_element(By.ID, "close-detail").click()
    assert not detail.is_displayed()
    assert browser.switch_to.active_element == opener  # focus back where it was
    rows[2].find_element(By.CSS_SELECTOR, "button.open").click()  # the line's own button
    assert browser.find_element(By.ID, "detail-title").text == "Line 3"
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert not detail.is_displayed()

    assert browser.execute_script("return window.pwned === undefined") is True
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


@pytest.mark.timeout(60)
def test_the_detail_of_an_item_graded_by_assertions_alone_says_so(browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(render_html(by_assertions_report(), None), encoding="utf-8")
    browser.get(page.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#item-table tbody tr.item")
    rows[1].find_element(By.CSS_SELECTOR, "button.open").click()
    detail = browser.find_element(By.ID, "detail")
    texts = [pre.text for pre in detail.find_elements(By.TAG_NAME, "pre")]
    assert texts[1] == "(none: graded by its assertions)"  # after the inputs
    cells = [td.text for td in detail.find_elements(By.CSS_SELECTOR, "table.assertions td")]
    assert cells[:3] == ["not-icontains", "positive", "passed"]
    browser.find_element(By.ID, "close-detail").click()
    rows[0].find_element(By.CSS_SELECTOR, "button.open").click()
    assert [pre.text for pre in detail.find_elements(By.TAG_NAME, "pre")][1] == "positive"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_readme_session_runs_as_shown(tmp_path, monkeypatch):
    """The README's evaluation session (data with assertions, two variants, report.html) run as
    shown on promptkit-mini: the same tables, pass rates included, and what its prose says."""
    from click.testing import CliRunner

    from promptkit.cli import cli

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    session = readme.split("**A session, end to end", 1)[1]
    data = session.split("cat > reviews.jsonl <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    shown = session.split("```\n", 3)[2]  # the output block after the commands
    lines = [json.loads(line) for line in data.splitlines()]
    assert [sorted(line) for line in lines[1:3]] == [["assert", "text"]] * 2  # instead of a label
    assert all({"assert", "expected"} <= set(line) for line in lines[4:])  # besides it
    (tmp_path / "reviews.jsonl").write_text(data + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    args = ["eval", "sentiment", "--data", "reviews.jsonl", "--shots", "0,4", "--out", "report/"]
    assert f"promptkit {' '.join(args)}\n" in session
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    def without_latency(text: str) -> list[list[str]]:  # the one column that varies
        rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")]
        return [row[:8] + row[9:] for row in rows]

    assert without_latency(result.output) == without_latency(shown)
    assert "| shots | icontains | not-icontains | one word |\n" in shown  # the pass rates
    assert shown.splitlines()[-1] in result.output  # the files written and the model calls
    report = Report.model_validate_json((tmp_path / "report" / "report.json").read_text())
    zero, four = report.templates["sentiment"]
    assert zero.assertion_pass_rates == {"icontains": 0.0, "not-icontains": 0.0, "one word": 1.0}
    assert four.assertion_pass_rates == {"icontains": 0.0, "not-icontains": 1.0, "one word": 1.0}
    # The prose after the output: four demonstrations turn line 2 from positive to negative;
    # line 5's label is wrong while its one-word check passes.
    assert [shot.results[1].prediction for shot in (zero, four)] == ["positive", "negative"]
    assert [shot.results[1].correct for shot in (zero, four)] == [False, True]
    assert not four.results[4].correct and four.results[4].assertions[0].passed
    # The screenshot opens the first item where the variants differ, under 4 shots: line 2,
    # whose assertion passed there.
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert _Page(html).rows[:2] == ["item", "item failed differs"]
    assert four.results[1].assertions[0].passed
    assert "](docs/report.png)" in session
    assert (Path(__file__).resolve().parent.parent / "docs" / "report.png").is_file()


# -- a pass@k report: problems for items, samples for variants ---------------------------------


def _sample(status: str, completion: str = "    return 1\n", **more: Any) -> SampleRecord:
    fields: dict[str, Any] = {
        "completion": completion,
        "text": completion,
        "status": status,
        "passed": status == "passed",
        "detail": "" if status == "passed" else f"the program ended: {status}",
        "output_tail": "",
        "exec_s": 0.02,
    }
    return SampleRecord(**(fields | more))


def _problem(line: int, samples: list[SampleRecord]) -> ProblemResult:
    n, c = len(samples), sum(s.passed for s in samples)
    return ProblemResult(
        task_id=f"Mini/{line - 1}", line=line, samples=n, correct=c,
        pass_at_k={"pass@1": c / n}, results=samples,
    )  # fmt: skip


def hand_pass_at_k_report() -> Report:
    """Three problems of two samples: all passed, one of two (its failing sample's code and
    output hold a script), none."""
    hostile = _sample("failed", completion=f"    return '{SCRIPT}'\n", output_tail=IMAGE)
    problems = [
        _problem(1, [_sample("passed"), _sample("passed")]),
        _problem(2, [_sample("passed"), hostile]),
        _problem(3, [_sample("timeout"), _sample("error", text=None)]),
    ]
    run = PassAtKReport(
        template="code_completion", source="generated", k=[1], samples_per_problem=2,
        temperature=0.8, top_p=0.95, stop=["\nclass"], isolation="bubblewrap",
        limits={"timeout_s": 3.0}, pass_at_k={"pass@1": 0.5}, problems=problems, wall_s=1.5,
    )  # fmt: skip
    return Report(
        backend="scripted", data="problems.jsonl", method="generate", templates={},
        metric="pass@k", pass_at_k=run,
    )  # fmt: skip


def test_the_pass_at_k_page_lists_problems_and_escapes_their_code(tmp_path):
    report = hand_pass_at_k_report()
    html = render_html(report, PNG)
    page = _Page(html)
    assert page.rows == ["item", "item failed differs", "item failed"]
    assert [attrs.get("type") for attrs, _ in page.scripts] == ["application/json", None]
    assert SCRIPT not in html and IMAGE not in html
    block = json.loads(page.scripts[0][1], parse_constant=_not_json)
    assert block["kind"] == "pass@k" and block["items"]["2"]["task_id"] == "Mini/1"
    assert block["items"]["2"]["samples"][1]["output_tail"] == IMAGE
    assert "<td>50.0%</td>" in _summary(html)  # pass@1 over the problems
    assert 'title="sample 2: failed"' in html


def test_a_pass_at_k_run_writes_its_page(tmp_path):
    run = hand_pass_at_k_report().pass_at_k
    assert run is not None
    written = write_pass_at_k_report(tmp_path, run, backend="scripted", data="problems.jsonl")
    assert written[-1] == tmp_path / "report.html"
    assert "[report.html](report.html)" in (tmp_path / "report.md").read_text()
    assert _Page(written[-1].read_text(encoding="utf-8")).rows[1] == "item failed differs"


@pytest.mark.timeout(60)
def test_the_pass_at_k_page_works_in_a_headless_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(render_html(hand_pass_at_k_report(), None), encoding="utf-8")
    browser.get(page.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#item-table tbody tr.item")
    assert len(rows) == 3
    browser.find_element(By.ID, "failures-only").click()
    assert [r.is_displayed() for r in rows] == [False, True, True]
    browser.find_element(By.ID, "search").send_keys("timeout")  # a sample's status
    assert [r.is_displayed() for r in rows] == [False, False, True]
    browser.find_element(By.ID, "search").clear()
    browser.find_element(By.ID, "search").send_keys(" ")
    rows[1].find_elements(By.CSS_SELECTOR, "button.sample")[1].click()  # Mini/1's failed sample
    detail = browser.find_element(By.ID, "detail")
    assert browser.find_element(By.ID, "detail-title").text == "Mini/1"
    texts = [pre.text for pre in detail.find_elements(By.TAG_NAME, "pre")]
    assert f"    return '{SCRIPT}'" in texts and IMAGE in texts  # the code and its output, as text
    tabs = detail.find_elements(By.CSS_SELECTOR, ".tabs button")
    assert [t.get_attribute("aria-selected") for t in tabs] == ["false", "true"]
    assert browser.execute_script("return window.pwned === undefined") is True
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
