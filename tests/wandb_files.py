"""Read the metrics an offline W&B run logged, straight from its binary ``run-<id>.wandb`` file.

wandb 0.31 writes offline runs only as this file (no summary JSON): a 7-byte header (":W&B", a
2-byte magic, a version byte) followed by a LevelDB-style log of 32 KiB blocks whose records
(checksum, length, type, payload) carry ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    position, pending = RECORD_HEADER, b""
    while position + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < RECORD_HEADER:
            position += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + RECORD_HEADER])
        payload = data[position + RECORD_HEADER:position + RECORD_HEADER + length]
        position += RECORD_HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + payload)
            pending = b""
            yield record
        else:
            pending += payload


def logged_history(run_dir: Path) -> list[dict]:
    """Every ``wandb.log`` call of the offline run under ``run_dir``, as {key: value} dicts."""
    files = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one offline W&B run file under {run_dir}, found {files}")
    records = _finished_records(files[0])
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def _finished_records(path: Path, timeout_s: float = 30.0) -> list:
    """The file's records once its run's ``exit`` record is there. The last history row is written
    just before ``exit``, at ``run.finish()``, by W&B's separate writer process; on a loaded machine
    a test once read the file without that row, so wait (bounded) for the run to be complete."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(iter_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def logged_run(run_dir: Path):
    """The offline run's ``RunRecord`` (id, project, group, job type, tags) under ``run_dir``."""
    files = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one offline W&B run file under {run_dir}, found {files}")
    return next(r.run for r in _finished_records(files[0]) if r.WhichOneof("record_type") == "run")
