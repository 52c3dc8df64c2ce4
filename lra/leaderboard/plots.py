"""Leaderboard figures for one protocol (matplotlib, Agg backend, PNG).

- Accuracy versus speed, as in LRA Figure 3 (Tay et al. 2021): x = speed relative to softmax, y =
  average test accuracy, marker area proportional to the train-step memory relative to softmax.
  Rows with a partial average are drawn hollow; rows without a softmax baseline cannot be placed
  and are named in the caption.
- Per-task accuracy bars: one group per task, one bar per attention, error bars = std over seeds;
  a missing task has no bar (it is not drawn as zero).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lra.atomic_files import atomic_save_figure  # noqa: E402
from lra.leaderboard.table import BASELINE, Row  # noqa: E402

SCATTER_FILE = "leaderboard_speed_accuracy.png"
BARS_FILE = "leaderboard_task_accuracy.png"


def _save(figure, path: Path) -> Path:
    return atomic_save_figure(path, figure)


def speed_accuracy_plot(rows: list[Row], path: Path) -> Path:
    placed = [r for r in rows if r.speed is not None and r.average is not None]
    unplaced = [r.label for r in rows if r not in placed]
    figure, axes = plt.subplots(figsize=(7, 5))
    for row in placed:
        size = 300.0 * (row.memory if row.memory is not None else 1.0)
        partial = row.average_tasks < len(row.table_tasks)
        axes.scatter(row.speed, row.average, s=size, alpha=0.6, edgecolors="C0",
                     facecolors="none" if partial else "C0", linewidths=1.5)
        axes.annotate(row.label + (" (partial)" if partial else ""), (row.speed, row.average),
                      textcoords="offset points", xytext=(6, 6), fontsize=8)
    protocol = rows[0].protocol if rows else ""
    axes.set_xlabel(f"speed relative to {BASELINE} (× faster, per-task ratios averaged)")
    axes.set_ylabel("average test accuracy (%)")
    title = f"{protocol}: accuracy vs speed (marker area = train-step memory vs {BASELINE})"
    if unplaced:
        title += "\nnot placed (no softmax baseline or no accuracy): " + ", ".join(unplaced)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    if placed:
        axes.margins(0.2)
    return _save(figure, path)


def task_bars_plot(rows: list[Row], path: Path) -> Path:
    tasks = rows[0].table_tasks if rows else []
    width = 0.8 / max(len(rows), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(rows)) ** 0.5 + 3), 4.5))
    positions = np.arange(len(tasks))
    for i, row in enumerate(rows):
        cells = [row.cells[t] for t in tasks]
        present = [j for j, c in enumerate(cells) if c.mean is not None]
        offsets = positions + i * width - 0.4 + width / 2
        axes.bar(offsets[present], [cells[j].mean for j in present], width,
                 yerr=[cells[j].std or 0.0 for j in present], capsize=3, label=row.label)
        for j, cell in enumerate(cells):  # say why a bar is absent rather than leave a gap that reads as 0
            if cell.mean is None:
                axes.text(offsets[j], 1.0, "failed" if cell.failed else "diverged" if cell.diverged else "not run",
                          rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
    axes.set_xticks(positions, tasks)
    axes.set_xlim(-0.5, len(tasks) - 0.5)
    axes.set_ylabel("test accuracy (%), mean ± std over seeds")
    axes.set_title(f"{rows[0].protocol if rows else ''}: per-task accuracy (absent bars are labelled)", fontsize=9)
    axes.legend(fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def write_plots(rows: list[Row], directory: Path) -> list[Path]:
    """Both figures for the rows of one protocol, written atomically into ``directory``."""
    return [speed_accuracy_plot(rows, directory / SCATTER_FILE), task_bars_plot(rows, directory / BARS_FILE)]
