"""The leaderboard as one static HTML page: no server, no network, inline CSS and JavaScript.

Click a column header to sort by it (again to reverse). Task, average and ratio columns sort by
their number (the mean, for accuracy cells); missing cells sort last in both directions. Plots are
embedded as data URIs so the page is a single file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from lra.leaderboard.table import Row, cost_frame, leaderboard_frame, other_checkpoint_frame

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
td.text { text-align: left; }
td.missing { color: #999; text-align: center; }
td.diverged { background: #fde2e2; }
td.partial { font-style: italic; }
td.rule-broken { background: #fde2e2; font-weight: bold; }
.notes { max-width: 70em; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 1em; max-width: 70em; }
table.secondary td { text-align: left; }
figure { display: inline-block; margin: 1em; vertical-align: top; }
img { max-width: 45em; }
"""

SCRIPT = """
function sortTable(header) {
  const table = header.closest("table");
  const body = table.tBodies[0];
  const index = Array.from(header.parentNode.children).indexOf(header);
  const numeric = header.dataset.type === "number";
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach(th => th.removeAttribute("aria-sort"));
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const key = row => {
    const cell = row.cells[index];
    const value = cell.dataset.sort;
    if (value === undefined || value === "") return null;
    return numeric ? parseFloat(value) : value;
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null && y === null) return 0;
    if (x === null) return 1;       // missing last, whichever direction
    if (y === null) return -1;
    const order = numeric ? x - y : String(x).localeCompare(String(y));
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}
document.querySelectorAll("#leaderboard th").forEach(th => th.addEventListener("click", () => sortTable(th)));
"""


def _sort_values(row: Row, tasks: list[str]) -> dict[str, float | None]:
    values = {task: row.cells[task].mean if task in row.cells else None for task in tasks}
    values.update({"average": row.average, "speed vs softmax": row.speed, "memory vs softmax": row.memory,
                   "peak memory vs softmax": row.peak_memory,
                   "params": row.params[1] if row.params else None, "params vs softmax": row.param_ratio,
                   "runs": row.runs})
    return values


def _cell_class(row: Row, column: str, text: str, is_task: bool) -> str:
    classes = []
    if text == "—":
        classes.append("missing")
    if is_task and column in row.cells and row.cells[column].seeds == 0 and (
            row.cells[column].diverged or row.cells[column].failed):
        classes.append("diverged")
    if column == "average" and "partial" in text:
        classes.append("partial")
    if column == "params vs softmax" and row.param_rule_ok is False:
        classes.append("rule-broken")
    if column in ("protocol", "attention"):
        classes.append("text")
    return " ".join(classes)


def _plain_table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>\n"
                   for row in frame.itertuples(index=False))
    return f'<table id="{table_id}" class="secondary"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n'


def _paragraphs(markdown: str) -> str:
    return "".join(f"<p>{html.escape(line.lstrip('- ').replace('`', ''))}</p>"
                   for line in markdown.splitlines() if line)


def leaderboard_html(rows: list[Row], notes_markdown: str, plots: list[Path] = (), *, banner: str | None = None,
                     provenance: list[str] = (), costs_intro: str = "") -> str:
    """The page: banner, sortable table, provenance, costs and other-checkpoint tables, plots, and
    the notes folded in a ``<details>`` below."""
    frame = leaderboard_frame(rows)
    columns = list(frame.columns)
    tasks = [c for c in columns if c in {t for row in rows for t in row.table_tasks}]
    head = "".join(f'<th data-type="{"text" if c in ("protocol", "attention") else "number"}">{html.escape(c)}</th>'
                   for c in columns)
    body = []
    for row, shown in zip(rows, frame.to_dict("records")):
        numbers = _sort_values(row, tasks)
        cells = []
        for column in columns:
            text = str(shown[column])
            sort = row.protocol if column == "protocol" else row.label if column == "attention" else numbers[column]
            sort_attr = "" if sort is None else html.escape(str(sort), quote=True)
            css = _cell_class(row, column, text, column in tasks)
            cells.append(f'<td class="{css}" data-sort="{sort_attr}">{html.escape(text)}</td>')
        body.append(f'<tr data-row="{html.escape(row.protocol)}/{html.escape(row.label)}">{"".join(cells)}</tr>')
    notes_html = _paragraphs(notes_markdown)
    banner_html = (f'<div class="banner" id="banner"><strong>Not a result.</strong> '
                   f'{html.escape(banner.replace("`", ""))}</div>\n' if banner else "")
    provenance_html = "" if not provenance else (
        "<h2>Provenance</h2>\n<ul id=\"provenance\">"
        + "".join(f"<li>{html.escape(line)}</li>" for line in provenance) + "</ul>\n")
    secondary = ("<h2>Step time and memory per task</h2>\n" + _paragraphs(costs_intro)
                 + _plain_table(cost_frame(rows), "costs")
                 + "<h2>Test accuracy at the other checkpoint</h2>\n<p>Each protocol reports one checkpoint "
                   "(above); this is the other one, for comparison.</p>\n"
                 + _plain_table(other_checkpoint_frame(rows), "other-checkpoint"))
    figures = "".join(
        f'<figure><img alt="{html.escape(p.name)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
        for p in plots)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>LRA leaderboard</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>LRA leaderboard</h1>\n{banner_html}"
            f"<table id=\"leaderboard\" data-rows=\"{len(rows)}\"><thead><tr>{head}</tr></thead><tbody>\n"
            + "\n".join(body) + f"\n</tbody></table>\n{provenance_html}{secondary}{figures}\n"
            f"<details class=\"notes\" id=\"notes\"><summary>How this table was computed</summary>"
            f"{notes_html}</details>\n"
            f"<script>{SCRIPT}</script>\n"
            f"<script type=\"application/json\" id=\"columns\">{json.dumps(columns)}</script>\n</body></html>\n")
