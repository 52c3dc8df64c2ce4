"""What a sweep (``python -m lra.train -m ...``, ``make sweep``) does besides its runs: a Hydra callback.

- At the start: a sweep id, exported as ``LRA_SWEEP_ID`` so every run (in this process or a launched
  job) records it; then the pre-flight check of every swept attention on a tiny input
  (``lra.preflight``), which names a broken one with what it returned before anything trains.
- At the end: the protocol's leaderboard is rebuilt and printed, then a summary of this sweep's
  runs, and where to look: the leaderboard's markdown, HTML page and plots, and the W&B offline runs
  with the command that uploads them. A run that raised was recorded as ``failed`` and the sweep
  went on; if any did, they are listed (error and log file) and the command exits with status 1.
  Jobs refused before they became runs (a bad config value, a checkpoint directory in use) leave no
  record; those of this process (``NOT_RUN``) are listed too and also make the sweep exit with status 1.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lra.run_logging import quiet_library_logs

SWEEP_ID_VARIABLE = "LRA_SWEEP_ID"  # read by lra.train into each record's `sweep_id`
NOT_RUN: list[str] = []  # "task/attention seed s: why" of jobs lra.train refused in this process


def swept_attentions(config: DictConfig) -> list[str]:
    """The attention config names a multirun sweeps (from its ``attention=...`` override, else the default)."""
    overrides = list(config.hydra.overrides.task)
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == "attention":
            if override.is_sweep_override():
                return list(override.sweep_string_iterator())
            return [str(override.value())]
    return [str(config.hydra.runtime.choices.get("attention"))]


def sweep_pointers(results_dir: str | Path, runs: list[dict]) -> list[str]:
    """Where a sweep's outputs are: leaderboard markdown, HTML page and plots; the W&B offline runs
    of its runs and the command that uploads them (``wandb sync``)."""
    from lra.leaderboard.pages import HTML_FILE, LEADERBOARD_FILE

    results_dir = Path(results_dir)
    lines = []
    pages = [results_dir / name for name in (LEADERBOARD_FILE, HTML_FILE) if (results_dir / name).exists()]
    if pages:
        lines.append("leaderboard: " + ", ".join(str(p) for p in pages))
    plots = sorted(results_dir.glob("leaderboard_*.png")) + sorted(results_dir.glob("plots/*/leaderboard_*.png"))
    if plots:
        lines.append("plots: " + ", ".join(str(p) for p in plots))
    offline = sorted(d for r in runs if r.get("run_dir") for d in Path(r["run_dir"]).glob("wandb/offline-run-*")
                     if d.is_dir())
    if offline:
        lines.append(f"W&B: {len(offline)} offline run(s), e.g. {offline[0]}; to upload them (needs network and "
                     "`wandb login`):")
        lines.append("  wandb sync " + " ".join(_sync_arguments(offline)))
    return lines


def _sync_arguments(offline: list[Path]) -> list[str]:
    """The offline run folders as ``wandb sync`` arguments: listed one by one for a few runs; for more,
    one glob per sweep folder (``<sweep dir>/*/wandb/offline-run-*``) so the command stays readable."""
    if len(offline) <= 3:
        return [shlex.quote(str(d)) for d in offline]
    sweep_dirs = sorted({d.parents[2] for d in offline})
    return [f"{shlex.quote(str(folder))}/*/wandb/offline-run-*" for folder in sweep_dirs]


class SweepCallback(Callback):
    """Sweep id and pre-flight at the start; leaderboard and failure summary at the end."""

    def __init__(self, results_dir: str, preflight: bool = True):
        self.results_dir, self.check = results_dir, preflight
        self.sweep_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        quiet_library_logs()
        self.sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        os.environ[SWEEP_ID_VARIABLE] = self.sweep_id
        if self.check:
            from lra.preflight import preflight

            problems = preflight(swept_attentions(config))
            if problems:
                print(f"preflight: {len(problems)} broken attention(s); their runs will be recorded as failed")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from lra.leaderboard.cli import print_leaderboard
        from lra.leaderboard.pages import write_leaderboard
        from lra.results import read_records

        try:
            path, _, frame = write_leaderboard(self.results_dir)
            print_leaderboard(path, frame)
        except FileNotFoundError as error:  # no run wrote a record
            print(f"leaderboard: {error}")
        try:
            runs = [r for r in read_records(self.results_dir) if r.get("sweep_id") == self.sweep_id]
        except ValueError as error:
            print(f"sweep: cannot read the records to summarise: {error}")
            return
        failed = [r for r in runs if r["status"] == "failed"]
        counts = {status: sum(r["status"] == status for r in runs) for status in ("ok", "diverged", "failed")}
        print(f"sweep {self.sweep_id}: {len(runs)} runs recorded: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        for line in sweep_pointers(self.results_dir, runs):
            print(line)
        not_run, NOT_RUN[:] = list(NOT_RUN), []
        if not_run:
            print(f"sweep: {len(not_run)} job(s) refused before training (no record):")
            for line in not_run:
                print(f"  {line}")
        if failed:
            print(f"sweep: {len(failed)} of {len(runs)} runs failed:")
            for record in failed:
                where = f" (log: {record['log_path']})" if record.get("log_path") else ""
                print(f"  {record['task']}/{record['attention']} seed {record['seed']}: {record['error']}{where}")
        if failed or not_run:
            raise SystemExit(1)
