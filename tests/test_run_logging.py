"""What a run shows: W&B placement (project, id, group, tags), metrics.csv columns, the progress
lines in a log file, the one-line run summary and the end-of-sweep pointers."""

from __future__ import annotations

import logging

import pytest

from lra.run_logging import (METRIC_COLUMNS, CsvMetricsWriter, RunProgress, run_costs, run_summary_line,
                             wandb_run_options)
from lra.sweep import sweep_pointers

PLACE = dict(project="lra", protocol="lra_official", task="listops", attention="performer", seed=1,
             fingerprint="0123456789abcdef" * 4, settings_changed=["train.steps=100"], sweep_id="20260101-000000-abc")


def test_wandb_run_options_place_a_run():
    options = wandb_run_options(**PLACE)
    assert options["project"] == "lra" and options["group"] == PLACE["sweep_id"] and options["job_type"] == "train"
    assert {"protocol:lra_official", "task:listops", "attention:performer", "seed:1",
            "train.steps=100"} <= set(options["tags"])
    assert "smoke" not in options["tags"]
    # the id is the run's identity: the same for a rerun, another one for another seed or fingerprint
    assert wandb_run_options(**PLACE)["id"] == options["id"]
    assert wandb_run_options(**{**PLACE, "seed": 2})["id"] != options["id"]
    assert wandb_run_options(**{**PLACE, "fingerprint": "f" * 64})["id"] != options["id"]
    assert wandb_run_options(**{**PLACE, "sweep_id": None})["id"] == options["id"]  # not the sweep's
    assert all(c.isalnum() or c in "_.-" for c in options["id"])
    smoke = wandb_run_options(**{**PLACE, "protocol": "smoke", "settings_changed": None})
    assert smoke["project"] == "lra-smoke" and {"smoke", "settings:unknown"} <= set(smoke["tags"])
    with pytest.raises(ValueError, match="job_type"):
        wandb_run_options(**PLACE, job_type="eval")


def test_metrics_csv_has_a_column_for_every_metric(tmp_path):
    writer = CsvMetricsWriter(tmp_path)
    writer.log(2, "train", {"loss": 1.5, "accuracy": 0.25, "grad_norm": 3.0, "learning_rate": 0.1,
                            "step_time_s": 0.01, "examples_per_s": 800.0})
    writer.log(6, "run", run_costs({"compile_time_s": 1.2, "xla_step_bytes": 4096, "device_peak_bytes": None},
                                   wall_time_s=9.5))
    with pytest.raises(KeyError, match="no metrics.csv column"):
        writer.log(3, "train", {"loss": 1.0, "made_up": 2.0})
    writer.close()
    header, train, costs = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header.split(",") == list(METRIC_COLUMNS)
    row = dict(zip(METRIC_COLUMNS, train.split(",")))
    assert row["grad_norm"] == "3.0"
    cost = dict(zip(METRIC_COLUMNS, costs.split(",")))
    assert cost["split"] == "run" and cost["xla_step_bytes"] == "4096" and cost["wall_time_s"] == "9.5"
    assert cost["device_peak_bytes"] == ""  # None is left out, not written as 0


def test_progress_in_a_log_file_is_plain_lines(caplog):
    caplog.set_level(logging.INFO, logger="lra.run_logging")
    with RunProgress("listops/softmax seed 0", 20, enabled=True, interactive=False, every_s=3600) as update:
        update(2, {"phase": "training", "loss": 2.0, "val": -1.0})   # within every_s of the first line: quiet
        update(4, {"phase": "validating"})                          # a phase change always shows
        update(4, {"phase": "validating", "batch": (1, 3)})         # batches of a pass: not a phase change
        update(10, {"phase": "testing", "batch": (1, 2)})
        update(14, {"phase": "timing host overhead"})
        update(20, {"phase": "timing host overhead"})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5, lines
    assert [line.split(": ", 1)[1].split(",")[0] for line in lines] == [
        "0/20 training", "4/20 validating", "10/20 testing batch 1/2", "14/20 timing host overhead", "20/20 done"]
    caplog.clear()
    with RunProgress("x", 4, enabled=True, interactive=False, every_s=0) as update:
        for step in range(1, 5):
            update(step, {"phase": "training", "loss": 1.0})
    assert len(caplog.records) == 6  # start, every update (interval 0), done
    caplog.clear()
    with RunProgress("x", 4, enabled=False, interactive=False) as update:
        assert update is None
    assert not caplog.records


def test_run_summary_line():
    record = {"task": "listops", "attention": "softmax", "seed": 0, "protocol": "smoke", "status": "ok",
              "test_checkpoint": "best_val", "test_accuracy_best_val": 0.375, "test_accuracy_final": 0.1,
              "step_time_median_s": 0.0123, "xla_step_bytes": 3 * 1024 * 1024, "device_peak_bytes": None,
              "wall_time_s": 95.0}
    line = run_summary_line(record, "results/smoke/records/x.json")
    assert line == ("done: listops/softmax seed 0 [smoke]: test acc 37.50% (best_val), 12.30 ms/step, "
                    "3.0 MiB XLA step memory, wall 1m35s -> results/smoke/records/x.json")
    failed = run_summary_line({**record, "status": "failed", "error": "ValueError: bad"}, None)
    assert failed == "failed: listops/softmax seed 0 [smoke]: ValueError: bad"


def test_sweep_pointers_name_pages_plots_and_wandb_sync(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard_accuracy_vs_speed.png"):
        (results / name).write_text("x")
    run_dir = tmp_path / "multirun" / "0_softmax_seed0"
    (run_dir / "wandb" / "offline-run-20260101_000000-abc").mkdir(parents=True)
    lines = sweep_pointers(results, [{"run_dir": str(run_dir)}, {"run_dir": None}])
    assert lines[0] == f"leaderboard: {results / 'leaderboard.md'}, {results / 'leaderboard.html'}"
    assert lines[1] == f"plots: {results / 'leaderboard_accuracy_vs_speed.png'}"
    assert lines[-1] == f"  wandb sync {run_dir / 'wandb' / 'offline-run-20260101_000000-abc'}"
    assert sweep_pointers(tmp_path / "nothing", []) == []


def test_sweep_pointers_sync_many_runs_with_one_glob_per_sweep_folder(tmp_path):
    sweep = tmp_path / "multirun" / "listops" / "2026-01-01_00-00-00"
    runs = []
    for index in range(5):
        offline = sweep / f"{index}_softmax_seed{index}" / "wandb" / f"offline-run-2026010{index}_000000-x{index}"
        offline.mkdir(parents=True)
        runs.append({"run_dir": str(offline.parents[1])})
    line = sweep_pointers(tmp_path / "results", runs)[-1]
    assert line == f"  wandb sync {sweep}/*/wandb/offline-run-*"
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 5  # the glob names every run, nothing else
