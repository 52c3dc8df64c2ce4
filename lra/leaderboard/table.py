"""The numbers behind the leaderboard: one row per attention x variant x protocol, one cell per task.

Rules (LRA, Tay et al. 2021, and the LRA README's apples-to-apples rule):

- Only comparable runs are pooled. Records are selected by ``lra.results.comparable_runs``: a row is
  (protocol, attention, variant), the variant being the settings that differ from the protocol's
  defaults (a row is labelled with them: ``linear [train.steps=200]``); in each cell only the newest
  fingerprint counts (older code or data is superseded, and counted) and a seed counts once (its
  newest record). ``n`` is the number of distinct seeds.
- A task cell is the test accuracy in %, mean and sample std over the seeds that finished, with the
  seed count. Which checkpoint is the headline is the protocol's rule, recorded in each result as
  ``test_checkpoint`` ("final" in the official LRA code, "best_val" in the PyTorch lineage); the
  other checkpoint is kept as a secondary table.
- Runs with ``status`` diverged (non-finite loss) or failed (the run raised) are left out of the
  means and counted apart; a cell whose runs all diverged or failed says so instead of a number.
- The average is over the tasks of the table: every task some attention ran under that protocol.
  A row missing a task gets a partial average over the tasks it has, marked as partial; a missing
  task never counts as zero.
- Speed and memory are ratios to softmax under the same protocol, task, device and cost-relevant
  settings (the variant without ``COST_NEUTRAL`` keys: a learning-rate grid is still compared with
  the default softmax), medians over seeds, per task and then averaged over the tasks both ran:
  speed = softmax step time / this step time (higher is faster); memory = this / softmax for XLA's
  compiled train-step memory and for the device allocator's peak (GPU only).
- Absolute costs sit beside the ratios (``cost_frame``): per task, the median step time and
  train-step memory over seeds, and the speed ratio's spread over seeds (softmax's median step time
  / each seed's step time: min–max).
- Provenance (``provenance_lines``): the devices, date range, harness commits and library versions of
  the counted records. Protocols whose accuracies mean nothing (``smoke``) get a banner.
- Parameters: the LRA rule allows a model at most 10 % more parameters than the baseline
  Transformer of the same task, with the same embedding size, hidden sizes and depth; the ratio to
  softmax is taken per task and its maximum is checked, and so are those sizes (``model_config``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from lra.digest import json_sha256
from lra.result_record import FIELD_NAMES
from lra.results import Selection, comparable_runs

TASK_ORDER = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
BASELINE = "softmax"
PARAMETER_RULE = 1.10  # LRA README: "at most 10% larger in parameters than the base Transformer"
FIXED_SIZES = ("emb_dim", "qkv_dim", "mlp_dim", "num_layers")  # LRA README: these may not change
CHECKPOINT_COLUMNS = {"final": "test_accuracy_final", "best_val": "test_accuracy_best_val"}
MISSING = "—"
VERSION_FIELDS = tuple(name for name in FIELD_NAMES if name.endswith("_version") and name != "schema_version")
# Settings that change neither step time, memory nor parameter count: ignored when a row looks for
# its softmax baseline (``attention.*`` knobs belong to one attention, softmax has none of them).
COST_NEUTRAL = ("attention.", "optimizer.", "quirks.", "train.steps=", "train.eval_every=", "train.train_limit=",
                "train.eval_limit=", "protocol.")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One task of one row: accuracy in % over the seeds that finished (None when none did)."""

    mean: float | None
    std: float | None
    seeds: int
    diverged: int
    diverged_at: tuple[int, ...] = ()    # the steps at which those runs diverged, where recorded
    failed: int = 0

    @property
    def missing(self) -> bool:
        return self.seeds == 0 and self.diverged == 0 and self.failed == 0

    def text(self) -> str:
        if self.missing:
            return MISSING
        steps = f" at step {', '.join(map(str, self.diverged_at))}" if self.diverged_at else ""
        if self.seeds == 0:
            total = self.diverged + self.failed
            parts = ([f"diverged ({self.diverged} of {total}{',' + steps if steps else ''})"] if self.diverged else []) + (
                [f"failed ({self.failed} of {total})"] if self.failed else [])
            return "; ".join(parts)
        spread = f" ± {self.std:.2f}" if self.seeds > 1 else ""
        note = (f", {self.diverged} diverged{steps}" if self.diverged else "") + (
            f", {self.failed} failed" if self.failed else "")
        return f"{self.mean:.2f}{spread} (n={self.seeds}{note})"


@dataclasses.dataclass(frozen=True)
class TaskCost:
    """One task of one row: absolute costs (medians over seeds) and the speed ratio's spread."""

    step_time_s: float | None
    step_bytes: float | None
    peak_bytes: float | None
    seeds: int
    speed: float | None = None                      # softmax median step time / this median
    speed_range: tuple[float, float] | None = None  # min, max over seeds of softmax median / seed's time
    memory: float | None = None                     # XLA step memory / softmax's

    def text(self) -> str:
        if self.step_time_s is None and self.step_bytes is None:
            return MISSING
        parts = [f"{format_ms(1000 * self.step_time_s)} ms/step" if self.step_time_s is not None else "step time —"]
        if self.speed is not None:
            spread = (f", {self.speed_range[0]:.2f}–{self.speed_range[1]:.2f}"
                      if self.speed_range and self.seeds > 1 else "")
            parts[-1] += f" ({self.speed:.2f}×{spread})"
        if self.step_bytes is not None:
            parts.append(f"{format_bytes(self.step_bytes)}" + (f" ({self.memory:.2f}×)" if self.memory else ""))
        if self.peak_bytes is not None:
            parts.append(f"peak {format_bytes(self.peak_bytes)}")
        return ", ".join(parts) + f" (n={self.seeds})"


def format_ms(value: float) -> str:
    """Three significant figures, never in exponent form: 220, 12.3, 0.412."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 \
        else f"{value:.3f}"


def format_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@dataclasses.dataclass
class Row:
    protocol: str
    attention: str
    checkpoint: str                      # the headline checkpoint: final | best_val
    cells: dict[str, Cell]               # task -> headline accuracy
    other_cells: dict[str, Cell]         # task -> the other checkpoint's accuracy
    table_tasks: list[str]               # the tasks of this protocol's table
    variant: str = ""                    # settings that differ from the protocol's defaults ('' = none)
    speed: float | None = None           # softmax step time / this, averaged over tasks
    speed_tasks: int = 0
    memory: float | None = None          # XLA train-step memory / softmax's
    peak_memory: float | None = None     # device peak memory / softmax's (GPU)
    params: tuple[int, int] | None = None  # (min, max) over tasks
    param_ratio: float | None = None     # max over tasks of params / softmax's params
    changed_sizes: tuple[str, ...] = ()  # FIXED_SIZES keys whose value differs from softmax's model
    runs: int = 0                        # records counted (one per seed and task)
    diverged: int = 0
    failed: int = 0
    repeats: int = 0                     # older records of a counted seed, left out
    superseded: int = 0                  # records of an older fingerprint, left out
    costs: dict = dataclasses.field(default_factory=dict)  # task -> TaskCost (finished runs, first device)

    @property
    def label(self) -> str:
        """The row's name: the attention, with its non-default settings in brackets (shortened past
        LABEL_SETTINGS of them to a variant id; ``variant_notes`` lists those in full)."""
        return f"{self.attention} [{short_variant(self.variant)}]" if self.variant else self.attention

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
        return not over_parameter_rule(self.param_ratio) and not self.changed_sizes


LABEL_SETTINGS = 3  # a row label shows at most this many settings in full


def variant_id(variant: str) -> str:
    return "v" + json_sha256(variant)[:6]


def short_variant(variant: str) -> str:
    """``a=1, b=2, c=3, d=4, e=5`` -> ``a=1, b=2, +3 more (v1a2b3c)``."""
    parts = variant.split(", ")
    if len(parts) <= LABEL_SETTINGS:
        return variant
    return f"{', '.join(parts[:LABEL_SETTINGS - 1])}, +{len(parts) - LABEL_SETTINGS + 1} more ({variant_id(variant)})"


def variant_notes(rows: list[Row]) -> list[tuple[str, str]]:
    """(variant id, full settings) of every shortened row label."""
    shortened = {row.variant for row in rows if row.variant and short_variant(row.variant) != row.variant}
    return sorted((variant_id(v), v) for v in shortened)


def over_parameter_rule(ratio: float) -> bool:
    """Whether a parameter ratio breaks the 10 % rule (compared exactly: 1.101 is over)."""
    return ratio > PARAMETER_RULE + 1e-12


def ordered_tasks(tasks) -> list[str]:
    tasks = set(tasks)
    return [t for t in TASK_ORDER if t in tasks] + sorted(tasks - set(TASK_ORDER))


def _check_checkpoint_rules(records: list[dict]) -> None:
    unknown = {r.get("test_checkpoint") or "final" for r in records} - set(CHECKPOINT_COLUMNS)
    if unknown:
        raise ValueError(f"result records name test_checkpoint {sorted(unknown)}; expected one of "
                         f"{sorted(CHECKPOINT_COLUMNS)} (configs/protocol/*.yaml protocol.test_checkpoint)")


def _accuracy(record: dict, checkpoint: str) -> float | None:
    value = record.get(CHECKPOINT_COLUMNS[checkpoint])
    return None if value is None or not np.isfinite(value) else 100.0 * float(value)


def _cell(runs: list[dict], checkpoint: str) -> Cell:
    accuracies = [a for a in (_accuracy(r, checkpoint) for r in runs if r["status"] == "ok") if a is not None]
    diverged = [r for r in runs if r["status"] == "diverged"]
    failed = sum(r["status"] == "failed" for r in runs)
    steps = tuple(sorted(int(r["diverged_at_step"]) for r in diverged if r.get("diverged_at_step") is not None))
    if not accuracies:
        return Cell(None, None, 0, len(diverged), steps, failed)
    std = float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None
    return Cell(float(np.mean(accuracies)), std, len(accuracies), len(diverged), steps, failed)


def cost_variant(record: dict) -> str:
    """The record's variant without the settings that do not change its cost (COST_NEUTRAL)."""
    changed = record.get("settings_changed")
    if changed is None:
        return record.get("variant") or ""
    return ", ".join(c for c in changed if not c.lstrip("+~").startswith(COST_NEUTRAL))


def _median(records: list[dict], field: str) -> float | None:
    values = [float(r[field]) for r in records if r.get(field) is not None and np.isfinite(r[field]) and r[field] > 0]
    return float(np.median(values)) if values else None


def _baselines(kept: list[dict]) -> dict[tuple, list[dict]]:
    """(protocol, task, device, cost variant) -> softmax's finished runs there."""
    baselines: dict[tuple, list[dict]] = {}
    for record in kept:
        if record["attention"] == BASELINE and record["status"] == "ok":
            key = (record["protocol"], record["task"], record.get("device"), cost_variant(record))
            baselines.setdefault(key, []).append(record)
    return baselines


def _ratio(runs: list[dict], baseline: list[dict], field: str, invert: bool) -> float | None:
    mine, theirs = _median(runs, field), _median(baseline, field)
    if mine is None or theirs is None:
        return None
    return theirs / mine if invert else mine / theirs


def leaderboard_rows(records: list[dict], selection: Selection | None = None) -> list[Row]:
    """Every (protocol, attention, variant) of the records as a Row, sorted by protocol then average.
    ``records``: normalised records (lra.results.read_records); ``selection``: their comparable_runs."""
    _check_checkpoint_rules(records)
    selection = comparable_runs(records) if selection is None else selection
    kept = selection.kept
    baselines = _baselines(kept)
    rows = []
    for protocol in sorted({r["protocol"] for r in kept}):
        of_protocol = [r for r in kept if r["protocol"] == protocol]
        tasks = ordered_tasks(r["task"] for r in of_protocol)
        checkpoints = [r.get("test_checkpoint") or "final" for r in of_protocol]
        checkpoint = max(sorted(set(checkpoints)), key=checkpoints.count)
        other = "best_val" if checkpoint == "final" else "final"
        groups: dict[tuple[str, str], list[dict]] = {}
        for record in of_protocol:
            groups.setdefault((record["attention"], record.get("variant") or ""), []).append(record)
        for (attention, variant), group in sorted(groups.items()):
            by_task = {task: [r for r in group if r["task"] == task] for task in tasks}
            dropped = [r for r in selection.repeats + selection.superseded
                       if (r["protocol"], r["attention"], r.get("variant") or "") == (protocol, attention, variant)]
            row = Row(protocol=protocol, attention=attention, variant=variant, checkpoint=checkpoint,
                      cells={t: _cell(runs, checkpoint) for t, runs in by_task.items()},
                      other_cells={t: _cell(runs, other) for t, runs in by_task.items()},
                      table_tasks=tasks, runs=len(group),
                      diverged=sum(r["status"] == "diverged" for r in group),
                      failed=sum(r["status"] == "failed" for r in group),
                      repeats=sum(r in selection.repeats for r in dropped),
                      superseded=sum(r in selection.superseded for r in dropped))
            _fill_costs(row, by_task, baselines)
            rows.append(row)
    return sorted(rows, key=lambda r: (r.protocol, -(r.average_tasks), -(r.average or -1.0), r.label))


def _fill_costs(row: Row, by_task: dict[str, list[dict]], baselines: dict[tuple, list[dict]]) -> None:
    """Speed, memory and parameter ratios to softmax (per task, then averaged), and the size check."""
    speed, memory, peak, params, changed = [], [], [], [], set()
    counts = [int(r["param_count"]) for runs in by_task.values() for r in runs if r.get("param_count") is not None]
    for task, runs in by_task.items():
        finished = [r for r in runs if r["status"] == "ok"]
        if finished:
            row.costs[task] = _task_cost(row.protocol, finished, baselines)
        for device in sorted({str(r.get("device")) for r in finished}):
            on_device = [r for r in finished if str(r.get("device")) == device]
            baseline = baselines.get((row.protocol, task, on_device[0].get("device"), cost_variant(on_device[0])), [])
            for values, field, invert in ((speed, "step_time_median_s", True), (memory, "xla_step_bytes", False),
                                          (peak, "device_peak_bytes", False)):
                ratio = _ratio(on_device, baseline, field, invert)
                if ratio is not None:
                    values.append(ratio)
        measured = [r for r in runs if r["status"] != "failed" and r.get("param_count")]
        baseline = [b for key, group in baselines.items() if key[:2] == (row.protocol, task)
                    and key[3] == (cost_variant(measured[0]) if measured else None) for b in group]
        ratio = _ratio(measured, baseline, "param_count", invert=False)
        if ratio is not None:
            params.append(ratio)
            mine = {k: {(r.get("model_config") or {}).get(k) for r in measured} - {None} for k in FIXED_SIZES}
            theirs = {k: {(b.get("model_config") or {}).get(k) for b in baseline} - {None} for k in FIXED_SIZES}
            changed |= {k for k in FIXED_SIZES if mine[k] and theirs[k] and mine[k] != theirs[k]}
    if speed:
        row.speed, row.speed_tasks = float(np.mean(speed)), len(speed)
    row.memory = float(np.mean(memory)) if memory else None
    row.peak_memory = float(np.mean(peak)) if peak else None
    row.params = (min(counts), max(counts)) if counts else None
    if params:
        row.param_ratio = float(np.max(params))
        row.changed_sizes = tuple(k for k in FIXED_SIZES if k in changed)


def _task_cost(protocol: str, finished: list[dict], baselines: dict[tuple, list[dict]]) -> TaskCost:
    """Absolute medians of one task's finished runs (on the device most of them ran on) and the
    speed ratio to softmax's median with its min–max over this row's seeds."""
    devices = [str(r.get("device")) for r in finished]
    device = max(sorted(set(devices)), key=devices.count)
    runs = [r for r in finished if str(r.get("device")) == device]
    baseline = baselines.get((protocol, runs[0]["task"], runs[0].get("device"), cost_variant(runs[0])), [])
    reference = _median(baseline, "step_time_median_s")
    per_seed = [reference / float(r["step_time_median_s"]) for r in runs
                if reference and r.get("step_time_median_s") and r["step_time_median_s"] > 0]
    return TaskCost(step_time_s=_median(runs, "step_time_median_s"), step_bytes=_median(runs, "xla_step_bytes"),
                    peak_bytes=_median(runs, "device_peak_bytes"), seeds=len(runs),
                    speed=_ratio(runs, baseline, "step_time_median_s", invert=True),
                    speed_range=(min(per_seed), max(per_seed)) if per_seed else None,
                    memory=_ratio(runs, baseline, "xla_step_bytes", invert=False))


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
    problems = ([f"over the {PARAMETER_RULE - 1:.0%} limit"] if over_parameter_rule(row.param_ratio) else []) + (
        [f"{', '.join(row.changed_sizes)} differ from softmax"] if row.changed_sizes else [])
    verdict = "; ".join(problems) or "ok"
    shown = f"{row.param_ratio:.2f}"
    if over_parameter_rule(row.param_ratio) and float(shown) <= PARAMETER_RULE:
        shown = f"{row.param_ratio:.4f}"  # never "1.10× (over ...)": show the digits that decide
    return f"{shown}× ({verdict})"


def params_text(row: Row) -> str:
    if row.params is None:
        return MISSING
    low, high = row.params
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def runs_text(row: Row) -> str:
    """Records counted, and what was counted apart or left out."""
    notes = [f"{n} {what}" for n, what in ((row.diverged, "diverged"), (row.failed, "failed"),
                                           (row.repeats, "repeated-seed records left out"),
                                           (row.superseded, "superseded records left out")) if n]
    return f"{row.runs}" + (f" ({', '.join(notes)})" if notes else "")


def leaderboard_frame(rows: list[Row]) -> pd.DataFrame:
    """The leaderboard as display text: protocol, attention, a column per task, average, ratios."""
    tasks = ordered_tasks(task for row in rows for task in row.table_tasks)
    records = []
    for row in rows:
        record = {"protocol": row.protocol, "attention": row.label}
        record.update({task: row.cells[task].text() if task in row.cells else MISSING for task in tasks})
        record.update({"average": average_text(row), "speed vs softmax": _ratio_text(row.speed),
                       "memory vs softmax": _ratio_text(row.memory),
                       "peak memory vs softmax": _ratio_text(row.peak_memory),
                       "params": params_text(row), "params vs softmax": param_rule_text(row),
                       "runs": runs_text(row)})
        records.append(record)
    return pd.DataFrame(records)


def other_checkpoint_frame(rows: list[Row]) -> pd.DataFrame:
    """The secondary table: each row's accuracy at the checkpoint its protocol does not report."""
    tasks = ordered_tasks(task for row in rows for task in row.table_tasks)
    return pd.DataFrame([{"protocol": row.protocol, "attention": row.label,
                          "checkpoint": "best_val" if row.checkpoint == "final" else "final",
                          **{t: row.other_cells[t].text() if t in row.other_cells else MISSING for t in tasks}}
                         for row in rows])


def cost_frame(rows: list[Row]) -> pd.DataFrame:
    """Absolute step time and memory per task beside the ratios to softmax: one cell per task,
    ``<ms>/step (<speed>×, <min>–<max> over seeds), <memory> (<ratio>×), peak <bytes> (n=<seeds>)``."""
    tasks = ordered_tasks(task for row in rows for task in row.table_tasks)
    return pd.DataFrame([{"protocol": row.protocol, "attention": row.label,
                          **{t: row.costs[t].text() if t in row.costs else MISSING for t in tasks}}
                         for row in rows])


def _span(values: list[str]) -> str:
    values = sorted(set(values))
    return MISSING if not values else values[0] if len(values) == 1 else f"{values[0]} … {values[-1]}"


def provenance_lines(records: list[dict]) -> list[str]:
    """Where the counted records come from: devices, dates, harness commits, library versions."""
    def values(field):
        return sorted({str(r[field]) for r in records if r.get(field) not in (None, "")})

    shas = values("git_sha")
    dirty = sum(bool(r.get("git_dirty")) for r in records)
    lines = [f"devices: {', '.join(values('device')) or MISSING}",
             f"dates (UTC): {_span([str(r['date'])[:10] for r in records if r.get('date')])}",
             f"harness commits: {', '.join(shas) or MISSING}"
             + (f" ({dirty} of {len(records)} records from a checkout with uncommitted changes)" if dirty else ""),
             "libraries: " + "; ".join(f"{field.removesuffix('_version')} {', '.join(values(field)) or MISSING}"
                                       for field in VERSION_FIELDS)]
    return lines
