"""Rebuild leaderboards from the command line, and print one in the terminal.

    python -m lra.leaderboard --results-dir results/smoke    # one protocol: print and write
    python -m lra.leaderboard --root results                 # every protocol + the combined page

``--help`` shows the package docstring (``lra.leaderboard``): what is written, and how the table is
computed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import lra.leaderboard
from lra.leaderboard.pages import HTML_FILE, write_combined_leaderboard, write_leaderboard


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
    parser = argparse.ArgumentParser(description=lra.leaderboard.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
