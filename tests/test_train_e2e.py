"""End to end: real configs, real ListOps generator, real training loop, results store, sweep CLI."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys

import pandas as pd
import pytest

from lra.train import run
from tests.conftest import REPO, TINY_OVERRIDES
from tests.wandb_files import logged_history, logged_run


def test_single_run_writes_run_dir_and_record(compose, tmp_path):
    record = run(compose("attention=softmax"))
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "result.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "result.json").read_text())["run_id"] == record["run_id"]
    # every validation/test example scored exactly once (last eval batch padded with weight 0)
    assert record["val_examples"] == 37 and record["test_examples"] == 21
    for key in ("val_accuracy_best", "test_accuracy_final", "test_accuracy_best_val"):
        assert 0.0 <= record[key] <= 1.0
    assert record["step_time_median_s"] > 0 and record["compile_time_s"] > 0
    assert record["xla_step_bytes"] > 0 and record["flops_per_step"] > 0
    assert record["param_count"] > 0 and record["protocol"] == "smoke"
    assert record["jax_version"] and record["git_sha"] and record["device"].startswith("cpu")
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    splits = [row["split"] for row in rows]
    # 6 steps, log every 2, eval every 3 (an eval step is always also a logging step)
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == [2, 3, 4, 6]
    assert [int(r["step"]) for r in rows if r["split"] == "val"] == [3, 6]
    assert "test_final" in splits and "test_best_val" in splits
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert list(table["run_id"]) == [record["run_id"]]


@pytest.mark.slow  # a whole run twice; tests/test_train_step.py pins one step's numbers in the default suite
def test_same_seed_same_numbers(compose, tmp_path):
    first = run(compose("attention=linear", f"run_dir={tmp_path / 'a'}"))
    second = run(compose("attention=linear", f"run_dir={tmp_path / 'b'}"))
    other_seed = run(compose("attention=linear", "seed=1", f"run_dir={tmp_path / 'c'}"))
    for key in ("train_loss_final", "val_loss_final", "test_loss_final"):
        assert first[key] == second[key], key
    assert first["train_loss_final"] != other_seed["train_loss_final"]


def test_wandb_offline_run_logs_the_same_metrics(compose, tmp_path, caplog):
    assert os.environ["WANDB_MODE"] == "offline"
    caplog.set_level(logging.INFO)
    record = run(compose("attention=softmax", "logger=wandb", "progress=true"))
    history = logged_history(tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [row for row in rows if row["split"] == "train"]
    logged = {int(entry["_step"]): entry for entry in history if "train/loss" in entry}
    assert sorted(logged) == [int(row["step"]) for row in train_rows]
    for row in train_rows:
        for key in ("loss", "grad_norm", "learning_rate"):
            assert logged[int(row["step"])][f"train/{key}"] == pytest.approx(float(row[key]), rel=1e-6), key
    # the run's costs: one `run` row in metrics.csv, the same numbers in W&B
    (costs,) = [row for row in rows if row["split"] == "run"]
    (wandb_costs,) = [entry for entry in history if "run/compile_time_s" in entry]
    for key in ("compile_time_s", "eval_compile_time_s", "xla_step_bytes", "step_time_median_s", "wall_time_s"):
        assert wandb_costs[f"run/{key}"] == pytest.approx(float(costs[key]), rel=1e-6), key
    assert float(costs["xla_step_bytes"]) == record["xla_step_bytes"]
    assert float(costs["wall_time_s"]) == pytest.approx(record["wall_time_s"]) and record["wall_time_s"] > 0
    # placed by the run's identity: smoke project, tags, a stable id
    placed = logged_run(tmp_path / "run")
    assert placed.project == "lra-smoke" and placed.job_type == "train"
    assert {"protocol:smoke", "task:listops", "attention:softmax", "seed:0", "smoke"} <= set(placed.tags)
    assert placed.run_id.endswith(record["fingerprint"][:16])
    # the console: progress through every phase (plain lines: no terminal here), then one summary line
    messages = [r.getMessage() for r in caplog.records]
    progress = [m.split(": ", 1)[1].split(",")[0] for m in messages if m.startswith("listops/softmax seed 0: ")]
    assert progress[0] == "0/10 training" and progress[-1] == "10/10 done", progress
    # evaluation passes show their batches (test: 21 examples, eval batch 16)
    assert {"6/10 validating", "6/10 testing (final)", "6/10 testing (best val) batch 1/2",
            "8/10 timing host overhead"} <= set(progress), progress
    (summary,) = [m for m in messages if m.startswith("done: listops/softmax seed 0 [smoke]")]
    assert f"{100 * record['test_accuracy_final']:.2f}%" in summary and " ms/step, " in summary
    assert summary.endswith(f"{tmp_path / 'results' / 'records' / record['run_id']}.json")
    val = [entry for entry in history if "val/accuracy" in entry]
    assert len(val) == 2
    assert any(entry.get("test_final/accuracy") == pytest.approx(record["test_accuracy_final"]) for entry in history)


def test_malformed_release_tsv_names_file_and_line(compose, tmp_path):
    release = tmp_path / "listops-1000"
    release.mkdir()
    good = "Source\tTarget\n( [MAX 2 9 ] )\t9\n"
    (release / "basic_train.tsv").write_text(good + "( [MIN 1 3 ] )\tnot-a-label\n")
    (release / "basic_val.tsv").write_text(good)
    (release / "basic_test.tsv").write_text(good)
    with pytest.raises(ValueError, match=r"basic_train\.tsv.*3"):
        run(compose("task.source=release", f"task.release_dir={release}"))


def _cli(module, *overrides, cwd):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# The basic launcher's sweep runs in tests/test_new_kernel.py (through `make sweep`); this one runs
# the same multirun as parallel submitit jobs.
@pytest.mark.slow  # parallel submitit jobs; the basic launcher runs in the default suite (test_new_kernel)
@pytest.mark.parametrize("launcher", ["local_parallel"])
def test_sweep_over_two_attentions_writes_rows_and_leaderboard(tmp_path, launcher):
    result = _cli("lra.train", "--multirun", *TINY_OVERRIDES, "attention=softmax,linear",
                  f"hydra/launcher={launcher}",
                  f"paths.data_dir={tmp_path / 'data'}", f"paths.results_dir={tmp_path / 'results'}",
                  f"hydra.sweep.dir={tmp_path / 'multirun'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert sorted(table["attention"]) == ["linear", "softmax"]
    assert set(table["task"]) == {"listops"} and set(table["protocol"]) == {"smoke"}
    leaderboard = (tmp_path / "results" / "leaderboard.md").read_text()
    for name in ("softmax", "linear"):  # the tiny settings differ from the smoke protocol's: a labelled variant
        assert f"| smoke | {name} [model.emb_dim=16, model.mlp_dim=16, +" in leaderboard
    assert "LRA leaderboard" in result.stdout  # printed at the end of the multirun
    # the submitit jobs carried the sweep's id into their records: the summary counts both
    assert "2 runs recorded: 2 ok, 0 diverged, 0 failed" in result.stdout
    assert f"leaderboard: {tmp_path / 'results' / 'leaderboard.md'}, " in result.stdout  # where to look
    run_dirs = sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir() and p.name[0] != ".")
    assert run_dirs == ["0_softmax_seed0", "1_linear_seed0"]


def test_unknown_attention_is_a_clear_error(tmp_path):
    result = _cli("lra.train", *TINY_OVERRIDES, "attention=no_such_kernel",
                  f"paths.results_dir={tmp_path / 'results'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "attention/no_such_kernel" in result.stderr and "softmax" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # two trainings; the add-on itself is tested in tests/attention/test_fastrpb.py
def test_positional_bias_combinations(compose, tmp_path):
    """A registered combination and a command-line add-on both train and get their own row name."""
    plain = run(compose("attention=sikf", f"run_dir={tmp_path / 'plain'}"))
    combined = run(compose("attention=sikf_fastrpb", f"run_dir={tmp_path / 'combined'}"))
    added = run(compose("attention=linear", "+positional_bias=fastrpb", f"run_dir={tmp_path / 'added'}"))
    assert (plain["attention"], combined["attention"], added["attention"]) == ("sikf", "sikf+fastrpb", "linear+fastrpb")
    assert combined["param_count"] > plain["param_count"]  # the bias coefficients are parameters
    assert combined["positional_bias_config"] and plain["positional_bias_config"] is None
    from lra.build import ConfigError

    with pytest.raises(ConfigError, match="already includes positional_bias"):
        run(compose("attention=sikf_fastrpb", "+positional_bias=fastrpb", f"run_dir={tmp_path / 'twice'}"))
