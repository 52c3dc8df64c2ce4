"""The results store: one immutable JSON record per run, a table rebuilt from them, and the rule
that decides which records count.

    <results_dir>/records/<run_id>.json    written once, atomically, never modified
    <results_dir>/records/replaced/        records replaced by a newer run of the same (fingerprint, seed),
                                           each with a ``<run_id>.note`` saying by which run and when
    <results_dir>/results.csv              every record as a row (lra.result_record's column order);
                                           rebuilt under a lock after each run

Records are the source of truth; their fields are defined in ``lra.result_record``. Several runs
finishing at once each write their own file (unique run ids), then rebuild the table under an
``flock``, so no row is lost or interleaved. Readers (leaderboard, reproduction) read the records.
A run's record is stored before anything that could fail on other files: an unreadable record in
the folder is reported (path and reason) and left out of the table, never a reason to lose a run.

A seed is stored once: writing the finished record of a (cell, fingerprint, seed) that the folder
already holds (a rerun with ``checkpoint.resume=never``, a repeated launch) moves the other records
of that seed to ``records/replaced/`` with a note; a ``failed`` record replaces only older failed
ones (it stays visible beside a finished record, which still counts).
``write_record(..., keep_repeats=True)`` keeps everything, and the rule below still counts the
seed once.

Which records count (``comparable_runs``, the one rule the leaderboard and ``make reproduce`` share):

- runs are compared within a cell: (protocol, task, attention, variant), the variant being the
  settings that differ from the protocol's defaults;
- within a cell, only the newest fingerprint counts: after a kernel edit (or a data or setting
  change the variant does not show) the newest runs supersede the older ones, which are counted
  and listed as superseded, never pooled with them;
- a seed counts once: of several records of one (fingerprint, seed), the newest that finished
  (``ok`` or ``diverged``) is kept, a ``failed`` one only when none finished (a crashed rerun never
  hides a finished seed); the others are reported as repeats.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from lra.atomic_files import atomic_write_text, exclusive_lock
from lra.result_record import RecordError, newest_first_key, normalise, read_record, records_frame

log = logging.getLogger(__name__)

RECORDS = "records"
REPLACED = "replaced"
TABLE = "results.csv"


def new_run_id(task: str, attention: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{task}_{attention.replace('/', '_')}_s{seed}_{secrets.token_hex(3)}"


def write_record(results_dir: str | Path, record: dict, keep_repeats: bool = False) -> Path:
    """Store one run's record, replace older records of its (cell, fingerprint, seed) unless
    ``keep_repeats``, and refresh the table. Refuses to overwrite an existing record. Once the record
    is stored, nothing else in the folder (a bad record, a failed table write) can fail the call."""
    results_dir = Path(results_dir)
    normalise(record)  # refuses anything that is not a record
    path = results_dir / RECORDS / f"{record['run_id']}.json"
    try:
        atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n", exclusive=True)
    except FileExistsError:
        raise FileExistsError(f"result record {path} already exists; records are immutable") from None
    try:
        if not keep_repeats:
            replace_repeats(results_dir, record)
        rebuild_table(results_dir)
    except Exception as error:  # noqa: BLE001 - the run's record is stored; the table can be rebuilt later
        log.warning("stored %s, but could not update %s: %s (make leaderboard rebuilds it from the records)",
                    path, results_dir / TABLE, error)
    return path


def seed_key(record: dict) -> tuple | None:
    """What makes two records samples of the same seed: (cell, fingerprint, seed); None without a fingerprint."""
    if not record.get("fingerprint"):
        return None
    return (*cell_key(record), record["fingerprint"], record["seed"])


def replace_repeats(results_dir: str | Path, record: dict) -> list[Path]:
    """Move every other record of ``record``'s (cell, fingerprint, seed) but the newest to
    ``records/replaced/``, each with a note; returns the moved files."""
    results_dir = Path(results_dir)
    key = seed_key(record)
    if key is None:
        return []
    moved = []
    with exclusive_lock(results_dir / ".lock"):
        same = [(path, other) for path, other in _records_with_paths(results_dir) if seed_key(other) == key]
        if record.get("status") == "failed":  # a failed attempt never sets a finished record aside
            same = [(path, other) for path, other in same if other.get("status") == "failed"]
        if len(same) < 2:
            return []
        keep_path, kept = max(same, key=lambda item: counting_key(item[1]))
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for path, other in same:
            if path == keep_path:
                continue
            target = results_dir / RECORDS / REPLACED / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target.with_suffix(".note"),
                              f"{path.name}: replaced on {now} by {kept.get('run_id')} (same task, attention, "
                              f"variant, fingerprint {key[4]} and seed {key[5]})\n")
            os.replace(path, target)
            moved.append(target)
            log.warning("result record %s moved to %s: run %s replaces it (same fingerprint and seed)",
                        path, target, kept.get("run_id"))
    return moved


def _records_with_paths(results_dir: Path,
                        on_bad: Callable[[Path, str], None] | None = None) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted((results_dir / RECORDS).glob("*.json")):
        try:
            found.append((path, read_record(path)))
        except RecordError as error:
            (on_bad or _report_bad)(path, str(error))
    return found


def _report_bad(path: Path, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)


def read_records(results_dir: str | Path, on_bad: Callable[[Path, str], None] | None = None) -> list[dict]:
    """Every readable record of a results folder, normalised to the current schema (lra.result_record).
    An unreadable one is reported (``on_bad(path, reason)``; default: a warning) and skipped."""
    return [record for _, record in _records_with_paths(Path(results_dir), on_bad)]


def rebuild_table(results_dir: str | Path) -> Path:
    results_dir = Path(results_dir)
    with exclusive_lock(results_dir / ".lock"):
        records = read_records(results_dir)
        if records:  # no records, no table (an empty CSV would not parse)
            atomic_write_text(results_dir / TABLE, records_frame(records).to_csv(index=False))
    return results_dir / TABLE


@dataclasses.dataclass
class Selection:
    """``comparable_runs``' verdict on a list of records."""

    kept: list[dict]          # the records that count: one per (cell, seed), of the cell's newest fingerprint
    repeats: list[dict]       # older records of a (fingerprint, seed) already counted
    superseded: list[dict]    # records of an older fingerprint of their cell


def cell_key(record: dict) -> tuple[str, str, str, str]:
    return (record["protocol"], record["task"], record["attention"], record.get("variant") or "")


def counting_key(record: dict) -> tuple:
    """Which record of a (fingerprint, seed) counts, highest first: a finished one, then the newest."""
    return (record.get("status") != "failed", *newest_first_key(record))


def comparable_runs(records: list[dict]) -> Selection:
    """Apply the store's counting rule (module docstring) to normalised records."""
    cells: dict[tuple, list[dict]] = {}
    for record in records:
        cells.setdefault(cell_key(record), []).append(record)
    selection = Selection([], [], [])
    for members in cells.values():
        members = sorted(members, key=newest_first_key, reverse=True)
        current = members[0].get("fingerprint")
        seen: set = set()
        for record in sorted(members, key=counting_key, reverse=True):
            if record.get("fingerprint") != current:
                selection.superseded.append(record)
            elif record["seed"] in seen:
                selection.repeats.append(record)
            else:
                seen.add(record["seed"])
                selection.kept.append(record)
    return selection
