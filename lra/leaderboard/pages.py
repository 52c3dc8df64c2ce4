"""The pages of a results folder: ``leaderboard.md``, ``leaderboard.html`` and the plots, rebuilt
from its result records; and the combined page over every protocol folder under ``results/``.
The package docstring (``lra.leaderboard``) shows the layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lra.atomic_files import atomic_write_text
from lra.leaderboard.html import leaderboard_html
from lra.leaderboard.markdown import COSTS_INTRO, leaderboard_markdown, notes, smoke_banner
from lra.leaderboard.table import Row, leaderboard_frame, leaderboard_rows, provenance_lines
from lra.results import RECORDS, Selection, comparable_runs, read_records, rebuild_table

LEADERBOARD_FILE = "leaderboard.md"
HTML_FILE = "leaderboard.html"
NOT_PROTOCOL_DIRS = ("bench", "published")  # folders under results/ that hold no run records


def load_records(results_dir: str | Path) -> list[dict]:
    """The records of one results folder; a clear error when it has none."""
    records = read_records(results_dir)
    if not records:
        raise FileNotFoundError(f"no result records in {Path(results_dir) / RECORDS}: run a sweep first "
                                "(make sweep TASK=listops)")
    return records


def _write_pages(directory: Path, rows: list[Row], selection: Selection, source: str,
                 plots: list[Path]) -> tuple[Path, str, pd.DataFrame]:
    text = leaderboard_markdown(rows, source, [str(p.relative_to(directory)) for p in plots], selection)
    atomic_write_text(directory / LEADERBOARD_FILE, text)
    atomic_write_text(directory / HTML_FILE, leaderboard_html(
        rows, notes(rows, source), plots, banner=smoke_banner(rows), provenance=provenance_lines(selection.kept),
        costs_intro=COSTS_INTRO))
    return directory / LEADERBOARD_FILE, text, leaderboard_frame(rows)


def write_leaderboard(results_dir: str | Path, plots: bool = True) -> tuple[Path, str, pd.DataFrame]:
    """Write one results folder's leaderboard (markdown, HTML, plots); returns (md path, md text, frame)."""
    from lra.leaderboard.plots import write_plots

    results_dir = Path(results_dir)
    records = load_records(results_dir)
    rebuild_table(results_dir)  # results.csv from the records too (it may be stale after a failed write)
    selection = comparable_runs(records)
    rows = leaderboard_rows(records, selection)
    figures = []
    if plots:
        for protocol in sorted({row.protocol for row in rows}):
            protocol_rows = [row for row in rows if row.protocol == protocol]
            folder = results_dir if len({row.protocol for row in rows}) == 1 else results_dir / "plots" / protocol
            figures += write_plots(protocol_rows, folder)
    return _write_pages(results_dir, rows, selection, f"`{results_dir / RECORDS}/`", figures)


def protocol_dirs(root: str | Path) -> list[Path]:
    """The folders under ``root`` that hold result records (results/bench and results/published excluded)."""
    return sorted(p.parent for p in Path(root).glob(f"*/{RECORDS}")
                  if p.is_dir() and p.parent.name not in NOT_PROTOCOL_DIRS and any(p.glob("*.json")))


def write_combined_leaderboard(root: str | Path, plots: bool = True) -> tuple[Path, str, pd.DataFrame]:
    """Rebuild every protocol's leaderboard under ``root``, then one page over all of them."""
    root = Path(root)
    folders = protocol_dirs(root)
    if not folders:
        raise FileNotFoundError(f"no result records under {root}/*/{RECORDS}/: run a sweep first "
                                "(make sweep TASK=listops)")
    figures = []
    for folder in folders:
        write_leaderboard(folder, plots=plots)
        figures += sorted(folder.glob("leaderboard_*.png")) if plots else []
    records = [record for folder in folders for record in read_records(folder)]
    selection = comparable_runs(records)
    rows = leaderboard_rows(records, selection)
    source = ", ".join(f"`{folder / RECORDS}/`" for folder in folders)
    return _write_pages(root, rows, selection, source, figures)
