"""The results store: one immutable JSON record per finished run, and a table rebuilt from them.

    <results_dir>/records/<run_id>.json    written once, atomically, never modified
    <results_dir>/results.csv              every record as a row; rebuilt under a lock after each run

Records are the source of truth. Several runs finishing at once each write their own file (unique
run ids), then rebuild the table under an ``flock``, so no row is lost or interleaved. Readers
(leaderboard, reproduction, reports) read the table or the records, never a run's internals.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pandas as pd

from lra.atomic_files import atomic_write_text, exclusive_lock

RECORDS = "records"
TABLE = "results.csv"


def new_run_id(task: str, attention: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{task}_{attention}_s{seed}_{secrets.token_hex(3)}"


def write_record(results_dir: str | Path, record: dict) -> Path:
    """Store one run's record and refresh the table. Refuses to overwrite an existing record."""
    results_dir = Path(results_dir)
    path = results_dir / RECORDS / f"{record['run_id']}.json"
    try:
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n",
                          exclusive=True)
    except FileExistsError:
        raise FileExistsError(f"result record {path} already exists; records are immutable") from None
    rebuild_table(results_dir)
    return path


def read_records(results_dir: str | Path) -> list[dict]:
    records = []
    for path in sorted((Path(results_dir) / RECORDS).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise ValueError(f"result record {path} is not valid JSON: {error}") from error
    return records


def records_frame(records: list[dict]) -> pd.DataFrame:
    """Flatten records into a frame; nested fields (configs, provenance) become JSON strings."""
    rows = [{key: json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
             for key, value in record.items()} for record in records]
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["task", "attention", "seed", "run_id"], kind="stable")
    return frame


def rebuild_table(results_dir: str | Path) -> Path:
    results_dir = Path(results_dir)
    with exclusive_lock(results_dir / ".lock"):
        records = read_records(results_dir)
        if records:  # no records, no table (an empty CSV would not parse)
            atomic_write_text(results_dir / TABLE, records_frame(records).to_csv(index=False))
    return results_dir / TABLE


def read_table(results_dir: str | Path) -> pd.DataFrame:
    path = Path(results_dir) / TABLE
    if not path.exists():
        raise FileNotFoundError(f"no results table at {path}: run a sweep first (make sweep TASK=listops)")
    return pd.read_csv(path)
