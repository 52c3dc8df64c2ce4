"""Leaderboard: the results table in the LRA layout, one row per attention x protocol.

For each task column: test accuracy of the final parameters, mean +- std over seeds (n seeds), and
the same for the best-validation parameters (the official LRA protocol reports the final model, the
PyTorch lineage the best-validation one; quirk E1 in the reference). A task an attention has not run
is shown as missing, never as zero. Speed and memory are ratios to softmax measured under the same
protocol, task and device: speed = softmax step time / this step time (higher is faster), memory =
this compiled train-step memory / softmax's (lower is smaller), averaged over the tasks both ran.

    python -m lra.leaderboard --results-dir results/smoke     # prints and writes leaderboard.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback

from lra.atomic_files import atomic_write_text
from lra.results import read_table

TASK_ORDER = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
BASELINE = "softmax"
LEADERBOARD_FILE = "leaderboard.md"


def _mean_std(values: pd.Series) -> str:
    values = values.dropna() * 100.0
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f} (n=1)"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n={len(values)})"


def _ratio_to_baseline(frame: pd.DataFrame, column: str, invert: bool) -> pd.Series:
    """Per (protocol, attention): mean over tasks of this/baseline (or baseline/this if invert)."""
    per_task = frame.groupby(["protocol", "task", "device", "attention"])[column].median()
    ratios = {}
    for (protocol, task, device, attention), value in per_task.items():
        try:
            baseline = per_task[(protocol, task, device, BASELINE)]
        except KeyError:
            continue
        if value and baseline and np.isfinite(value) and np.isfinite(baseline):
            ratios.setdefault((protocol, attention), []).append(baseline / value if invert else value / baseline)
    return pd.Series({key: float(np.mean(vals)) for key, vals in ratios.items()}, dtype=float)


def leaderboard_frame(results: pd.DataFrame) -> pd.DataFrame:
    tasks = [t for t in TASK_ORDER if t in set(results["task"])] + sorted(set(results["task"]) - set(TASK_ORDER))
    speed = _ratio_to_baseline(results, "step_time_median_s", invert=True)
    memory = _ratio_to_baseline(results, "xla_step_bytes", invert=False)
    rows = []
    for (protocol, attention), group in results.groupby(["protocol", "attention"], sort=True):
        row = {"protocol": protocol, "attention": attention}
        finals = []
        for task in tasks:
            runs = group[group["task"] == task]
            row[f"{task} test@final"] = _mean_std(runs["test_accuracy_final"])
            row[f"{task} test@best-val"] = _mean_std(runs["test_accuracy_best_val"])
            finals.append(runs["test_accuracy_final"].mean() * 100 if not runs.empty else np.nan)
        row["avg test@final"] = "–" if np.isnan(finals).any() else f"{np.mean(finals):.2f}"
        row["speed vs softmax"] = f"{speed[(protocol, attention)]:.2f}×" if (protocol, attention) in speed else "–"
        row["memory vs softmax"] = f"{memory[(protocol, attention)]:.2f}×" if (protocol, attention) in memory else "–"
        row["params"] = f"{int(group['param_count'].median()):,}"
        row["runs"] = len(group)
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame) -> str:
    columns = list(frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_leaderboard(results_dir: str | Path) -> tuple[Path, str, pd.DataFrame]:
    """Write leaderboard.md; returns (its path, its text, the leaderboard frame)."""
    results_dir = Path(results_dir)
    frame = leaderboard_frame(read_table(results_dir))
    text = ("# Leaderboard\n\nTest accuracy in %, mean ± std over seeds (n = seed count). "
            "Speed and memory are ratios to softmax under the same protocol, task and device.\n"
            f"Built from `{results_dir / 'results.csv'}`.\n\n" + to_markdown(frame))
    path = results_dir / LEADERBOARD_FILE
    atomic_write_text(path, text)
    return path, text, frame


def print_leaderboard(results_dir: str | Path) -> None:
    from rich.console import Console
    from rich.table import Table

    path, _, frame = write_leaderboard(results_dir)
    table = Table(title=f"LRA leaderboard ({path})")
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    Console(width=200).print(table)


class LeaderboardCallback(Callback):
    """Hydra callback: rebuild and print the leaderboard when a multirun finishes."""

    def __init__(self, results_dir: str):
        self.results_dir = results_dir

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            print_leaderboard(self.results_dir)
        except FileNotFoundError as error:  # a sweep whose runs all failed leaves no table
            print(f"leaderboard: {error}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results", help="folder holding results.csv")
    print_leaderboard(parser.parse_args(argv).results_dir)


if __name__ == "__main__":
    main()
