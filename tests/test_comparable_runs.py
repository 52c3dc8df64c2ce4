"""Results that can be trusted: only comparable runs pool, a seed counts once, an edited kernel trains
afresh, a failed run is a result, and a broken kernel is named before a sweep trains anything."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lra.leaderboard.pages import write_leaderboard
from lra.leaderboard.table import leaderboard_frame, leaderboard_rows
from lra.result_record import LEGACY_VARIANT, RecordError, make_record as schema_record, normalise, read_record
from lra.results import comparable_runs, read_records, write_record
from tests.conftest import REPO, TINY_OVERRIDES, compose_tiny
from tests.test_results import make_record

USER_KERNEL = Path(__file__).parent / "user_kernel"


def _rows(records):
    return {row["attention"]: row for row in leaderboard_frame(leaderboard_rows(records)).to_dict("records")}


# -- rows are formed by settings -----------------------------------------------------------------------
def test_runs_of_other_step_counts_form_their_own_rows(tmp_path):
    """Two real runs of one seed, 3 and 6 steps: two rows, each n=1, never one pooled cell."""
    from lra.train import run

    short = run(compose_tiny(tmp_path, "attention=linear", "train.steps=3", f"run_dir={tmp_path / 'a'}"))
    long = run(compose_tiny(tmp_path, "attention=linear", f"run_dir={tmp_path / 'b'}"))
    assert short["fingerprint"] != long["fingerprint"] and "train.steps=3" in short["settings_changed"]
    assert "train.steps=6" in long["settings_changed"]  # the tiny preset's 6 steps differ from smoke's 60 too
    rows = leaderboard_rows(read_records(tmp_path / "results"))
    assert len(rows) == 2 and all(row.cells["listops"].seeds == 1 for row in rows)
    assert {row.variant.count("train.steps=") for row in rows} == {1}


def test_a_learning_rate_grid_gives_one_row_per_value():
    records = [make_record(f"r{lr}{seed}", attention="linear", seed=seed, final=0.1 * lr,
                           settings_changed=[f"optimizer.schedule.base_learning_rate={lr}"])
               for lr in (1, 2, 3) for seed in (0, 1)]
    rows = _rows(records)
    assert sorted(rows) == [f"linear [optimizer.schedule.base_learning_rate={lr}]" for lr in (1, 2, 3)]
    assert all(row["listops"].endswith("(n=2)") for row in rows.values())


def test_a_repeated_seed_counts_once_and_the_newest_record_wins():
    old = make_record("a", seed=0, final=0.10, date="2026-01-01T00:00:00+00:00")
    new = make_record("b", seed=0, final=0.30, date="2026-01-02T00:00:00+00:00")
    other = make_record("c", seed=1, final=0.50)
    selection = comparable_runs([old, new, other])
    assert [r["run_id"] for r in selection.kept] == ["b", "c"] and selection.repeats == [old]
    row = _rows([old, new, other])["softmax"]
    assert row["listops"] == "40.00 ± 14.14 (n=2)"  # seeds 0 (newest: 30 %) and 1 (50 %)
    assert row["runs"] == "2 (1 repeated-seed records left out)"


def test_an_older_fingerprint_is_superseded_not_pooled():
    before = [make_record(f"old{s}", seed=s, final=0.9, fingerprint="code-v1", date="2026-01-01T00:00:00+00:00")
              for s in (0, 1)]
    after = make_record("new0", seed=0, final=0.2, fingerprint="code-v2", date="2026-01-03T00:00:00+00:00")
    selection = comparable_runs([*before, after])
    assert selection.kept == [after] and sorted(r["run_id"] for r in selection.superseded) == ["old0", "old1"]
    assert _rows([*before, after])["softmax"]["listops"] == "20.00 (n=1)"


def test_ratios_use_softmax_at_the_same_cost_settings():
    records = [make_record("s", attention="softmax", step_time=0.4),
               make_record("s2", attention="softmax", step_time=0.1, settings_changed=["task.max_length=64"]),
               make_record("l", attention="linear", step_time=0.2, settings_changed=["optimizer.b1=0.8"]),
               make_record("l2", attention="linear", step_time=0.05, settings_changed=["task.max_length=64"])]
    rows = _rows(records)
    assert rows["linear [optimizer.b1=0.8]"]["speed vs softmax"] == "2.00×"  # the learning knob costs nothing
    assert rows["linear [task.max_length=64]"]["speed vs softmax"] == "2.00×"  # against the 64-token softmax


def test_the_parameter_rule_is_not_fooled_by_rounding():
    records = [make_record("s", attention="softmax", params=1000), make_record("w", attention="wide", params=1101)]
    assert _rows(records)["wide"]["params vs softmax"] == "1.1010× (over the 10% limit)"


# -- the record schema -------------------------------------------------------------------------------------
def test_records_follow_the_schema():
    with pytest.raises(RecordError, match="unknown record fields \\['accuracy'\\]"):
        schema_record(run_id="x", protocol="p", task="t", attention="a", seed=0, status="ok", accuracy=1.0)
    with pytest.raises(RecordError, match="'seed' must be int"):
        schema_record(run_id="x", protocol="p", task="t", attention="a", seed="0", status="ok")
    with pytest.raises(RecordError, match="status 'done'"):
        schema_record(run_id="x", protocol="p", task="t", attention="a", seed=0, status="done")
    with pytest.raises(RecordError, match="broken.json: a result record must be a JSON object"):
        normalise([1, 2], "broken.json")


def test_records_written_before_the_schema_still_load_with_a_marker(tmp_path):
    """A version-1 record (no schema_version, git sha with a -dirty suffix) reads as a legacy record:
    its own fingerprint from the settings it has, so 10- and 60-step legacy runs never pool."""
    folder = tmp_path / "records"
    folder.mkdir()
    for name, steps, accuracy in (("old10", 10, 0.1), ("old60", 60, 0.2)):
        (folder / f"{name}.json").write_text(json.dumps({
            "run_id": name, "task": "listops", "attention": "linear", "protocol": "smoke", "seed": 0, "steps": steps,
            "test_accuracy_final": accuracy, "test_checkpoint": "final", "git_sha": "abc123-dirty",
            "date": f"2026-01-0{1 + steps // 60}T00:00:00+00:00"}))
    records = read_records(tmp_path)
    assert all(r["legacy"] and r["variant"] == LEGACY_VARIANT and r["git_dirty"] for r in records)
    assert records[0]["fingerprint"] != records[1]["fingerprint"] and records[0]["git_sha"] == "abc123"
    rows = _rows(records)
    assert rows == {"linear [legacy record]": rows["linear [legacy record]"]}
    assert rows["linear [legacy record]"]["listops"] == "20.00 (n=1)"  # the newer; the other is superseded
    assert read_record(folder / "old10.json")["status"] == "ok"


# -- stale results: an edited kernel trains afresh -----------------------------------------------------------
def test_editing_a_kernel_between_two_identical_commands_trains_afresh(tmp_path, monkeypatch, caplog):
    kernels = tmp_path / "kernels"
    shutil.copytree(USER_KERNEL, kernels)
    monkeypatch.setenv("LRA_KERNEL_DIR", str(kernels))
    monkeypatch.syspath_prepend(str(kernels))
    from lra.train import run

    def command(run_dir):
        return compose_tiny(tmp_path, "attention=my_kernel", f"hydra.searchpath=[file://{kernels}]",
                            "checkpoint.dir=null", f"paths.checkpoints_dir={tmp_path / 'checkpoints'}",
                            "train.steps=2", "train.eval_every=2", "train.overhead_pairs=0", f"run_dir={run_dir}")

    first = run(command(tmp_path / "run1"))
    again = run(command(tmp_path / "run2"))
    assert again["run_id"] == first["run_id"]  # unchanged code: the finished record comes back
    source = kernels / "my_kernel.py"
    source.write_text(source.read_text().replace("weights = jax.nn.relu(scores)", "weights = jax.nn.relu(scores) ** 2"))
    sys.modules.pop("my_kernel", None)
    with caplog.at_level(logging.WARNING, logger="lra.train"):
        edited = run(command(tmp_path / "run3"))
    assert edited["run_id"] != first["run_id"] and edited["fingerprint"] != first["fingerprint"]
    assert edited["attention_source_sha256"] != first["attention_source_sha256"]
    assert edited["attention_target"] == "my_kernel.ReluTemperatureAttention"
    assert any("training afresh" in m and "the code changed (attention source" in m for m in caplog.messages)
    rows = leaderboard_rows(read_records(tmp_path / "results"))
    assert len(rows) == 1 and rows[0].superseded == 1 and rows[0].cells["listops"].seeds == 1


# -- failed runs and the pre-flight check --------------------------------------------------------------------
BROKEN = """\
from flax import nnx

class DropsHeadDim(nnx.Module):
    def __init__(self, spec, *, rngs):
        pass

    def __call__(self, q, k, v, key_mask, *, deterministic):
        return v[..., 0]  # (batch, length, heads): the head dimension is lost
"""


@pytest.fixture
def broken_kernel_dir(tmp_path):
    kernels = tmp_path / "kernels"
    shutil.copytree(USER_KERNEL, kernels)
    (kernels / "broken_kernel.py").write_text(BROKEN)
    (kernels / "attention" / "broken.yaml").write_text(
        "name: broken\n_target_: broken_kernel.DropsHeadDim\n_partial_: true\n")
    return kernels


def test_preflight_names_the_broken_attention_and_what_it_returned(broken_kernel_dir, monkeypatch):
    from lra.preflight import check_attention

    monkeypatch.setenv("LRA_KERNEL_DIR", str(broken_kernel_dir))
    monkeypatch.syspath_prepend(str(broken_kernel_dir))
    problem = check_attention("broken")
    assert problem == ("attention 'broken' returned shape (2, 64, 2) dtype float32; expected q's shape "
                       "(2, 64, 2, 8) dtype float32 (batch, length, heads, head_dim): see attention/base.py")
    assert check_attention("my_kernel") is None and check_attention("softmax") is None


def test_a_sweep_with_a_broken_kernel_records_it_and_exits_nonzero(tmp_path, broken_kernel_dir):
    env = {**os.environ, "WANDB_MODE": "offline", "LRA_KERNEL_DIR": str(broken_kernel_dir),
           "PYTHONPATH": os.pathsep.join([str(broken_kernel_dir), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-m", "lra.train", "--multirun", *TINY_OVERRIDES, "attention=broken,softmax",
         "train.steps=2", "train.eval_every=2", "train.overhead_pairs=0",
         f"hydra.searchpath=[file://{broken_kernel_dir}]", f"paths.data_dir={tmp_path / 'data'}",
         f"paths.results_dir={tmp_path / 'results'}", f"paths.checkpoints_dir={tmp_path / 'checkpoints'}",
         f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "preflight: broken: BROKEN - attention 'broken' returned shape (2, 64, 2)" in result.stdout
    assert "1 of 2 runs failed" in result.stdout and "listops/broken seed 0: ContractError" in result.stdout
    records = {r["attention"]: r for r in read_records(tmp_path / "results")}
    assert records["softmax"]["status"] == "ok" and records["broken"]["status"] == "failed"
    failed = records["broken"]
    assert failed["error"].startswith("ContractError: attention DropsHeadDim returned shape (8, 65, 2)")  # 64 tokens + CLS
    assert failed["test_accuracy_final"] is None and Path(failed["log_path"]).is_file()
    assert "Traceback" in Path(failed["log_path"]).read_text()
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    softmax = next(line for line in board.splitlines() if line.startswith("| smoke | softmax ["))
    broken = next(line for line in board.splitlines() if line.startswith("| smoke | broken ["))
    assert "(n=1)" in softmax and "failed (1 of 1)" in broken and "| 1 (1 failed) |" in broken


def test_a_single_failing_run_still_raises_after_writing_its_record(tmp_path):
    from lra.train import run

    config = compose_tiny(tmp_path, "task.source=release", f"task.release_dir={tmp_path / 'nowhere'}")
    with pytest.raises(Exception, match="nowhere"):
        run(config)
    [record] = read_records(tmp_path / "results")
    assert record["status"] == "failed" and "nowhere" in record["error"] and record["fingerprint"]
    assert record["variant"].startswith("model.emb_dim=16")  # identity fields are there for the leaderboard


def test_the_failure_summary_needs_the_sweep_id(tmp_path):
    """Records of other sweeps in the same folder are not this sweep's failures."""
    from omegaconf import OmegaConf

    from lra.sweep import SweepCallback

    write_record(tmp_path, make_record("other", seed=1, status="failed", error="ValueError: x", sweep_id="earlier"))
    write_record(tmp_path, make_record("mine", seed=0, sweep_id="now"))
    callback = SweepCallback(str(tmp_path), preflight=False)
    callback.sweep_id = "now"
    callback.on_multirun_end(OmegaConf.create({}))  # no SystemExit: this sweep's one run is fine
    callback.sweep_id = "earlier"
    with pytest.raises(SystemExit) as exit_info:
        callback.on_multirun_end(OmegaConf.create({}))
    assert exit_info.value.code == 1
    assert write_leaderboard(tmp_path, plots=False)[2]["runs"].tolist() == ["2 (1 failed)"]
