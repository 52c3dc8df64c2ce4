"""The static leaderboard page in a real headless browser: Debian's Chromium driven by Playwright.

The page is opened from file:// (no server). It must show every row, and clicking a header must
sort by that column: numbers by value, ascending then descending, missing cells last both ways.
Chromium comes from the system (`make browser` installs Debian's package; `make test` runs it
first); when it is absent this test fails and says so rather than skipping.
"""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from lra.leaderboard.pages import HTML_FILE, write_combined_leaderboard
from lra.leaderboard.table import leaderboard_rows
from lra.results import read_records
from tests.leaderboard_records import build_results_root

CHROMIUM = os.environ.get("LRA_CHROMIUM", "/usr/bin/chromium")
# As root on this kind of machine Chromium needs no sandbox, and must not reach for the network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = build_results_root(tmp_path_factory.mktemp("results"))
    _, _, frame = write_combined_leaderboard(root, plots=False)
    records = [r for p in ("lra_official", "pytorch_lineage") for r in read_records(root / p)]
    return root / HTML_FILE, frame, leaderboard_rows(records)


@pytest.fixture(scope="module")
def page(board):
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` (installs Debian's chromium) "
                    "or set LRA_CHROMIUM to a Chromium binary")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:  # a fresh temporary profile per launch
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(board[0].as_uri())
        page.errors = errors
        yield page
        browser.close()


def _order(page) -> list[str]:
    return page.eval_on_selector_all("#leaderboard tbody tr", "rows => rows.map(r => r.dataset.row)")


def _click(page, column: str) -> str:
    header = page.locator("#leaderboard thead th", has_text=column).first
    header.click()
    return header.get_attribute("aria-sort")


def test_page_loads_and_shows_every_row(page, board):
    _, frame, rows = board
    assert page.title() == "LRA leaderboard" and page.errors == []
    shown = page.locator("#leaderboard tbody tr")
    assert shown.count() == len(frame) == len(rows)
    assert sorted(_order(page)) == sorted(f"{r.protocol}/{r.attention}" for r in rows)
    for i in range(shown.count()):
        assert shown.nth(i).is_visible()
    headers = page.eval_on_selector_all("#leaderboard thead th", "hs => hs.map(h => h.textContent)")
    assert headers == list(frame.columns)
    assert page.locator("td.missing").count() >= 2 and page.locator("td.rule-broken").count() == 2


@pytest.mark.parametrize("column", ["text", "average", "speed vs softmax"])
def test_clicking_a_header_sorts_numerically_with_missing_last(page, board, column):
    _, _, rows = board
    value = {"text": lambda r: r.cells.get("text") and r.cells["text"].mean,
             "average": lambda r: r.average, "speed vs softmax": lambda r: r.speed}[column]
    keyed = {f"{r.protocol}/{r.attention}": value(r) for r in rows}
    present = sorted((k for k in keyed if keyed[k] is not None), key=lambda k: keyed[k])
    missing = {k for k in keyed if keyed[k] is None}
    assert present and missing  # the data exercise both
    assert _click(page, column) == "ascending"
    order = _order(page)
    assert order[:len(present)] == present and set(order[len(present):]) == missing
    assert _click(page, column) == "descending"
    order = _order(page)
    assert order[:len(present)] == present[::-1] and set(order[len(present):]) == missing


def test_clicking_attention_sorts_by_name(page):
    assert _click(page, "attention") == "ascending"
    names = [key.split("/")[1] for key in _order(page)]
    assert names == sorted(names)


def test_secondary_tables_shown_and_notes_folded_below(page, board):
    _, frame, _ = board
    for table in ("#costs", "#other-checkpoint"):
        assert page.locator(f"{table} tbody tr").count() == len(frame) and page.locator(table).is_visible()
    assert page.locator("#provenance li").first.is_visible()
    assert not page.locator("#notes p").first.is_visible()  # folded until opened
    page.locator("#notes summary").click()
    assert page.locator("#notes p").first.is_visible()
    below = page.evaluate("""() => document.querySelector('#notes').getBoundingClientRect().top >
                                   document.querySelector('#leaderboard').getBoundingClientRect().bottom""")
    assert below
