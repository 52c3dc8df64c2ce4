"""Where a run's metrics go: the run directory's ``metrics.csv`` and, if enabled, Weights & Biases.

W&B is imported only when enabled. Its mode follows ``WANDB_MODE`` when set; otherwise a run goes
online only if an account is configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry for W&B), else
offline. The mode is exported to the environment before ``import wandb``: passing ``mode='offline'``
to ``wandb.init`` alone still lets wandb 0.31 open network connections.

An online run first checks, within a few seconds, that the W&B server (``WANDB_BASE_URL``, default
https://api.wandb.ai) accepts a connection; if it does not (a GPU node without network access with a
key in its environment), or ``wandb.init`` fails online, the run logs offline with a warning
(``wandb sync`` uploads it later). A W&B error while logging disables W&B for the rest of the run
with a warning; ``metrics.csv`` and the result record never depend on it.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0

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
        try:
            self._writer.writerow({"step": step, "split": split, **metrics})
            self._file.flush()
        except OSError as error:  # e.g. a full disk: name the file
            raise OSError(error.errno, error.strerror or str(error), str(self.path)) from error

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


def wandb_server_reachable(timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if the W&B server accepts a TCP connection within ``timeout``, else why not."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"cannot connect to {host}:{port} ({error or type(error).__name__})"


class WandbSink:
    """Thin wrapper around a wandb run: ``log``, ``summary``, ``finish``."""

    def __init__(self, *, project: str, run_dir: str | Path, name: str, config: dict,
                 mode: str | None = None, entity: str | None = None, tags: list | None = None):
        mode = resolve_wandb_mode(mode)
        if mode == "online":
            unreachable = wandb_server_reachable()
            if unreachable:
                log.warning("W&B: %s; logging offline instead (upload later with `wandb sync %s`)",
                            unreachable, run_dir)
                mode = "offline"
        os.environ["WANDB_MODE"] = mode  # before import: see module docstring
        os.environ.setdefault("WANDB_START_METHOD", "thread")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        arguments = dict(project=project, entity=entity, name=name, config=config, dir=str(run_dir),
                         tags=tags, reinit="finish_previous")
        try:
            self.run = wandb.init(mode=mode, **arguments)
        except Exception as error:  # noqa: BLE001 - W&B must never cost a run
            if mode != "online":
                raise
            log.warning("W&B: online start failed (%s: %s); logging offline instead", type(error).__name__, error)
            mode = os.environ["WANDB_MODE"] = "offline"
            self.run = wandb.init(mode=mode, **arguments)
        self.mode = mode

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
            self._guarded(self.wandb.log, step, split, metrics)

    def _guarded(self, call, *args) -> None:
        try:
            call(*args)
        except Exception as error:  # noqa: BLE001 - W&B must never cost a run
            log.warning("W&B: %s failed (%s: %s); W&B is off for the rest of this run, metrics.csv goes on",
                        getattr(call, "__name__", "call"), type(error).__name__, error)
            self.wandb = None

    def close(self, record: dict | None = None) -> None:
        self.csv.close()
        if self.wandb is not None and record is not None:
            self._guarded(self.wandb.summary, record)
        if self.wandb is not None:
            self._guarded(self.wandb.finish)
