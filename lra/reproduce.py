"""Reproduce a published table: measured versus published, cell by cell.

    python -m lra.reproduce --list                          # the tables results/published/tables.yaml maps
    python -m lra.reproduce --table lra_table1 --dry-run    # what exists, what would run, how long
    python -m lra.reproduce --table skyformer_table1        # run what is missing, then compare
    python -m lra.reproduce --table lra_table1 --reuse-only # compare what exists, run nothing

A table's entry in ``results/published/tables.yaml`` names its CSV (published numbers with their
citation), the protocol, the seeds, the record fields a reused run must match, the Hydra overrides
for new runs, and two data mappings: paper rows -> our attention configs (``null`` = not
implemented here) and paper columns -> our task names. For every (model, task) cell it takes the
records of that attention, task and protocol under ``results/<protocol>/`` that the leaderboard
counts too (``lra.results.comparable_runs``: one record per seed, the cell's newest fingerprint) and
that ran exactly this table's settings (their ``settings_changed`` equal the table's overrides; older
records without it are matched by ``match``). Finished runs are measured; seeds with no finished or
diverged run are run through the same sweep entry point as ``make sweep`` (one multirun per task),
unless ``--reuse-only`` or ``--dry-run``. Cells the paper reports as FAIL are not run unless
``--include-fail``. ``--dry-run`` prints the plan (``lra.reproduce_plan``): model × task, runs and
steps, an estimate of device time, missing datasets and the commands, ready to paste.

The comparison uses the checkpoint the protocol reports (its ``test_checkpoint``). Per cell:
published, measured mean ± sample std over n seeds, difference (measured − published), and
"within spread": |difference| <= SPREAD × std of our seeds (SPREAD = 2 by default, about a 95 %
band of the seed distribution); it needs at least 2 seeds, otherwise "n/a". It is written to
``results/<protocol>/reproduce_<table>.{md,csv}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lra.atomic_files import atomic_write_text
from lra.leaderboard.markdown import markdown_table
from lra.leaderboard.table import CHECKPOINT_COLUMNS, MISSING
from lra.registry import registered_attentions
from lra.reproduce_plan import plan_lines, without_failed_cells
from lra.results import comparable_runs, read_records
from lra.run_identity import is_operational

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "published"
TABLES_FILE = PUBLISHED / "tables.yaml"
TASK_CONFIGS = REPO / "configs" / "task"
HPARAMS = REPO / "configs" / "hparams"


@dataclasses.dataclass
class ComparedCell:
    model: str
    attention: str | None
    task: str                      # our task name
    published: float | None        # None: no number in the paper (empty or FAIL)
    published_text: str
    accuracies: list[float]        # ours, in %, one per seed
    status: str                    # measured | missing | not implemented | task not available
    seeds: dict[int, float] = dataclasses.field(default_factory=dict)  # seed -> accuracy in %

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.accuracies)) if self.accuracies else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else None

    @property
    def difference(self) -> float | None:
        return None if self.mean is None or self.published is None else self.mean - self.published

    def within_spread(self, spread: float) -> bool | None:
        if self.difference is None or self.std is None:
            return None
        return abs(self.difference) <= spread * self.std


def load_tables(path: Path = TABLES_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def load_table(name: str, path: Path = TABLES_FILE) -> tuple[dict, pd.DataFrame]:
    tables = load_tables(path)
    if name not in tables:
        raise KeyError(f"{path}: no table '{name}'; mapped tables: {sorted(tables)}")
    spec = tables[name]
    for key in ("file", "protocol", "tasks", "models", "seeds"):
        if key not in spec:
            raise ValueError(f"{path}: table '{name}' has no '{key}' key")
    try:
        published = pd.read_csv(path.parent / spec["file"], dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path.parent / spec['file']}: not a readable CSV table ({error})") from None
    unknown = set(spec["models"]) - set(published["model"])
    if unknown:
        raise ValueError(f"{path}: table '{name}' maps models {sorted(unknown)} that {spec['file']} does not have")
    return spec, published


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "" (no value) or "FAIL"
        return None


def available_tasks(protocol: str) -> set[str]:
    """Tasks this checkout can run under ``protocol``: a task config and the protocol's hparams for it."""
    return {p.stem for p in TASK_CONFIGS.glob("*.yaml") if (HPARAMS / protocol / p.name).exists()}


def _override_settings(overrides) -> dict[str, object]:
    """Hydra overrides (``key=value``, ``+key=value``, ``~key``) -> {key: parsed value}, leaving out
    operational keys (logging, paths, ...) and config-group choices, which change no number."""
    parsed = {}
    for override in overrides:
        key, _, value = override.partition("=")
        removed = key.startswith("~")
        key = key.lstrip("+~")
        if "." not in key or is_operational(key):
            continue
        parsed[key] = "<removed>" if removed else yaml.safe_load(value)
    return parsed


def expected_settings(spec: dict, task: str, extra: list[str] = ()) -> dict[str, object]:
    """The settings a run of this table and task has beyond its protocol's defaults."""
    return _override_settings([*spec.get("overrides", []), *(spec.get("task_overrides") or {}).get(task, []),
                               *extra])


def _matching(records: list[dict], spec: dict, attention: str, task: str,
              extra: list[str] = ()) -> list[dict]:
    """The counted records (lra.results.comparable_runs) of this cell that ran this table's settings:
    their recorded ``settings_changed`` equal the table's overrides (records without it, written
    before it existed, are matched by the table's ``match`` fields alone)."""
    match, expected = spec.get("match") or {}, expected_settings(spec, task, extra)
    return [r for r in records
            if r.get("attention") == attention and r.get("task") == task and r.get("protocol") == spec["protocol"]
            and r["status"] != "failed" and all(r.get(k) == v for k, v in match.items())
            and (r.get("settings_changed") is None or _override_settings(r["settings_changed"]) == expected)]


def collect(spec: dict, published: pd.DataFrame, records: list[dict], tasks_here: set[str],
            attentions_here: set[str], extra: list[str] = ()) -> list[ComparedCell]:
    """Every (paper row, task column) cell with what the counted records hold for it."""
    cells = []
    for _, row in published.iterrows():
        model = row["model"]
        if model not in spec["models"]:
            continue
        attention = spec["models"][model]
        for column, task in spec["tasks"].items():
            cell = ComparedCell(model, attention, task, _number(row[column]), row[column] or MISSING, [], "missing")
            if attention is None:
                cell.status = "not implemented"
            elif attention not in attentions_here:
                raise ValueError(f"{TABLES_FILE}: model '{model}' maps to attention '{attention}', "
                                 f"which is not registered (configs/attention/{attention}.yaml)")
            elif task not in tasks_here:
                cell.status = "task not available"
            else:
                runs = [r for r in _matching(records, spec, attention, task, extra) if r["status"] == "ok"]
                by_seed = {}  # comparable_runs left one record per seed
                for record in runs:
                    column_name = CHECKPOINT_COLUMNS[record.get("test_checkpoint") or "final"]
                    by_seed[record["seed"]] = 100.0 * float(record[column_name])
                cell.seeds = by_seed
                cell.accuracies = [by_seed[s] for s in sorted(by_seed)]
                if by_seed:
                    cell.status = "measured" if len(by_seed) >= spec["seeds"] else "measured (fewer seeds)"
            cells.append(cell)
        if spec.get("average_over") and "avg" in row:
            cells.append(_average_cell(model, attention, row["avg"], [c for c in cells[-len(spec["tasks"]):]
                                                                      if c.task in set(spec["average_over"])]))
    return cells


def _average_cell(model: str, attention: str | None, published: str, cells: list[ComparedCell]) -> ComparedCell:
    """The paper's average column: ours is measured only when every averaged task is; its spread comes
    from per-seed averages over the seeds that every task has."""
    cell = ComparedCell(model, attention, "avg", _number(published), published or MISSING, [], "missing")
    if attention is None:
        cell.status = "not implemented"
    elif all(c.accuracies for c in cells):
        common = set.intersection(*(set(c.seeds) for c in cells))
        cell.accuracies = [float(np.mean([c.seeds[s] for c in cells])) for s in sorted(common)]
        cell.status = "measured" if cell.accuracies else "no seed common to all tasks"
    else:
        cell.status = "partial: not every task measured"
    return cell


def missing_runs(spec: dict, cells: list[ComparedCell], records: list[dict],
                 extra: list[str] = ()) -> dict[str, dict[str, list[int]]]:
    """task -> attention -> seeds still to run (seeds 0..seeds-1 without a finished or diverged record;
    a failed run is run again)."""
    plan: dict[str, dict[str, list[int]]] = {}
    for cell in cells:
        if cell.task == "avg" or cell.status in ("not implemented", "task not available"):
            continue
        have = {r["seed"] for r in _matching(records, spec, cell.attention, cell.task, extra)}
        seeds = [s for s in range(spec["seeds"]) if s not in have]
        if seeds:
            plan.setdefault(cell.task, {})[cell.attention] = seeds
    return plan


def sweep_commands(spec: dict, plan: dict[str, dict[str, list[int]]], extra: list[str]) -> list[list[str]]:
    """One multirun per (task, seed set): the attentions that need exactly those seeds."""
    commands = []
    for task, needs in sorted(plan.items()):
        groups: dict[tuple[int, ...], list[str]] = {}
        for attention, seeds in sorted(needs.items()):
            groups.setdefault(tuple(seeds), []).append(attention)
        for seeds, attentions in sorted(groups.items()):
            commands.append([sys.executable, "-m", "lra.train", "--multirun", f"task={task}",
                             f"protocol={spec['protocol']}", f"attention={','.join(attentions)}",
                             f"seed={','.join(map(str, seeds))}", *spec.get("overrides", []),
                             *(spec.get("task_overrides") or {}).get(task, []), "logger.wandb.job_type=reproduce",
                             *extra])
    return commands


def comparison_frame(cells: list[ComparedCell], spread: float) -> pd.DataFrame:
    def fmt(value, pattern="{:.2f}"):
        return MISSING if value is None else pattern.format(value)

    rows = []
    for cell in cells:
        within = cell.within_spread(spread)
        measured = MISSING if cell.mean is None else (
            f"{cell.mean:.2f}" + (f" ± {cell.std:.2f}" if cell.std is not None else "") + f" (n={len(cell.accuracies)})")
        rows.append({"model": cell.model, "attention": cell.attention or MISSING, "task": cell.task,
                     "published": cell.published_text, "measured": measured,
                     "difference": fmt(cell.difference, "{:+.2f}"),
                     "within spread": MISSING if cell.difference is None else
                     ("n/a (1 seed)" if within is None else "yes" if within else "no"),
                     "status": cell.status})
    return pd.DataFrame(rows)


def reproduce(table: str, results_root: Path = REPO / "results", *, reuse_only: bool = False, dry_run: bool = False,
              spread: float = 2.0, extra_overrides: list[str] = (), tables_file: Path = TABLES_FILE,
              echo=print, include_failed: bool = False,
              bench_root: Path = REPO / "results" / "bench") -> tuple[pd.DataFrame, list[list[str]]]:
    """Compare (after running what is missing unless reuse_only/dry_run); returns (comparison, commands)."""
    spec, published = load_table(table, tables_file)
    results_dir = Path(results_root) / spec["protocol"]
    attentions_here = {info["name"] for info in registered_attentions().values()} | set(registered_attentions())
    tasks_here = available_tasks(spec["protocol"])
    extra = list(extra_overrides)
    records = comparable_runs(read_records(results_dir)).kept
    cells = collect(spec, published, records, tasks_here, attentions_here, extra)
    plan = without_failed_cells(missing_runs(spec, cells, records, extra), cells, include_failed)
    commands = sweep_commands(spec, plan, [f"paths.results_dir={results_dir}", *extra])
    echo(f"{table}: {spec.get('citation', spec['file'])}")
    echo(f"protocol {spec['protocol']}, {spec['seeds']} seeds per cell, records from {results_dir}")
    if dry_run:
        from lra.bench.report import device_slug
        from lra.metrics import device_name

        task_overrides = {task: [*spec.get("overrides", []), *(spec.get("task_overrides") or {}).get(task, []),
                                 *extra] for task in plan}
        for line in plan_lines(spec, cells, plan, commands, records, device_name(),
                               Path(bench_root) / device_slug(), task_overrides, include_failed):
            echo(line)
    for command in [] if dry_run else commands:  # a dry run printed them with its plan
        echo(("would run: " if reuse_only else "running: ") + shlex.join(command))
    if commands and not (dry_run or reuse_only):
        for command in commands:
            result = subprocess.run(command, cwd=REPO, env=os.environ.copy())
            if result.returncode != 0:
                raise RuntimeError(f"reproduce: this sweep failed (exit {result.returncode}): {' '.join(command)}")
        records = comparable_runs(read_records(results_dir)).kept
        cells = collect(spec, published, records, tasks_here, attentions_here, extra)
    frame = comparison_frame(cells, spread)
    if not dry_run:
        echo(f"written: {write_comparison(frame, results_dir, table, spec, spread)} (and .csv)")
    return frame, commands


def write_comparison(frame: pd.DataFrame, results_dir: Path, table: str, spec: dict, spread: float) -> Path:
    text = (f"# Reproduction of {table}\n\n{spec.get('citation', spec['file'])}\n\n"
            f"Protocol `{spec['protocol']}`; test accuracy in % at the checkpoint the protocol reports; "
            f"{spec['seeds']} seeds per cell wanted. Difference = measured mean − published. Within spread: "
            f"|difference| ≤ {spread:g} × the sample std of our seeds (n/a with one seed). Published numbers: "
            f"`results/published/{spec['file']}`.\n\n" + markdown_table(frame))
    path = results_dir / f"reproduce_{table}.md"
    atomic_write_text(path, text)
    atomic_write_text(path.with_suffix(".csv"), frame.to_csv(index=False))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", help="a table of results/published/tables.yaml")
    parser.add_argument("--list", action="store_true", help="list the mapped tables")
    parser.add_argument("--results-root", default=str(REPO / "results"), help="folder of protocol folders")
    parser.add_argument("--reuse-only", action="store_true", help="compare existing records, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print what exists and what would run; write nothing")
    parser.add_argument("--include-fail", action="store_true", help="also run cells the paper reports as FAIL")
    parser.add_argument("--spread", type=float, default=2.0, help="within spread: |diff| <= SPREAD x seed std")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for new runs (e.g. logger=csv)")
    args = parser.parse_args(argv)
    if args.list or not args.table:
        for name, spec in load_tables().items():
            print(f"{name:20s} {spec['protocol']:16s} {spec.get('citation', '')}")
        return
    frame, _ = reproduce(args.table, Path(args.results_root), reuse_only=args.reuse_only, dry_run=args.dry_run,
                         spread=args.spread, extra_overrides=args.overrides, include_failed=args.include_fail)
    print(markdown_table(frame))


if __name__ == "__main__":
    main()
