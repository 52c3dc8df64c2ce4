"""The results store: one immutable JSON record per run, a table rebuilt from them, and the rule
that decides which records count.

    <results_dir>/records/<run_id>.json    written once, atomically, never modified
    <results_dir>/results.csv              every record as a row (lra.result_record's column order);
                                           rebuilt under a lock after each run

Records are the source of truth; their fields are defined in ``lra.result_record``. Several runs
finishing at once each write their own file (unique run ids), then rebuild the table under an
``flock``, so no row is lost or interleaved. Readers (leaderboard, reproduction) read the records.

Which records count (``comparable_runs``, the one rule the leaderboard and ``make reproduce`` share):

- runs are compared within a cell: (protocol, task, attention, variant), the variant being the
  settings that differ from the protocol's defaults;
- within a cell, only the newest fingerprint counts: after a kernel edit (or a data or setting
  change the variant does not show) the newest runs supersede the older ones, which are counted
  and listed as superseded, never pooled with them;
- a seed counts once: of several records of one (fingerprint, seed), the newest is kept and the
  older ones are reported as repeats.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from pathlib import Path

from lra.atomic_files import atomic_write_text, exclusive_lock
from lra.result_record import newest_first_key, normalise, read_record, records_frame

RECORDS = "records"
TABLE = "results.csv"


def new_run_id(task: str, attention: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{task}_{attention.replace('/', '_')}_s{seed}_{secrets.token_hex(3)}"


def write_record(results_dir: str | Path, record: dict) -> Path:
    """Store one run's record and refresh the table. Refuses to overwrite an existing record."""
    results_dir = Path(results_dir)
    normalise(record)  # refuses anything that is not a record
    path = results_dir / RECORDS / f"{record['run_id']}.json"
    try:
        atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n", exclusive=True)
    except FileExistsError:
        raise FileExistsError(f"result record {path} already exists; records are immutable") from None
    rebuild_table(results_dir)
    return path


def read_records(results_dir: str | Path) -> list[dict]:
    """Every record of a results folder, normalised to the current schema (lra.result_record)."""
    return [read_record(path) for path in sorted((Path(results_dir) / RECORDS).glob("*.json"))]


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
        for record in members:
            if record.get("fingerprint") != current:
                selection.superseded.append(record)
            elif record["seed"] in seen:
                selection.repeats.append(record)
            else:
                seen.add(record["seed"])
                selection.kept.append(record)
    return selection
