"""Leaderboard figures for one protocol (matplotlib, Agg backend, PNG).

- Accuracy versus speed, as in LRA Figure 3 (Tay et al. 2021): x = speed relative to softmax, y =
  average test accuracy, marker area proportional to the train-step memory relative to softmax.
  Rows with a partial average are drawn hollow; rows without a softmax baseline cannot be placed
  and are named in the caption.
- Per-task accuracy bars: one group per task, one bar per attention, error bars = std over seeds;
  a missing task has no bar (it is not drawn as zero).

Readable at 20+ rows: every row has its own colour (``palette``: tab10, tab20, then evenly spaced
hues, never repeating), and points are numbered with the names in a legend beside the axes rather
than written next to the points, where they would overlap.
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


def palette(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, else ``n`` evenly spaced hues."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [matplotlib.colors.hsv_to_rgb((i / n, 0.75 if i % 2 else 0.95, 0.85 if i % 2 else 0.6)).tolist() + [1.0]
            for i in range(n)]


def speed_accuracy_plot(rows: list[Row], path: Path) -> Path:
    placed = [r for r in rows if r.speed is not None and r.average is not None]
    unplaced = [r.label for r in rows if r not in placed]
    figure, axes = plt.subplots(figsize=(7 + (3.5 if placed else 0), 5 + 0.12 * max(0, len(placed) - 20)))
    for number, (row, colour) in enumerate(zip(placed, palette(len(placed))), start=1):
        size = 300.0 * (row.memory if row.memory is not None else 1.0)
        partial = row.average_tasks < len(row.table_tasks)
        axes.scatter(row.speed, row.average, s=size, alpha=0.6, edgecolors=[colour],
                     facecolors="none" if partial else [colour], linewidths=1.5,
                     label=f"{number}. {row.label}" + (" (partial)" if partial else ""))
        axes.annotate(str(number), (row.speed, row.average), ha="center", va="center", fontsize=7)
    if placed:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), markerscale=0.4,
                    ncols=1 if len(placed) <= 30 else 2, frameon=False)
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
    for i, (row, colour) in enumerate(zip(rows, palette(len(rows)))):
        cells = [row.cells[t] for t in tasks]
        present = [j for j, c in enumerate(cells) if c.mean is not None]
        offsets = positions + i * width - 0.4 + width / 2
        axes.bar(offsets[present], [cells[j].mean for j in present], width, color=[colour],
                 yerr=[cells[j].std or 0.0 for j in present], capsize=3, label=row.label)
        for j, cell in enumerate(cells):  # say why a bar is absent rather than leave a gap that reads as 0
            if cell.mean is None:
                axes.text(offsets[j], 1.0, "failed" if cell.failed else "diverged" if cell.diverged else "not run",
                          rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
    axes.set_xticks(positions, tasks)
    axes.set_xlim(-0.5, len(tasks) - 0.5)
    axes.set_ylabel("test accuracy (%), mean ± std over seeds")
    axes.set_title(f"{rows[0].protocol if rows else ''}: per-task accuracy (absent bars are labelled)", fontsize=9)
    axes.legend(fontsize=7, ncols=1 if len(rows) <= 20 else 2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def write_plots(rows: list[Row], directory: Path) -> list[Path]:
    """Both figures for the rows of one protocol, written atomically into ``directory``."""
    return [speed_accuracy_plot(rows, directory / SCATTER_FILE), task_bars_plot(rows, directory / BARS_FILE)]
