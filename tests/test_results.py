"""Tests for the results store (lra.results), atomic writes (lra.atomic_files) and the leaderboard."""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import stat
from pathlib import Path

import pandas as pd
import pytest

from lra.atomic_files import atomic_write_text
from lra.results import RECORDS, TABLE, read_records, read_table, rebuild_table, write_record


def make_record(run_id, *, task="listops", attention="softmax", protocol="lra_official", seed=0,
                final=0.5, best_val=0.5, step_time=0.1, xla_bytes=1_000_000, params=1234, device="cpu",
                **extra):
    record = {
        "run_id": run_id,
        "task": task,
        "attention": attention,
        "protocol": protocol,
        "seed": seed,
        "test_accuracy_final": final,
        "test_accuracy_best_val": best_val,
        "step_time_median_s": step_time,
        "xla_step_bytes": xla_bytes,
        "param_count": params,
        "device": device,
    }
    record.update(extra)
    return record


def _leftovers(directory: Path) -> list[str]:
    """Temporary files of atomic writes left in a directory."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- #
# write_record / read_table
# --------------------------------------------------------------------------- #


def test_write_record_writes_record_and_table_row(tmp_path):
    record = make_record("run-a", seed=3, final=0.375, config={"lr": 0.05, "layers": [1, 2]})
    path = write_record(tmp_path, record)
    assert path == tmp_path / RECORDS / "run-a.json"
    assert json.loads(path.read_text()) == record
    table = read_table(tmp_path)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["run_id"] == "run-a" and row["seed"] == 3 and row["test_accuracy_final"] == 0.375
    assert json.loads(row["config"]) == {"lr": 0.05, "layers": [1, 2]}  # nested fields as JSON text
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


def test_read_table_on_empty_dir_is_helpful(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_table(tmp_path)
    message = str(info.value)
    assert str(tmp_path / TABLE) in message
    assert "sweep" in message  # tells the user how to produce one


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


# --------------------------------------------------------------------------- #
# leaderboard
# --------------------------------------------------------------------------- #

SOFTMAX_LISTOPS = [  # seed, final, best_val, step_time, bytes
    (0, 0.40, 0.41, 0.20, 4_000_000),
    (1, 0.45, 0.47, 0.24, 4_000_000),
]
LINEAR_LISTOPS = [
    (0, 0.36, 0.37, 0.10, 1_000_000),
    (1, 0.38, 0.35, 0.14, 1_000_000),
]

PERFORMER_LISTOPS = [(0, 0.30, 0.30), (1, 0.32, 0.30), (2, 0.31, 0.90)]  # seed, final, step_time


@pytest.fixture()
def leaderboard_dir(tmp_path):
    n = 0

    def add(**kw):
        nonlocal n
        n += 1
        write_record(tmp_path, make_record(f"run{n:02d}", **kw))

    for attention, runs, params in (("softmax", SOFTMAX_LISTOPS, 1000), ("linear", LINEAR_LISTOPS, 1200)):
        for seed, final, best, step, nbytes in runs:
            add(attention=attention, seed=seed, final=final, best_val=best, step_time=step, xla_bytes=nbytes,
                params=params)
    # text: softmax and linear ran it (one seed each); "performer" did not
    add(task="text", attention="softmax", final=0.60, best_val=0.61, step_time=0.50, xla_bytes=8_000_000,
        params=2000)
    add(task="text", attention="linear", final=0.58, best_val=0.59, step_time=0.25, xla_bytes=2_000_000,
        params=2200)
    for seed, final, step in PERFORMER_LISTOPS:  # 3 seeds: the median step time is not the mean
        add(attention="performer", seed=seed, final=final, best_val=final, step_time=step, xla_bytes=2_000_000,
            params=5000)
    # another protocol with no softmax baseline
    add(attention="linear", protocol="pytorch_lineage", final=0.5, best_val=0.5, step_time=0.1, params=999)
    return tmp_path


def _pct_mean_std(values):
    pct = [v * 100 for v in values]
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f} (n={len(pct)})"


def _rows(frame):
    return {(r["protocol"], r["attention"]): r for r in frame.to_dict("records")}


def test_leaderboard_frame(leaderboard_dir):
    from lra.leaderboard import leaderboard_frame

    frame = leaderboard_frame(read_table(leaderboard_dir))
    rows = _rows(frame)
    assert set(rows) == {("lra_official", "softmax"), ("lra_official", "linear"),
                         ("lra_official", "performer"), ("pytorch_lineage", "linear")}
    soft, lin, perf = (rows[("lra_official", a)] for a in ("softmax", "linear", "performer"))

    # task columns in LRA order, test@final and test@best-val for each
    task_cols = [c for c in frame.columns if "test@" in c and not c.startswith("avg")]
    assert task_cols == ["listops test@final", "listops test@best-val", "text test@final", "text test@best-val"]

    # mean ± sample std over 2 seeds, in percent
    assert soft["listops test@final"] == _pct_mean_std([r[1] for r in SOFTMAX_LISTOPS]) == "42.50 ± 3.54 (n=2)"
    assert soft["listops test@best-val"] == _pct_mean_std([r[2] for r in SOFTMAX_LISTOPS])
    assert lin["listops test@final"] == _pct_mean_std([r[1] for r in LINEAR_LISTOPS])
    assert lin["listops test@best-val"] == _pct_mean_std([r[2] for r in LINEAR_LISTOPS])
    assert soft["text test@final"] == "60.00 (n=1)"

    # a task the attention did not run is missing, not zero
    assert perf["text test@final"] == "–" and perf["text test@best-val"] == "–"
    assert perf["listops test@final"] == _pct_mean_std([r[1] for r in PERFORMER_LISTOPS]) == "31.00 ± 1.00 (n=3)"
    assert perf["avg test@final"] == "–"
    assert soft["avg test@final"] == f"{(42.5 + 60.0) / 2:.2f}"
    assert lin["avg test@final"] == f"{(37.0 + 58.0) / 2:.2f}"

    # speed = softmax median step time / this median step time, averaged over the tasks both ran
    soft_listops = statistics.median(r[3] for r in SOFTMAX_LISTOPS)
    lin_listops = statistics.median(r[3] for r in LINEAR_LISTOPS)
    assert soft["speed vs softmax"] == "1.00×"
    expected_linear_speed = ((soft_listops / lin_listops) + (0.50 / 0.25)) / 2
    assert lin["speed vs softmax"] == f"{expected_linear_speed:.2f}×" == "1.92×"  # (0.22 / 0.12 + 0.50 / 0.25) / 2
    assert perf["speed vs softmax"] == f"{soft_listops / 0.30:.2f}×" == "0.73×"  # median 0.30, not mean 0.50
    # memory = this / softmax
    assert soft["memory vs softmax"] == "1.00×"
    assert lin["memory vs softmax"] == f"{(0.25 + 0.25) / 2:.2f}×"
    assert perf["memory vs softmax"] == "0.50×"
    # no softmax under that protocol: no ratio, rather than a ratio to another protocol's softmax
    other = rows[("pytorch_lineage", "linear")]
    assert other["speed vs softmax"] == "–" and other["memory vs softmax"] == "–"

    assert soft["runs"] == 3 and lin["runs"] == 3 and perf["runs"] == 3
    assert soft["params"] == "1,000" and perf["params"] == "5,000"


def test_leaderboard_ratios_need_the_same_device(tmp_path):
    from lra.leaderboard import leaderboard_frame

    write_record(tmp_path, make_record("a", attention="softmax", step_time=0.2, device="gpu"))
    write_record(tmp_path, make_record("b", attention="linear", step_time=0.1, device="cpu"))
    rows = _rows(leaderboard_frame(read_table(tmp_path)))
    assert rows[("lra_official", "linear")]["speed vs softmax"] == "–"
    assert rows[("lra_official", "softmax")]["speed vs softmax"] == "1.00×"


def test_write_leaderboard_writes_markdown(leaderboard_dir):
    from lra.leaderboard import LEADERBOARD_FILE, write_leaderboard

    path, text, frame = write_leaderboard(leaderboard_dir)
    for protocol, attention in zip(frame["protocol"], frame["attention"]):  # the frame is what was written
        assert f"| {protocol} | {attention} |" in text
    assert path == leaderboard_dir / LEADERBOARD_FILE
    assert path.read_text() == text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| protocol"))
    assert "listops test@final" in header and "speed vs softmax" in header
    for protocol, attention in (("lra_official", "softmax"), ("lra_official", "linear"),
                                ("lra_official", "performer"), ("pytorch_lineage", "linear")):
        matching = [line for line in lines if line.startswith(f"| {protocol} | {attention} |")]
        assert len(matching) == 1, (protocol, attention)
    softmax_line = next(line for line in lines if line.startswith("| lra_official | softmax |"))
    assert "42.50 ± 3.54 (n=2)" in softmax_line
    n_columns = header.count("|")
    assert all(line.count("|") == n_columns for line in lines if line.startswith("| lra_official"))


def test_write_leaderboard_on_empty_dir_raises(tmp_path):
    from lra.leaderboard import write_leaderboard

    with pytest.raises(FileNotFoundError, match="results.csv"):
        write_leaderboard(tmp_path)
    assert not (tmp_path / "leaderboard.md").exists()
