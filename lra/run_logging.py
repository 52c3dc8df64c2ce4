"""What a run shows and where its metrics go: ``metrics.csv``, Weights & Biases, the console.

- ``metrics.csv`` and W&B get the same numbers: ``MetricSinks`` sends every logged point to both, and
  the CSV has a column for every key a point can carry (``METRIC_COLUMNS``); an unknown key is an error.
  At the end of a run one ``run`` row carries its costs (compile times, memory, median step time,
  wall time).
- W&B runs (``wandb_run_options``): one ``group`` per sweep, a ``job_type`` (train | bench |
  reproduce), tags for protocol, task, attention, seed and every non-default setting, and an id derived
  from the run's identity, so a preempted run that resumes continues the same W&B run. Smoke runs go
  to their own project (``<project>-smoke``) so they never mix with real ones.
- The console: ``RunProgress`` covers the whole run (training, evaluation passes, the host-overhead
  windows); on a terminal it is a progress bar, in a log file periodic plain lines. ``run_summary_line``
  is the one line printed when a run finishes.

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
import re
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0

METRIC_COLUMNS = (
    "step", "split",
    "loss", "accuracy", "grad_norm", "learning_rate", "step_time_s", "examples_per_s",  # train windows
    "examples",  # evaluation passes (val, test_final, test_best_val)
    # the run's costs, one `run` row at the end (RUN_COST_KEYS)
    "step_time_median_s", "compile_time_s", "eval_compile_time_s", "xla_step_bytes", "xla_temp_bytes",
    "device_peak_bytes", "wall_time_s",
)
RUN_COST_KEYS = METRIC_COLUMNS[METRIC_COLUMNS.index("step_time_median_s"):]
JOB_TYPES = ("train", "bench", "reproduce")
SMOKE_PROTOCOLS = ("smoke",)  # protocols whose accuracies mean nothing: own W&B project, leaderboard banner


class CsvMetricsWriter:
    """Appends one row per logged point to ``<run_dir>/metrics.csv`` (flushed each row)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS)
        self._writer.writeheader()

    def log(self, step: int, split: str, metrics: dict) -> None:
        unknown = sorted(set(metrics) - set(METRIC_COLUMNS))
        if unknown:  # W&B would get them and the CSV not: the two must carry the same metrics
            raise KeyError(f"metrics {unknown} have no metrics.csv column; add them to "
                           "lra.run_logging.METRIC_COLUMNS")
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


def _tag(text: str) -> str:
    return str(text)[:64]  # W&B's limit on a tag


def wandb_run_options(*, project: str, protocol: str, task: str, attention: str, seed: int, fingerprint: str,
                      settings_changed: list[str] | None, sweep_id: str | None, job_type: str = "train") -> dict:
    """The ``wandb.init`` arguments that place a run: project, id, group, job type, tags.

    The id is the run's identity (protocol, task, attention, seed and the settings fingerprint), so
    rerunning a preempted command resumes the same W&B run; a changed setting is another run.
    """
    if job_type not in JOB_TYPES:
        raise ValueError(f"W&B job_type must be one of {JOB_TYPES}, got {job_type!r}")
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{protocol}-{task}-{attention}-s{seed}")
    tags = [_tag(f"protocol:{protocol}"), _tag(f"task:{task}"), _tag(f"attention:{attention}"), f"seed:{seed}"]
    tags += [_tag(change) for change in settings_changed or []]
    if settings_changed is None:
        tags.append("settings:unknown")
    if protocol in SMOKE_PROTOCOLS:
        tags.append("smoke")
    return {"project": f"{project}-smoke" if protocol in SMOKE_PROTOCOLS else project,
            "id": f"{readable[:80]}-{fingerprint[:16]}", "group": sweep_id, "job_type": job_type, "tags": tags}


def run_sinks(logger_cfg, record: dict, run_dir: Path, config: dict, primary: bool) -> MetricSinks | None:
    """A run's metric sinks: ``metrics.csv`` in ``run_dir``, and W&B when ``logger_cfg.wandb.enabled``
    (placed by ``wandb_run_options`` from the record's identity fields); None off process 0."""
    if not primary:
        return None
    wandb_sink = None
    wandb_cfg = logger_cfg.wandb
    if wandb_cfg.enabled:
        placement = wandb_run_options(project=wandb_cfg.project, protocol=record["protocol"], task=record["task"],
                                      attention=record["attention"], seed=int(record["seed"]),
                                      fingerprint=record["fingerprint"], settings_changed=record["settings_changed"],
                                      sweep_id=record["sweep_id"], job_type=wandb_cfg.get("job_type", "train"))
        wandb_sink = WandbSink(project=placement["project"], entity=wandb_cfg.entity, mode=wandb_cfg.mode,
                               run_dir=run_dir, name=record["run_id"], config=config, tags=placement["tags"],
                               run_id=placement["id"], group=placement["group"], job_type=placement["job_type"])
    return MetricSinks(CsvMetricsWriter(run_dir), wandb_sink)


class WandbSink:
    """Thin wrapper around a wandb run: ``log``, ``summary``, ``finish``.

    ``run_id`` given: the W&B run with that id is continued if it exists (``resume="allow"``);
    points at steps it already has (a resumed run replays its history) are not sent again.
    """

    def __init__(self, *, project: str, run_dir: str | Path, name: str, config: dict,
                 mode: str | None = None, entity: str | None = None, tags: list | None = None,
                 run_id: str | None = None, group: str | None = None, job_type: str | None = None):
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
                         tags=tags, id=run_id, resume="allow" if run_id else None, group=group,
                         job_type=job_type, reinit="finish_previous")
        try:
            self.run = wandb.init(mode=mode, **arguments)
        except Exception as error:  # noqa: BLE001 - W&B must never cost a run
            if mode != "online":
                raise
            log.warning("W&B: online start failed (%s: %s); logging offline instead", type(error).__name__, error)
            mode = os.environ["WANDB_MODE"] = "offline"
            self.run = wandb.init(mode=mode, **arguments)
        self.mode = mode
        self.starting_step = int(getattr(self.run, "starting_step", 0) or 0)

    @property
    def offline_dir(self) -> Path | None:
        """The offline run's folder (what ``wandb sync`` uploads); None when online."""
        return Path(self.run.dir).parent if self.mode == "offline" else None

    def log(self, step: int, split: str, metrics: dict) -> None:
        if step < self.starting_step:
            return  # the resumed W&B run has this point already
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


def run_costs(metrics: dict, wall_time_s: float) -> dict:
    """The ``run`` row logged at the end of a run: its compile times, memory, step time, wall time."""
    values = {key: metrics.get(key) for key in RUN_COST_KEYS if key != "wall_time_s"}
    return {key: value for key, value in {**values, "wall_time_s": wall_time_s}.items() if value is not None}


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "n/a"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def run_summary_line(record: dict, record_path: str | Path | None) -> str:
    """One line for a finished run: what ran, its headline accuracy, speed, memory, wall time, record."""
    what = f"{record['task']}/{record['attention']} seed {record['seed']} [{record['protocol']}]"
    where = f" -> {record_path}" if record_path else ""
    if record.get("status") != "ok":
        reason = record.get("error") or record.get("divergence") or ""
        return f"{record.get('status')}: {what}: {reason}{where}"
    checkpoint = record.get("test_checkpoint") or "final"
    accuracy = record.get(f"test_accuracy_{checkpoint}")
    step = record.get("step_time_median_s")
    memory = record.get("device_peak_bytes") or record.get("xla_step_bytes")
    memory_kind = "device peak" if record.get("device_peak_bytes") else "XLA step"
    return (f"done: {what}: test acc {'n/a' if accuracy is None else f'{100 * accuracy:.2f}%'} ({checkpoint}), "
            f"{'n/a' if step is None else f'{1000 * step:.2f}'} ms/step, {_bytes(memory)} {memory_kind} memory, "
            f"wall {_duration(record.get('wall_time_s'))}{where}")


class RunProgress:
    """Progress over a whole run: training steps, evaluation passes and the host-overhead windows.

    Used as ``with RunProgress(label, total, enabled) as progress:``; ``progress(done, fields)`` with
    ``done`` in units of train steps (the overhead windows' steps counted after training) and
    ``fields`` holding ``phase`` (training | validating | testing (final) | testing (best val) |
    timing host overhead), ``loss``, ``val`` (best validation accuracy) and, during an evaluation
    pass, ``batch`` (done, total). On a terminal: a rich bar with elapsed time, so an evaluation
    pass never looks like a hang. Otherwise (a log file): one plain log line at every phase change and
    at most every ``every_s`` seconds in between.
    """

    def __init__(self, label: str, total: int, enabled: bool, interactive: bool | None = None,
                 every_s: float = 30.0):
        self.label, self.total, self.enabled, self.every_s = label, total, enabled, every_s
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.fields = {"phase": "training", "loss": None, "val": None}
        self.batch: tuple[int, int] | None = None  # (done, total) of an evaluation pass
        self.done, self._last_line, self._start = 0, None, time.monotonic()

    def __enter__(self):
        if not self.enabled:
            return None
        self._start = time.monotonic()
        if self.interactive:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[phase]}  loss {task.fields[loss]}  "
                                           "best val {task.fields[val]}"),
                                TimeElapsedColumn(), TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, **self._shown())
        else:
            self._line(force=True)
        return self.update

    def _shown(self) -> dict:
        shown = {k: ("–" if v is None or v < 0 else f"{v:.3f}") for k, v in self.fields.items() if k != "phase"}
        batch = f" batch {self.batch[0]}/{self.batch[1]}" if self.batch else ""
        return {**shown, "phase": self.fields["phase"] + batch}

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._last_line is not None and now - self._last_line < self.every_s:
            return
        self._last_line = now
        shown = self._shown()
        log.info("%s: %d/%d %s, loss %s, best val %s, elapsed %s", self.label, self.done, self.total,
                 shown["phase"], shown["loss"], shown["val"], _duration(now - self._start))

    def update(self, done: int, fields: dict) -> None:
        phase_changed = fields.get("phase", self.fields["phase"]) != self.fields["phase"]
        self.fields.update({k: v for k, v in fields.items() if k in self.fields})
        self.batch = fields.get("batch")  # an evaluation pass's batches (not a phase change)
        self.done = min(done, self.total)
        if self.interactive:
            self.bar.update(self.task, completed=self.done, **self._shown())
        else:
            self._line(force=phase_changed)

    def __exit__(self, *exc):
        if not self.enabled:
            return
        if self.interactive:
            self.bar.__exit__(*exc)
        elif exc[0] is None:
            self.fields["phase"] = "done"
            self._line(force=True)


def quiet_library_logs() -> None:
    """Silence library chatter that reads like a problem: JAX's "Unable to initialize backend 'tpu'"
    on machines without one, TensorFlow's C++ banner, Orbax's INFO line per checkpoint save (absl)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
