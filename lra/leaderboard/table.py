"""The numbers behind the leaderboard: one row per attention x protocol, one cell per task.

Rules (LRA, Tay et al. 2021, and the LRA README's apples-to-apples rule):

- A task cell is the test accuracy in %, mean and sample std over the seeds that finished, with the
  seed count. Which checkpoint is the headline is the protocol's rule, recorded in each result as
  ``test_checkpoint`` ("final" in the official LRA code, "best_val" in the PyTorch lineage); the
  other checkpoint is kept as a secondary table.
- Runs with ``status == "diverged"`` (absent = ok) are left out of the means and counted apart;
  a cell whose runs all diverged is shown as diverged, not as a number.
- The average is over the tasks of the table: every task some attention ran under that protocol.
  A row missing a task gets a partial average over the tasks it has, marked as partial; a missing
  task never counts as zero.
- Speed and memory are ratios to softmax under the same protocol, task and device (medians over
  seeds), computed per task and then averaged over the tasks both ran: speed = softmax step time /
  this step time (higher is faster); memory = this / softmax for XLA's compiled train-step memory
  and for the device allocator's peak (GPU only).
- Parameters: the LRA rule allows a model at most 10 % more parameters than the baseline
  Transformer of the same task, with the same embedding size, hidden sizes and depth; the ratio to
  softmax is taken per task and its maximum is checked, and so are those sizes (``model_config``).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

TASK_ORDER = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
BASELINE = "softmax"
PARAMETER_RULE = 1.10  # LRA README: "at most 10% larger in parameters than the base Transformer"
FIXED_SIZES = ("emb_dim", "qkv_dim", "mlp_dim", "num_layers")  # LRA README: these may not change
CHECKPOINT_COLUMNS = {"final": "test_accuracy_final", "best_val": "test_accuracy_best_val"}
MISSING = "—"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One task of one row: accuracy in % over the seeds that finished (None when none did)."""

    mean: float | None
    std: float | None
    seeds: int
    diverged: int
    diverged_at: tuple[int, ...] = ()    # the steps at which those runs diverged, where recorded

    @property
    def missing(self) -> bool:
        return self.seeds == 0 and self.diverged == 0

    def text(self) -> str:
        if self.missing:
            return MISSING
        steps = f" at step {', '.join(map(str, self.diverged_at))}" if self.diverged_at else ""
        if self.seeds == 0:
            return f"diverged ({self.diverged} of {self.diverged}{',' + steps if steps else ''})"
        spread = f" ± {self.std:.2f}" if self.seeds > 1 else ""
        note = f", {self.diverged} diverged{steps}" if self.diverged else ""
        return f"{self.mean:.2f}{spread} (n={self.seeds}{note})"


@dataclasses.dataclass
class Row:
    protocol: str
    attention: str
    checkpoint: str                      # the headline checkpoint: final | best_val
    cells: dict[str, Cell]               # task -> headline accuracy
    other_cells: dict[str, Cell]         # task -> the other checkpoint's accuracy
    table_tasks: list[str]               # the tasks of this protocol's table
    speed: float | None = None           # softmax step time / this, averaged over tasks
    speed_tasks: int = 0
    memory: float | None = None          # XLA train-step memory / softmax's
    peak_memory: float | None = None     # device peak memory / softmax's (GPU)
    params: tuple[int, int] | None = None  # (min, max) over tasks
    param_ratio: float | None = None     # max over tasks of params / softmax's params
    changed_sizes: tuple[str, ...] = ()  # FIXED_SIZES keys whose value differs from softmax's model
    runs: int = 0
    diverged: int = 0

    @property
    def average(self) -> float | None:
        means = [c.mean for t, c in self.cells.items() if t in self.table_tasks and c.mean is not None]
        return float(np.mean(means)) if means else None

    @property
    def average_tasks(self) -> int:
        return sum(1 for t in self.table_tasks if self.cells[t].mean is not None)

    @property
    def param_rule_ok(self) -> bool | None:
        if self.param_ratio is None:
            return None
        return self.param_ratio <= PARAMETER_RULE + 1e-9 and not self.changed_sizes


def ordered_tasks(tasks) -> list[str]:
    tasks = set(tasks)
    return [t for t in TASK_ORDER if t in tasks] + sorted(tasks - set(TASK_ORDER))


def _with_defaults(results: pd.DataFrame) -> pd.DataFrame:
    """Columns older or synthetic records may lack, filled with their documented defaults."""
    results = results.copy()
    defaults = {"status": "ok", "test_checkpoint": "final", "device": "unknown", "device_peak_bytes": np.nan,
                "xla_step_bytes": np.nan, "step_time_median_s": np.nan, "param_count": np.nan,
                "test_accuracy_best_val": np.nan, "test_accuracy_final": np.nan}
    for column, default in defaults.items():
        if column not in results:
            results[column] = default
        elif isinstance(default, str):
            results[column] = results[column].fillna(default)
    unknown = set(results["test_checkpoint"]) - set(CHECKPOINT_COLUMNS)
    if unknown:
        raise ValueError(f"result records name test_checkpoint {sorted(unknown)}; expected one of "
                         f"{sorted(CHECKPOINT_COLUMNS)} (configs/protocol/*.yaml protocol.test_checkpoint)")
    return results


def _cell(runs: pd.DataFrame, column: str) -> Cell:
    ok = runs[runs["status"] != "diverged"][column].dropna() * 100.0
    failed = runs[runs["status"] == "diverged"]
    steps = tuple(sorted(int(s) for s in failed["diverged_at_step"].dropna())) if "diverged_at_step" in failed else ()
    if ok.empty:
        return Cell(None, None, 0, len(failed), steps)
    return Cell(float(ok.mean()), float(ok.std(ddof=1)) if len(ok) > 1 else None, len(ok), len(failed), steps)


def _ratios(results: pd.DataFrame, column: str, keys: list[str], invert: bool) -> dict:
    """(protocol, attention) -> per-task ratios of this attention's median to softmax's median."""
    finished = results[results["status"] != "diverged"]
    medians = finished.groupby([*keys, "attention"])[column].median()
    ratios: dict[tuple[str, str], list[float]] = {}
    for index, value in medians.items():
        *group, attention = index
        baseline = medians.get((*group, BASELINE))
        if baseline is None or not (np.isfinite(value) and np.isfinite(baseline)) or value <= 0 or baseline <= 0:
            continue
        ratios.setdefault((group[0], attention), []).append(baseline / value if invert else value / baseline)
    return ratios


def _changed_sizes(results: pd.DataFrame) -> dict[tuple[str, str], tuple[str, ...]]:
    """(protocol, attention) -> the FIXED_SIZES that differ from softmax's model on some task."""
    if "model_config" not in results:
        return {}
    sizes = {}
    for (protocol, task, attention), runs in results.groupby(["protocol", "task", "attention"]):
        configs = [json.loads(c) for c in runs["model_config"].dropna() if isinstance(c, str)]
        sizes[(protocol, task, attention)] = {k: {c.get(k) for c in configs} for k in FIXED_SIZES}
    changed: dict[tuple[str, str], set[str]] = {}
    for (protocol, task, attention), values in sizes.items():
        baseline = sizes.get((protocol, task, BASELINE))
        if baseline is not None:
            differ = {k for k in FIXED_SIZES if values[k] and baseline[k] and values[k] != baseline[k]}
            changed.setdefault((protocol, attention), set()).update(differ)
    return {key: tuple(k for k in FIXED_SIZES if k in keys) for key, keys in changed.items()}


def leaderboard_rows(results: pd.DataFrame) -> list[Row]:
    """Every (protocol, attention) of the results table as a Row, sorted by protocol then average."""
    results = _with_defaults(results)
    per_task = ["protocol", "task", "device"]
    speed = _ratios(results, "step_time_median_s", per_task, invert=True)
    memory = _ratios(results, "xla_step_bytes", per_task, invert=False)
    peak = _ratios(results, "device_peak_bytes", per_task, invert=False)
    params = _ratios(results, "param_count", ["protocol", "task"], invert=False)
    changed_sizes = _changed_sizes(results)
    rows = []
    for protocol, runs_of_protocol in results.groupby("protocol", sort=True):
        tasks = ordered_tasks(runs_of_protocol["task"])
        checkpoint = runs_of_protocol["test_checkpoint"].mode().iloc[0]
        other = "best_val" if checkpoint == "final" else "final"
        for attention, group in runs_of_protocol.groupby("attention", sort=True):
            by_task = {task: group[group["task"] == task] for task in tasks}
            key = (protocol, attention)
            counts = group["param_count"].dropna()
            row = Row(protocol=protocol, attention=attention, checkpoint=checkpoint,
                      cells={t: _cell(r, CHECKPOINT_COLUMNS[checkpoint]) for t, r in by_task.items()},
                      other_cells={t: _cell(r, CHECKPOINT_COLUMNS[other]) for t, r in by_task.items()},
                      table_tasks=tasks, runs=len(group), diverged=int((group["status"] == "diverged").sum()),
                      params=(int(counts.min()), int(counts.max())) if not counts.empty else None)
            if key in speed:
                row.speed, row.speed_tasks = float(np.mean(speed[key])), len(speed[key])
            if key in memory:
                row.memory = float(np.mean(memory[key]))
            if key in peak:
                row.peak_memory = float(np.mean(peak[key]))
            if key in params:
                row.param_ratio = float(np.max(params[key]))
                row.changed_sizes = changed_sizes.get(key, ())
            rows.append(row)
    return sorted(rows, key=lambda r: (r.protocol, -(r.average_tasks), -(r.average or -1.0), r.attention))


def _ratio_text(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}×"


def average_text(row: Row) -> str:
    if row.average is None:
        return MISSING
    if row.average_tasks < len(row.table_tasks):
        return f"{row.average:.2f} (partial: {row.average_tasks} of {len(row.table_tasks)} tasks)"
    return f"{row.average:.2f}"


def param_rule_text(row: Row) -> str:
    if row.param_ratio is None:
        return MISSING
    problems = ([f"over the {PARAMETER_RULE - 1:.0%} limit"] if row.param_ratio > PARAMETER_RULE + 1e-9 else []) + (
        [f"{', '.join(row.changed_sizes)} differ from softmax"] if row.changed_sizes else [])
    verdict = "; ".join(problems) or "ok"
    return f"{row.param_ratio:.2f}× ({verdict})"


def params_text(row: Row) -> str:
    if row.params is None:
        return MISSING
    low, high = row.params
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def leaderboard_frame(results: pd.DataFrame, rows: list[Row] | None = None) -> pd.DataFrame:
    """The leaderboard as display text: protocol, attention, a column per task, average, ratios."""
    rows = leaderboard_rows(results) if rows is None else rows
    tasks = ordered_tasks(task for row in rows for task in row.table_tasks)
    records = []
    for row in rows:
        record = {"protocol": row.protocol, "attention": row.attention}
        record.update({task: row.cells[task].text() if task in row.cells else MISSING for task in tasks})
        record.update({"average": average_text(row), "speed vs softmax": _ratio_text(row.speed),
                       "memory vs softmax": _ratio_text(row.memory),
                       "peak memory vs softmax": _ratio_text(row.peak_memory),
                       "params": params_text(row), "params vs softmax": param_rule_text(row),
                       "runs": f"{row.runs}" + (f" ({row.diverged} diverged)" if row.diverged else "")})
        records.append(record)
    return pd.DataFrame(records)


def other_checkpoint_frame(rows: list[Row]) -> pd.DataFrame:
    """The secondary table: each row's accuracy at the checkpoint its protocol does not report."""
    tasks = ordered_tasks(task for row in rows for task in row.table_tasks)
    return pd.DataFrame([{"protocol": row.protocol, "attention": row.attention,
                          "checkpoint": "best_val" if row.checkpoint == "final" else "final",
                          **{t: row.other_cells[t].text() if t in row.other_cells else MISSING for t in tasks}}
                         for row in rows])
