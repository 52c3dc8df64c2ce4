"""What ``make reproduce`` would do, before it does it: the plan that ``--dry-run`` prints.

- A model × task table: per cell, the seeds it would reuse and the seeds it would run, or why it
  runs nothing (not implemented here, task not available, the paper reports FAIL).
- The number of runs and their total training steps (``train.steps`` of the protocol for that
  task, with the table's overrides).
- An estimate of device time on this device: from the step times recorded here for that task and
  attention on this device (median over records); failing that, from ``make bench`` figures of this
  device (the encoder's forward + backward at the task's length, scaled by batch size: a rough
  figure, the bench model is not the protocol's); failing both, it says it cannot estimate.
  Evaluation passes and compilation are not included.
- The datasets: whether a prepared cache exists under the data folder, else the ``make data``
  command that prepares it (and whether that needs a download).

Cells whose published number is ``FAIL`` (the paper's model did not finish) are skipped unless
``--include-fail``.
"""

from __future__ import annotations

import csv
import dataclasses
import shlex
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

OFFLINE_SOURCES = ("generator",)  # task sources that need no download
FAIL = "FAIL"


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    steps: int
    batch_size: int
    length: int               # tokens per row (twice max_length for two-document tasks)
    source: str
    data_dir: Path


def without_failed_cells(plan: dict[str, dict[str, list[int]]], cells, include_failed: bool = False):
    """The plan less the cells the paper reports as FAIL (unless ``include_failed``)."""
    if include_failed:
        return plan
    failed = {(c.task, c.attention) for c in cells if c.published_text.strip().upper() == FAIL}
    kept = {task: {a: seeds for a, seeds in needs.items() if (task, a) not in failed} for task, needs in plan.items()}
    return {task: needs for task, needs in kept.items() if needs}


def task_settings(protocol: str, task: str, overrides: list[str]) -> TaskSettings:
    """Steps, batch size, length, data source and data folder of a run of ``task`` under the table."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lra.data.tasks import batch_length
    from lra.run_identity import CONFIG_DIR

    overrides = [o for o in overrides if not o.startswith(("attention=", "seed=", "task=", "protocol="))]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}", f"protocol={protocol}", *overrides])
    return TaskSettings(steps=int(cfg.train.steps), batch_size=int(cfg.train.batch_size),
                        length=batch_length(cfg.task), source=str(cfg.task.get("source") or ""),
                        data_dir=Path(cfg.paths.data_dir))


def recorded_step_time(records: list[dict], task: str, attention: str, device: str) -> float | None:
    """Median recorded step time of this task and attention on ``device`` (any settings)."""
    times = [float(r["step_time_median_s"]) for r in records
             if r.get("task") == task and r.get("attention") == attention and r.get("device") == device
             and r.get("status") == "ok" and r.get("step_time_median_s")]
    return float(np.median(times)) if times else None


def bench_rows(bench_dir: Path) -> list[dict]:
    """Every ``efficiency.csv`` row under one device's bench folder (``results/bench/<device>/``)."""
    rows = []
    for path in sorted(Path(bench_dir).glob("*/efficiency.csv")):
        with open(path, newline="") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def bench_step_time(rows: list[dict], attention: str, length: int, batch_size: int) -> float | None:
    """A train step's time from ``make bench``: the encoder's forward + backward at exactly this
    length (median over bench runs), scaled linearly from the bench batch to ``batch_size``."""
    times = [float(r["time_median_ms"]) / 1000.0 * batch_size / int(r["batch"]) for r in rows
             if r.get("attention") == attention and r.get("mode") == "encoder" and r.get("pass") == "forward_backward"
             and r.get("status") == "ok" and r.get("time_median_ms") and int(r["length"]) == length]
    return float(np.median(times)) if times else None


def prepared(data_dir: Path, task: str) -> bool:
    """Whether a token cache of ``task`` exists under ``data_dir`` (its settings are checked when a run
    opens it)."""
    return any((Path(data_dir) / task).glob("*/manifest.json"))


def _cell_text(cell, needs: list[int] | None, wanted: int, include_failed: bool) -> str:
    if cell.status in ("not implemented", "task not available"):
        return cell.status
    if cell.published_text.strip().upper() == FAIL and not include_failed:
        return "paper: FAIL, skipped"
    reuse = len(cell.seeds) if cell.seeds else 0
    if not needs:
        return f"reuse {reuse}" if reuse else "nothing to run"
    return f"run {len(needs)}" + (f", reuse {reuse}" if reuse else "")


def plan_table(cells, plan: dict[str, dict[str, list[int]]], wanted: int, include_failed: bool = False) -> pd.DataFrame:
    """model × task: what each cell would reuse and run."""
    tasks = list(dict.fromkeys(c.task for c in cells if c.task != "avg"))
    rows: dict[str, dict[str, str]] = {}
    for cell in cells:
        if cell.task == "avg":
            continue
        row = rows.setdefault(cell.model, {"model": cell.model, "attention": cell.attention or "—"})
        row[cell.task] = _cell_text(cell, plan.get(cell.task, {}).get(cell.attention), wanted, include_failed)
    return pd.DataFrame(list(rows.values()), columns=["model", "attention", *tasks])


def plan_lines(spec: dict, cells, plan: dict[str, dict[str, list[int]]], commands: list[list[str]],
               records: list[dict], device: str, bench_dir: Path | None, overrides: Mapping[str, list[str]],
               include_failed: bool = False) -> list[str]:
    """The dry run's report: table, runs and steps, device-time estimate, datasets, commands.
    ``overrides``: task -> the Hydra overrides its runs get (table, task and extra ones)."""
    from lra.leaderboard.markdown import markdown_table

    lines = [markdown_table(plan_table(cells, plan, spec["seeds"], include_failed))]
    bench = bench_rows(bench_dir) if bench_dir is not None and Path(bench_dir).is_dir() else []
    runs = steps = 0
    seconds, sources, unknown = 0.0, {"recorded": 0, "bench": 0}, []
    data = []
    for task, needs in sorted(plan.items()):
        settings = task_settings(spec["protocol"], task, list(overrides.get(task, [])))
        for attention, seeds in sorted(needs.items()):
            runs += len(seeds)
            steps += len(seeds) * settings.steps
            step_time = recorded_step_time(records, task, attention, device)
            source = "recorded"
            if step_time is None:
                step_time, source = bench_step_time(bench, attention, settings.length, settings.batch_size), "bench"
            if step_time is None:
                unknown.append(f"{task}/{attention}")
                continue
            sources[source] += 1
            seconds += len(seeds) * settings.steps * step_time
        if not prepared(settings.data_dir, task):
            how = ("generated offline on first use" if settings.source in OFFLINE_SOURCES
                   else f"source `{settings.source}` needs its archive (docs/data.md)")
            data.append(f"  {task}: not prepared under {settings.data_dir} ({how}): "
                        f"make data TASK={task} PRESET={spec['protocol']}")
    lines.append(f"{runs} runs, {steps:,} training steps in total")
    if not runs:
        pass
    elif not sources["recorded"] and not sources["bench"]:
        lines.append(f"device time: cannot estimate on {device}: no step times recorded on this device for these "
                     "cells and no `make bench` figures at their lengths")
    else:
        basis = ", ".join(f"{n} cell(s) from {what} step times" for what, n in sources.items() if n)
        partial = f"; without {', '.join(unknown)} (no figures)" if unknown else ""
        lines.append(f"device time: about {seconds / 3600:.1f} device-hours of training steps on {device} "
                     f"({basis}{partial}; evaluation and compilation not included)")
    lines += (["datasets:", *data] if data else ["datasets: every task's cache is prepared"] if runs else [])
    if commands:
        lines.append("commands (paste into a shell):")
        lines += ["  " + shlex.join(command) for command in commands]
    return lines
