"""Where a run's metrics go: the run directory's ``metrics.csv`` and, if enabled, Weights & Biases.

W&B is imported only when enabled. Its mode follows ``WANDB_MODE`` when set; otherwise a run goes
online only if an account is configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry for W&B), else
offline. The mode is exported to the environment before ``import wandb``: passing ``mode='offline'``
to ``wandb.init`` alone still lets wandb 0.31 open network connections.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

METRIC_COLUMNS = ("step", "split", "loss", "accuracy", "learning_rate", "step_time_s", "examples_per_s")


class CsvMetricsWriter:
    """Appends one row per logged point to ``<run_dir>/metrics.csv`` (flushed each row)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        self._writer.writeheader()

    def log(self, step: int, split: str, metrics: dict) -> None:
        self._writer.writerow({"step": step, "split": split, **metrics})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _wandb_account_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_wandb_mode(configured: str | None) -> str:
    """``WANDB_MODE`` wins; then the config's ``logger.wandb.mode``; then online iff an account exists."""
    mode = os.environ.get("WANDB_MODE") or configured
    if mode in (None, "", "auto"):
        mode = "online" if _wandb_account_configured() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode / WANDB_MODE must be online, offline, disabled or auto; got {mode!r}")
    return mode


class WandbSink:
    """Thin wrapper around a wandb run: ``log``, ``summary``, ``finish``."""

    def __init__(self, *, project: str, run_dir: str | Path, name: str, config: dict,
                 mode: str | None = None, entity: str | None = None, tags: list | None = None):
        mode = resolve_wandb_mode(mode)
        os.environ["WANDB_MODE"] = mode  # before import: see module docstring
        os.environ.setdefault("WANDB_START_METHOD", "thread")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.mode = mode
        self.run = wandb.init(project=project, entity=entity, name=name, config=config, dir=str(run_dir),
                              mode=mode, tags=tags, reinit="finish_previous")

    def log(self, step: int, split: str, metrics: dict) -> None:
        values = {f"{split}/{key}": value for key, value in metrics.items()
                  if isinstance(value, (int, float)) and math.isfinite(value)}
        self.run.log(values, step=step)

    def summary(self, record: dict) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                self.run.summary[key] = value

    def finish(self) -> None:
        self.run.finish()


class MetricSinks:
    """Fan-out to the CSV writer and the optional W&B sink."""

    def __init__(self, csv_writer: CsvMetricsWriter, wandb_sink: WandbSink | None):
        self.csv, self.wandb = csv_writer, wandb_sink

    def log(self, step: int, split: str, metrics: dict) -> None:
        self.csv.log(step, split, metrics)
        if self.wandb is not None:
            self.wandb.log(step, split, metrics)

    def close(self, record: dict | None = None) -> None:
        self.csv.close()
        if self.wandb is not None:
            if record is not None:
                self.wandb.summary(record)
            self.wandb.finish()
