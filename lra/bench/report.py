"""Where benchmark results go and how they are shown: CSV, markdown, log-log plots, provenance.

Every benchmark writes one folder ``results/bench/<device>/<name>/`` (``<name>`` defaults to a UTC
timestamp), each file written atomically (``lra/atomic_files.py``), so an interrupted sweep leaves
complete files only. Rows are plain dicts; a column missing from a row is written empty.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax

from lra.atomic_files import atomic_save_figure, atomic_write_text
from lra.metrics import provenance

RESULTS_ROOT = Path("results") / "bench"


def device_slug() -> str:
    """``cpu`` or e.g. ``gpu-nvidia-h100-80gb-hbm3``: the folder that keeps devices apart."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", f"{device.platform}-{device.device_kind}".lower()).strip("-")


def output_directory(root: str | Path | None, name: str | None) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    return Path(root or RESULTS_ROOT) / device_slug() / (name or stamp)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    unknown = sorted({key for row in rows for key in row} - set(columns))
    if unknown:
        raise ValueError(f"{path.name}: rows have columns not in the schema: {unknown}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: format_cell(row.get(key)) for key in columns})
    atomic_write_text(path, buffer.getvalue())


def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


REPO = Path(__file__).resolve().parents[2]


def repo_relative(value):
    """A path inside this repository as written relative to it (results name no machine's folders)."""
    if isinstance(value, (str, Path)) and Path(value).is_absolute():
        try:
            return str(Path(value).resolve().relative_to(REPO))
        except ValueError:
            return str(value)
    return value


def write_provenance(path: Path, settings: dict) -> dict:
    """provenance.json: device, library versions, git sha, date, plus the benchmark's settings
    (file settings inside the repository written relative to it)."""
    info = {**provenance(), "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # other work on the host skews timings
            "settings": {key: repo_relative(value) for key, value in settings.items()}}
    atomic_write_text(path, json.dumps(info, indent=2, default=str) + "\n")
    return info


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(format_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_lines(path: Path, rows: Sequence[dict], *, x: str, y: str, series: str, panels: Sequence[str],
               xlabel: str, ylabel: str, title: str, emphasise: Sequence[str] = (),
               status: str | None = None) -> None:
    """One log-log panel per distinct value of ``panels`` (e.g. mode x pass), one line per ``series``.

    Rows whose ``y`` is missing are not drawn. With ``status`` (a column holding ok / oom / ...), the
    first ``oom`` x of a series is marked with an ``x`` on the panel's top edge: "out of memory from here".
    Lines named in ``emphasise`` (the baselines) are drawn thick and black.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel_keys = sorted({tuple(str(row[key]) for key in panels) for row in rows})
    names = sorted({row[series] for row in rows}, key=lambda name: (name not in emphasise, name))
    colours = plt.get_cmap("tab10")  # ten distinct hues; the line style changes every ten families
    columns = min(len(panel_keys), 2) or 1
    height = math.ceil(len(panel_keys) / columns) or 1
    figure, axes = plt.subplots(height, columns, figsize=(6.4 * columns, 4.6 * height), squeeze=False)
    for axis, panel in zip(axes.flat, panel_keys):
        in_panel = [row for row in rows if tuple(str(row[key]) for key in panels) == panel]
        for index, name in enumerate(names):
            points = sorted((row[x], row[y]) for row in in_panel
                            if row[series] == name and row.get(y) not in (None, "") and row[y] > 0)
            style = dict(color="black", linewidth=2.6, linestyle="-" if emphasise and name == emphasise[0] else "--") \
                if name in emphasise else dict(color=colours(index % 10), linewidth=1.4,
                                               linestyle=("-", "--", ":", "-.")[index // 10 % 4])
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3.5, label=name, **style)
            if status:
                failures = sorted(row[x] for row in in_panel if row[series] == name and row.get(status) == "oom")
                if failures:
                    axis.plot([failures[0]], [1.0], marker="x", markersize=9, color=style["color"],
                              transform=axis.get_xaxis_transform(), clip_on=False, linestyle="none")
        if not axis.lines:
            axis.text(0.5, 0.5, "no successful point", transform=axis.transAxes, ha="center", color="grey")
        else:
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            ticks = sorted({row[x] for row in in_panel})
            axis.set_xticks(ticks, [f"{tick:g}" for tick in ticks])  # the swept values, not powers of 2
            axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(" / ".join(panel), fontsize=10)
        axis.grid(True, which="both", alpha=0.25)
    for axis in list(axes.flat)[len(panel_keys):]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for axis in list(axes.flat)[1:len(panel_keys)]:
        seen.update(zip(*reversed(axis.get_legend_handles_labels())))
    figure.legend(seen.values(), seen.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
                  frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    atomic_save_figure(path, figure)


class PointProgress:
    """A rich progress bar over benchmark points; silent when disabled."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.enabled = label, total, enabled

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=self.total)
        return self

    def describe(self, text: str) -> None:
        if self.enabled:
            self.bar.update(self.task, description=text)

    def advance(self) -> None:
        if self.enabled:
            self.bar.advance(self.task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
