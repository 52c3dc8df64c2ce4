"""Tests for the results store (lra.results) and atomic writes (lra.atomic_files); the leaderboard is in
test_leaderboard.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from lra import result_record
from lra.atomic_files import atomic_write_text
from lra.results import RECORDS, TABLE, read_records, rebuild_table, write_record


def make_record(run_id, *, task="listops", attention="softmax", protocol="lra_official", seed=0,
                final=0.5, best_val=0.5, step_time=0.1, xla_bytes=1_000_000, params=1234, device="cpu",
                settings_changed=(), fingerprint=None, date="2026-01-01T00:00:00+00:00", **extra):
    """A schema record (lra.result_record) of a finished run; ``settings_changed`` makes it a variant,
    and its fingerprint defaults to one per (protocol, task, attention, variant)."""
    changed = list(settings_changed)
    variant = ", ".join(changed)
    extra.setdefault("status", "ok")
    return result_record.make_record(
        run_id=run_id, task=task, attention=attention, protocol=protocol, seed=seed, variant=variant,
        settings_changed=changed, fingerprint=fingerprint or f"fp-{protocol}-{task}-{attention}-{variant}",
        test_accuracy_final=final, test_accuracy_best_val=best_val, step_time_median_s=step_time,
        xla_step_bytes=xla_bytes, param_count=params, device=device, date=date, **extra)


def _leftovers(directory: Path) -> list[str]:
    """Temporary files of atomic writes left in a directory."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- #
# write_record / read_table
# --------------------------------------------------------------------------- #


def read_table(results_dir: Path) -> pd.DataFrame:
    return pd.read_csv(results_dir / TABLE)


def test_write_record_writes_record_and_table_row(tmp_path):
    record = make_record("run-a", seed=3, final=0.375, model_config={"emb_dim": 32, "layers": [1, 2]})
    path = write_record(tmp_path, record)
    assert path == tmp_path / RECORDS / "run-a.json"
    assert json.loads(path.read_text()) == record
    table = read_table(tmp_path)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["run_id"] == "run-a" and row["seed"] == 3 and row["test_accuracy_final"] == 0.375
    assert json.loads(row["model_config"]) == {"emb_dim": 32, "layers": [1, 2]}  # nested fields as JSON text
    assert read_records(tmp_path) == [record]


def test_second_write_of_same_run_id_is_refused(tmp_path):
    first = make_record("run-a", final=0.25)
    write_record(tmp_path, first)
    before = (tmp_path / RECORDS / "run-a.json").read_bytes()
    with pytest.raises(FileExistsError, match="run-a"):
        write_record(tmp_path, make_record("run-a", final=0.99))
    assert (tmp_path / RECORDS / "run-a.json").read_bytes() == before
    table = read_table(tmp_path)
    assert table["run_id"].tolist() == ["run-a"] and table["test_accuracy_final"].tolist() == [0.25]


def test_table_accumulates_rows_sorted(tmp_path):
    write_record(tmp_path, make_record("r2", attention="softmax", seed=1))
    write_record(tmp_path, make_record("r1", attention="linear", seed=0))
    write_record(tmp_path, make_record("r3", attention="softmax", seed=0))
    table = read_table(tmp_path)
    assert table["run_id"].tolist() == ["r1", "r3", "r2"]  # by task, attention, seed


# --------------------------------------------------------------------------- #
# concurrency
# --------------------------------------------------------------------------- #

N_PROCESSES = 8
RECORDS_PER_PROCESS = 4


def _concurrent_writer(results_dir: str, worker: int, barrier) -> None:
    barrier.wait(timeout=60)  # all processes start writing at the same moment
    for i in range(RECORDS_PER_PROCESS):
        write_record(results_dir, make_record(f"w{worker}-r{i}", attention=f"att{worker}", seed=i,
                                              final=worker + i / 10))


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCESSES)
    processes = [ctx.Process(target=_concurrent_writer, args=(str(tmp_path), w, barrier))
                 for w in range(N_PROCESSES)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    for p in processes:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in processes] == [0] * N_PROCESSES

    expected = {f"w{w}-r{i}" for w in range(N_PROCESSES) for i in range(RECORDS_PER_PROCESS)}
    files = {p.stem for p in (tmp_path / RECORDS).glob("*.json")}
    assert files == expected
    for name in expected:
        record = json.loads((tmp_path / RECORDS / f"{name}.json").read_text())
        assert record["run_id"] == name
    table = read_table(tmp_path)
    assert len(table) == len(expected)
    assert sorted(table["run_id"]) == sorted(expected)  # no loss, no duplicates
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / RECORDS) == []
    # the table is exactly what a rebuild from the records gives
    assert pd.read_csv(rebuild_table(tmp_path)).equals(table)


# --------------------------------------------------------------------------- #
# atomic_write_text
# --------------------------------------------------------------------------- #


def test_atomic_write_creates_parents_and_overwrites(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(target, "one\n")
    assert target.read_text() == "one\n"
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_atomic_write_failure_at_fsync_or_replace_keeps_old_content(tmp_path, monkeypatch, step):
    target = tmp_path / "out.txt"
    target.write_text("old content\n")

    def boom(*args, **kwargs):
        raise OSError(f"{step} failed")

    monkeypatch.setattr(os, step, boom)
    with pytest.raises(OSError, match=f"{step} failed"):
        atomic_write_text(target, "new content\n")
    monkeypatch.undo()
    assert target.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp file left


def test_atomic_write_failure_mid_write_keeps_old_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old content\n")
    # a lone surrogate cannot be encoded: the write itself raises, after the temp file was opened
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "x" * 100_000 + "\ud800" + "tail")
    assert target.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_failure_on_new_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError("nope")))
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "new.txt", "content")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_write_gives_normal_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
        atomic_write_text(tmp_path / RECORDS / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == mode  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / RECORDS / "r.json").stat().st_mode) == mode


def test_record_files_are_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_record(tmp_path, make_record("perm"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / TABLE).stat().st_mode) == 0o644


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_atomic_write_does_not_leak_fd_when_chmod_fails(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("chmod not supported here")

    before = _open_fds()
    monkeypatch.setattr(os, "chmod", refuse)
    for _ in range(5):
        with pytest.raises(PermissionError):
            atomic_write_text(tmp_path / "out.txt", "x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    assert _open_fds() == before


def test_table_columns_follow_the_schema_in_order_with_types(tmp_path):
    write_record(tmp_path, make_record("r1", seed=2, params=1234, git_dirty=True,
                                       optimizer_config={"b1": 0.9}))
    write_record(tmp_path, make_record("r2", status="failed", error="ValueError: boom", final=None, best_val=None))
    table = read_table(tmp_path)
    assert list(table.columns[:8]) == ["run_id", "protocol", "task", "attention", "variant", "seed", "fingerprint",
                                       "status"]
    assert list(table.columns) == list(result_record.FIELD_NAMES)
    assert str(table["seed"].dtype) == "int64" and str(table["param_count"].dtype) == "int64"
    assert table["run_id"].tolist() == ["r2", "r1"]  # sorted by seed within the cell
    assert table["test_accuracy_final"].isna().tolist() == [True, False]
    assert table.loc[0, "error"] == "ValueError: boom"
    assert json.loads(table.loc[1, "optimizer_config"]) == {"b1": 0.9}
    typed = result_record.records_frame(read_records(tmp_path))
    assert str(typed["git_dirty"].dtype) == "boolean" and str(typed["seed"].dtype) == "Int64"
