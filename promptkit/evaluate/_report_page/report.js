"use strict";
// The report page's behaviour: filters and search over the item table, and the detail view of
// one item, built from the JSON block with textContent only (model text is never parsed as HTML).
// An accuracy report's items are dataset lines under each variant; a pass@k report's are
// problems, each with its samples.
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const rows = Array.from(document.querySelectorAll("#item-table tbody tr.item"));
  const failuresOnly = document.getElementById("failures-only");
  const differOnly = document.getElementById("differ-only");
  const search = document.getElementById("search");
  const shown = document.getElementById("shown");
  const noneShown = document.getElementById("none-shown");
  const detail = document.getElementById("detail");
  const detailTitle = document.getElementById("detail-title");
  const detailBody = document.getElementById("detail-body");
  const closeButton = document.getElementById("close-detail");
  let opener = null; // the button that opened the detail view, focused again when it closes

  function applyFilters() {
    const terms = search.value.toLowerCase().split(/\s+/).filter((term) => term !== "");
    let count = 0;
    for (const row of rows) {
      const text = searchable.get(row);
      const visible =
        (!failuresOnly.checked || row.classList.contains("failed")) &&
        (!differOnly.checked || row.classList.contains("differs")) &&
        terms.every((term) => text.includes(term));
      row.hidden = !visible;
      if (visible) count += 1;
    }
    shown.textContent = count + " of " + rows.length + " items";
    noneShown.hidden = count > 0;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function asText(value) {
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function block(parent, title, content) {
    parent.append(el("h3", title));
    parent.append(content instanceof Node ? content : el("pre", content));
  }

  function table(className, headings, rowsOfCells) {
    const node = el("table", null, className);
    const head = node.createTHead().insertRow();
    for (const heading of headings) head.append(el("th", heading));
    const body = node.createTBody();
    for (const cells of rowsOfCells) {
      const row = body.insertRow();
      for (const [text, cellClass] of cells) row.append(el("td", text, cellClass));
    }
    return node;
  }

  function promptView(prompt) {
    if (prompt === null || prompt === undefined) return el("p", "(not recorded: nothing was sent)", "note");
    if (typeof prompt === "string") return el("pre", prompt);
    const box = el("div", null, "messages");
    for (const message of prompt) {
      box.append(el("div", message.role, "role"), el("pre", asText(message.content)));
    }
    return box;
  }

  function resultView(result) {
    const box = el("div");
    if (result === null) {
      box.append(el("p", "This variant has no result for this item.", "note"));
      return box;
    }
    const verdict = result.correct ? "correct" : result.valid ? "wrong" : "no valid answer";
    box.append(el("p", verdict, "verdict " + (result.correct ? "right" : "wrong")));
    box.append(el("p",
      result.requests + " request(s) · " + result.prompt_tokens + " prompt + " +
      result.completion_tokens + " completion tokens · " + result.latency_s.toFixed(3) + " s", "note"));
    if (result.error !== null) block(box, "Error", result.error);
    block(box, "Prediction", result.valid ? asText(result.prediction) : "(none validated)");
    block(box, "Raw text", result.text === null ? "(none: scored, nothing generated)" : result.text);
    if (result.scores !== null) {
      block(box, "Label scores (log-probability)", table("scores", ["label", "score"],
        Object.entries(result.scores).map(([label, score]) =>
          [[label], [typeof score === "number" ? score.toFixed(4) : score]])));
    }
    if (result.assertions.length > 0) {
      block(box, "Assertions", table("assertions",
        ["type", "value", "result", "score", "weight", "reason"],
        result.assertions.map((a) => [
          [a.type], [asText(a.value)], [a.passed ? "passed" : "failed", a.passed ? "passed" : "failed"],
          [String(a.score)], [String(a.weight)], [a.reason],
        ])));
    }
    if (result.attempts.length > 0) {
      const list = el("ol", null, "attempts");
      for (const attempt of result.attempts) {
        const item = el("li");
        item.append(el("div", attempt.error === null ? "accepted" : "refused: " + attempt.error,
          attempt.error === null ? "verdict right" : "verdict wrong"));
        item.append(el("div", attempt.prompt_tokens + " prompt + " + attempt.completion_tokens +
          " completion tokens · " + attempt.latency_s.toFixed(3) + " s", "note"));
        item.append(el("pre", attempt.text));
        list.append(item);
      }
      block(box, "Attempts", list);
    }
    block(box, "Rendered prompt", promptView(result.prompt));
    return box;
  }

  function sampleView(sample) {
    const box = el("div");
    box.append(el("p", sample.passed ? "passed" : sample.status, "verdict " + (sample.passed ? "right" : "wrong")));
    box.append(el("p", "ran " + sample.exec_s.toFixed(3) + " s · " + sample.prompt_tokens + " prompt + " +
      sample.completion_tokens + " completion tokens · generated in " + sample.latency_s.toFixed(3) + " s", "note"));
    if (sample.detail !== "") block(box, "Why", sample.detail);
    block(box, "Completion (the code run after the prompt)", sample.completion);
    block(box, "Raw text", sample.text === null ? "(none: read from a samples file)" : sample.text);
    block(box, "Output (last 2,000 characters)", sample.output_tail === "" ? "(nothing printed)" : sample.output_tail);
    return box;
  }

  // Per kind of report: what a row's search looks in, the detail's title and heading, its tabs
  // (the variants, or the problem's samples) and the view of one tab.
  const kinds = {
    accuracy: {
      searchText: (results) => results.filter((r) => r !== null).flatMap((r) => [
        JSON.stringify(r.inputs), asText(r.expected), asText(r.prediction), r.text || "",
        r.error || "", ...r.attempts.map((a) => a.text)]),
      title: (line) => "Line " + line,
      heading(box, results) {
        const known = results.find((result) => result !== null);
        block(box, "Inputs", asText(known.inputs));
        const byAssertions = known.expected === null && known.assertions.length > 0;
        block(box, "Expected", byAssertions ? "(none: graded by its assertions)" : asText(known.expected));
      },
      tabs: () => data.variants,
      view: (results, index) => resultView(results[index]),
    },
    "pass@k": {
      searchText: (problem) => [problem.task_id, ...problem.samples.flatMap((s) => [
        s.status, s.completion, s.text || "", s.detail, s.output_tail])],
      title: (line, problem) => problem.task_id,
      heading(box, problem) {
        const passed = problem.samples.filter((s) => s.passed).length;
        box.append(el("p", passed + " of " + problem.samples.length + " samples passed", "note"));
      },
      tabs: (problem) => problem.samples.map((s, index) => String(index + 1)),
      view: (problem, index) => sampleView(problem.samples[index]),
    },
  };
  const kind = kinds[data.kind];

  function openDetail(line, variant) {
    const item = data.items[String(line)];
    detailTitle.textContent = kind.title(line, item);
    detailBody.replaceChildren();
    kind.heading(detailBody, item);
    const tabs = el("div", null, "tabs");
    tabs.setAttribute("role", "tablist");
    kind.tabs(item).forEach((label, index) => {
      const tab = el("button", label);
      tab.type = "button";
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-selected", String(index === variant));
      tab.addEventListener("click", () => openDetail(line, index));
      tabs.append(tab);
    });
    detailBody.append(tabs, kind.view(item, variant));
    detail.dataset.line = String(line);
    detail.dataset.variant = String(variant);
    detail.hidden = false;
    document.body.classList.add("detail-open");
    closeButton.focus();
    for (const row of rows) row.classList.toggle("selected", row.dataset.line === String(line));
  }

  function closeDetail() {
    if (detail.hidden) return;
    detail.hidden = true;
    document.body.classList.remove("detail-open");
    for (const row of rows) row.classList.remove("selected");
    if (opener !== null) opener.focus();
  }

  document.getElementById("item-table").addEventListener("click", (event) => {
    const button = event.target.closest("button.open");
    if (button === null) return;
    opener = button;
    openDetail(Number(button.closest("tr").dataset.line), Number(button.dataset.variant));
  });
  closeButton.addEventListener("click", closeDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDetail();
  });
  const searchable = new Map(rows.map((row) =>
    [row, kind.searchText(data.items[row.dataset.line]).join("\n").toLowerCase()]));
  failuresOnly.addEventListener("change", applyFilters);
  differOnly.addEventListener("change", applyFilters);
  search.addEventListener("input", applyFilters);
  applyFilters();
})();
