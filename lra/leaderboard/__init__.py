"""Leaderboard: the results store in the LRA layout, one row per attention x protocol.

    results/<protocol>/leaderboard.md     markdown: the table, provenance, costs per task, the other
                                          checkpoint, how it was computed
    results/<protocol>/leaderboard.html   one static page (no server): sortable columns, plots inline
    results/<protocol>/leaderboard_*.png  accuracy vs speed (marker = memory), per-task bars
    results/leaderboard.{md,html}         every protocol found under results/ in one table

Everything is rebuilt from the result records (``<results_dir>/records/*.json``), never edited by
hand; which records count is ``lra.results.comparable_runs``. How cells,
averages and ratios are computed is in ``lra.leaderboard.table``; the rules, briefly: mean ± std
over seeds with the seed count, missing tasks shown as missing (never zero, averages marked
partial), speed and memory relative to softmax of the same protocol, task and device, and the LRA
parameter rule (at most 10 % more parameters than the baseline) checked per row.

    python -m lra.leaderboard --results-dir results/smoke    # one protocol: print and write
    python -m lra.leaderboard --root results                 # every protocol + the combined page
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lra.atomic_files import atomic_write_text
from lra.leaderboard.html import leaderboard_html
from lra.leaderboard.markdown import COSTS_INTRO, leaderboard_markdown, notes, smoke_banner
from lra.leaderboard.table import (BASELINE, PARAMETER_RULE, TASK_ORDER, Row, leaderboard_frame, leaderboard_rows,
                                  provenance_lines)
from lra.results import RECORDS, Selection, comparable_runs, read_records, rebuild_table

LEADERBOARD_FILE = "leaderboard.md"
HTML_FILE = "leaderboard.html"
NOT_PROTOCOL_DIRS = ("bench", "published")  # folders under results/ that hold no run records

__all__ = ["BASELINE", "PARAMETER_RULE", "TASK_ORDER", "LEADERBOARD_FILE", "HTML_FILE", "leaderboard_frame",
           "leaderboard_rows", "load_records", "write_leaderboard", "write_combined_leaderboard", "main"]


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


def print_leaderboard(path: Path, frame: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LRA leaderboard ({path})")
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    Console(width=220).print(table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--results-dir", help="one protocol's folder holding records/")
    where.add_argument("--root", help="a folder of protocol folders (results/): all of them + the combined page")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    args = parser.parse_args(argv)
    try:
        if args.results_dir:
            path, _, frame = write_leaderboard(args.results_dir, plots=not args.no_plots)
        else:
            path, _, frame = write_combined_leaderboard(args.root or "results", plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"leaderboard: {error}") from None
    print_leaderboard(path, frame)
    print(f"written: {path} and {path.with_name(HTML_FILE)}")
