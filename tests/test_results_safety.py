"""A results folder holds one record per (fingerprint, seed), and one bad file never costs a run its record."""

from __future__ import annotations

import json
import logging

import pandas as pd

from lra.leaderboard.pages import write_leaderboard
from lra.results import RECORDS, REPLACED, TABLE, comparable_runs, read_records, write_record
from tests.test_results import make_record


def test_a_rerun_of_the_same_seed_replaces_the_older_record_with_a_note(tmp_path, caplog):
    write_record(tmp_path, make_record("old", seed=0, final=0.10, date="2026-01-01T00:00:00+00:00"))
    write_record(tmp_path, make_record("other-seed", seed=1, date="2026-01-01T00:00:00+00:00"))
    with caplog.at_level(logging.WARNING, logger="lra.results"):
        write_record(tmp_path, make_record("new", seed=0, final=0.90, date="2026-01-02T00:00:00+00:00"))
    assert sorted(r["run_id"] for r in read_records(tmp_path)) == ["new", "other-seed"]
    replaced = tmp_path / RECORDS / REPLACED
    assert json.loads((replaced / "old.json").read_text())["run_id"] == "old"
    assert "replaced on" in (replaced / "old.note").read_text() and "by new" in (replaced / "old.note").read_text()
    assert "old.json moved to" in caplog.text
    assert sorted(pd.read_csv(tmp_path / TABLE)["run_id"]) == ["new", "other-seed"]
    # an older record arriving later (a finished run's record copied into this store) is the one set aside
    write_record(tmp_path, make_record("older", seed=0, date="2025-12-01T00:00:00+00:00"))
    assert sorted(r["run_id"] for r in read_records(tmp_path)) == ["new", "other-seed"]
    assert (replaced / "older.json").is_file()


def test_keep_repeats_keeps_both_and_still_counts_the_seed_once(tmp_path):
    write_record(tmp_path, make_record("a", seed=0, date="2026-01-01T00:00:00+00:00"))
    write_record(tmp_path, make_record("b", seed=0, date="2026-01-02T00:00:00+00:00"), keep_repeats=True)
    records = read_records(tmp_path)
    assert len(records) == 2
    assert [r["run_id"] for r in comparable_runs(records).kept] == ["b"]


def test_other_fingerprints_and_variants_are_not_replaced(tmp_path):
    write_record(tmp_path, make_record("a", seed=0))
    write_record(tmp_path, make_record("b", seed=0, fingerprint="fp-edited-kernel"))
    write_record(tmp_path, make_record("c", seed=0, settings_changed=["train.steps=10"]))
    assert len(read_records(tmp_path)) == 3


def test_a_bad_record_is_reported_and_skipped_and_never_fails_a_run(tmp_path, caplog):
    write_record(tmp_path, make_record("good", seed=0))
    (tmp_path / RECORDS / "hand-edited.json").write_text("[1, 2]")
    (tmp_path / RECORDS / "truncated.json").write_text('{"run_id": "x"')
    with caplog.at_level(logging.WARNING):
        path = write_record(tmp_path, make_record("mine", seed=1))  # the run's own record is stored
        records = read_records(tmp_path)
    assert path.is_file() and sorted(r["run_id"] for r in records) == ["good", "mine"]
    assert "hand-edited.json" in caplog.text and "must be a JSON object" in caplog.text
    assert "truncated.json" in caplog.text and "unreadable" in caplog.text
    assert sorted(pd.read_csv(tmp_path / TABLE)["run_id"]) == ["good", "mine"]


def test_a_table_write_that_fails_keeps_the_record_and_the_leaderboard_rebuilds_the_csv(tmp_path, monkeypatch):
    import lra.results as results

    write_record(tmp_path, make_record("first", seed=0))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results, "rebuild_table", disk_full)
    write_record(tmp_path, make_record("second", seed=1))  # no exception: the record is what matters
    monkeypatch.undo()
    assert sorted(pd.read_csv(tmp_path / TABLE)["run_id"]) == ["first"]  # stale
    write_leaderboard(tmp_path, plots=False)
    assert sorted(pd.read_csv(tmp_path / TABLE)["run_id"]) == ["first", "second"]


def test_a_full_disk_names_the_path(tmp_path, monkeypatch):
    import errno
    import os

    import pytest

    from lra.atomic_files import atomic_write_text
    from lra.run_logging import CsvMetricsWriter

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"\[Errno 28\] No space left on device: '.*records/r\.json'") as raised:
        atomic_write_text(tmp_path / "records" / "r.json", "{}")
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    writer = CsvMetricsWriter(tmp_path / "run")
    writer._file.flush = lambda: full()
    with pytest.raises(OSError, match=r"No space left on device: '.*run/metrics\.csv'"):
        writer.log(1, "train", {"loss": 1.0})


def test_a_hand_edited_results_csv_is_never_read_and_is_rebuilt(tmp_path):
    write_record(tmp_path, make_record("a", seed=0))
    (tmp_path / TABLE).write_text('run_id,task\n"unclosed,quote\nx,y,z,w\n')
    write_record(tmp_path, make_record("b", seed=1))
    assert sorted(pd.read_csv(tmp_path / TABLE)["run_id"]) == ["a", "b"]


def test_reproduce_and_the_leaderboard_count_the_same_record_of_a_repeated_seed(tmp_path, monkeypatch):
    import lra.reproduce as reproduce_module
    from lra.leaderboard.table import leaderboard_frame, leaderboard_rows

    monkeypatch.setattr(reproduce_module, "available_tasks", lambda protocol: {"listops"})
    official = tmp_path / "lra_official"
    for run_id, accuracy, date in (("a-old", 10.0, "2026-01-01"), ("b-new", 30.0, "2026-01-02")):
        write_record(official, make_record(run_id, seed=0, final=accuracy / 100, best_val=0.0,
                                           date=f"{date}T00:00:00+00:00"), keep_repeats=True)
    frame, _ = reproduce_module.reproduce("lra_table1", tmp_path, dry_run=True, echo=lambda *a: None)
    (cell,) = [r for r in frame.to_dict("records") if (r["attention"], r["task"]) == ("softmax", "listops")]
    assert cell["measured"].startswith("30.00") and "(n=1)" in cell["measured"]
    records = read_records(official)
    (row,) = leaderboard_frame(leaderboard_rows(records, comparable_runs(records))).to_dict("records")
    assert "30.00" in str(row["listops"]) and "10.00" not in str(row["listops"])


def test_a_damaged_published_table_names_its_file(tmp_path):
    import pytest
    import yaml

    from lra.reproduce import load_table

    (tmp_path / "t.csv").write_text("model,listops\nTransformer,36.37\nLinear,16.13,1,2\n")
    (tmp_path / "tables.yaml").write_text(yaml.safe_dump(
        {"t": {"file": "t.csv", "protocol": "lra_official", "tasks": {"listops": "listops"},
               "models": {"Transformer": "softmax"}, "seeds": 3}}))
    with pytest.raises(ValueError, match=r"t\.csv: not a readable CSV table .*line 3"):
        load_table("t", tmp_path / "tables.yaml")


def test_a_failed_rerun_never_hides_a_finished_seed(tmp_path):
    write_record(tmp_path, make_record("ok-run", seed=0, final=0.4, date="2026-01-01T00:00:00+00:00"))
    write_record(tmp_path, make_record("crash-1", seed=0, status="failed", date="2026-01-02T00:00:00+00:00"))
    write_record(tmp_path, make_record("crash-2", seed=0, status="failed", date="2026-01-03T00:00:00+00:00"))
    records = read_records(tmp_path)
    assert sorted(r["run_id"] for r in records) == ["crash-2", "ok-run"]  # the older failure is set aside
    assert [r["run_id"] for r in comparable_runs(records).kept] == ["ok-run"]
    write_record(tmp_path, make_record("ok-rerun", seed=0, final=0.5, date="2026-01-04T00:00:00+00:00"))
    assert [r["run_id"] for r in read_records(tmp_path)] == ["ok-rerun"]
