"""Checkpoints, resume after a real SIGTERM, divergence records, and refusals of unusable checkpoints."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lra.checkpointing import CheckpointError, RunCheckpoints
from lra.preemption import EXIT_PREEMPTED, StopRequest
from lra.restore import restore_model
from lra.results import read_records
from lra.train import run
from tests.conftest import REPO, TINY_OVERRIDES
from tests.wandb_files import logged_run


# ---------------------------------------------------------------------------------------------
# RunCheckpoints on a tiny model (no training, no compilation)


def _states(features: int = 3):
    model = nnx.Sequential(nnx.Linear(2, features, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1)))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    return nnx.state(model), nnx.state(optimizer)


def _shifted(state, amount: float):
    return jax.tree.map(lambda x: x + amount if jnp.issubdtype(x.dtype, jnp.floating) else x, state)


def _leaves(state):
    return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(state)]


def _saved(directory, identity=None, steps=(1, 2, 3, 4), keep=2):
    model_state, optimizer_state = _states()
    checkpoints = RunCheckpoints(directory, identity or {"model.width": 3}, every_steps=1, keep=keep).open()
    for step in steps:
        best = _shifted(model_state, 100.0 * step) if step >= 2 else None
        checkpoints.save(step, _shifted(model_state, step), optimizer_state, best,
                         {"best": {"step": step}, "history": [[step, "train", {"loss": 0.5}]]})
    checkpoints.close()
    return model_state, optimizer_state


def _open(directory, identity=None, resume="auto"):
    return RunCheckpoints(directory, identity or {"model.width": 3}, every_steps=1, keep=2, resume=resume).open()


def test_round_trip_keeps_the_last_k(tmp_path):
    model_state, optimizer_state = _saved(tmp_path / "ck")
    assert sorted(int(p.name) for p in (tmp_path / "ck").iterdir() if p.name.isdigit()) == [3, 4]
    checkpoints = _open(tmp_path / "ck")
    step, model, optimizer, best, progress = checkpoints.restore(*_states())
    checkpoints.close()
    assert step == 4 and progress["best"] == {"step": 4} and progress["history"] == [[4, "train", {"loss": 0.5}]]
    for restored, saved in ((model, _shifted(model_state, 4)), (best, _shifted(model_state, 400)),
                            (optimizer, optimizer_state)):
        assert jax.tree.structure(restored) == jax.tree.structure(saved)
        for a, b in zip(_leaves(restored), _leaves(saved)):
            np.testing.assert_array_equal(a, b)  # RNG keys and counters included


def test_a_different_config_is_refused_naming_the_keys(tmp_path):
    _saved(tmp_path / "ck", steps=(1,))
    with pytest.raises(CheckpointError, match=r"model\.width: checkpoint 3, now 4.*checkpoint\.resume=never"):
        _open(tmp_path / "ck", {"model.width": 4})
    fresh = _open(tmp_path / "ck", {"model.width": 4}, resume="never")  # explicit: start over
    assert fresh.latest_step is None
    fresh.close()


# Orbax abandons read tasks of a failed restore; they are finalised (noisily) inside restore()
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_other_shapes_and_corrupted_files_are_clear_errors(tmp_path):
    _saved(tmp_path / "ck", steps=(1,))
    checkpoints = _open(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"cannot restore checkpoint .*ck/1.*other shapes: "
                                              r"model/layers/0/bias: checkpoint \(3,\), model \(5,\)"):
        checkpoints.restore(*_states(features=5))
    for path in (tmp_path / "ck" / "1" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # the array data files
            path.write_bytes(path.read_bytes()[:7])
    with pytest.raises(CheckpointError, match=r"cannot restore checkpoint .*ck/1"):
        checkpoints.restore(*_states())
    checkpoints.close()
    (tmp_path / "ck" / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"run\.json is unreadable"):
        _open(tmp_path / "ck")


def test_refuses_foreign_directory_and_missing_required_checkpoint(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        _open(tmp_path / "busy")
    with pytest.raises(CheckpointError, match="resume=require"):
        _open(tmp_path / "empty", resume="require")


def test_train_batches_resume_at_any_position(tmp_path):
    """The data position of a resumed run is its step count: batch i of a fresh iterator."""
    from lra.data.batches import train_batches
    from tests.test_batches import MAX_LENGTH, _make_split

    split = _make_split(tmp_path / "cache", 23)
    fresh = train_batches(split, 5, MAX_LENGTH, seed=4)  # 4 batches per epoch
    expected = [next(fresh) for _ in range(11)]
    for start in (0, 3, 4, 9):
        resumed = train_batches(split, 5, MAX_LENGTH, seed=4, start=start)
        for batch in expected[start:start + 2]:
            got = next(resumed)
            for key in batch:
                np.testing.assert_array_equal(got[key], batch[key])


# ---------------------------------------------------------------------------------------------
# Whole runs


def test_divergence_gives_a_diverged_record_and_keeps_the_last_good_checkpoint(compose, tmp_path):
    # a real divergence: a learning rate of 1e30 overflows the parameters within a few steps
    cfg = compose("optimizer.schedule.base_learning_rate=1e30", "checkpoint.every_steps=1")
    record = run(cfg)
    assert record["status"] == "diverged" and record["diverged_at_step"] >= 2
    assert f"diverged at step {record['diverged_at_step']}" in record["divergence"]
    for key in ("val_accuracy_best", "test_accuracy_final", "test_accuracy_best_val"):
        assert record[key] is None, key  # no made-up 0 %
    assert record["last_checkpoint_step"] == record["diverged_at_step"] - 1
    directory = tmp_path / "run" / "checkpoints"
    assert (directory / str(record["last_checkpoint_step"])).is_dir()
    [stored] = read_records(tmp_path / "results")
    assert stored["status"] == "diverged" and stored["run_id"] == record["run_id"]
    # rerunning the same command does not train again or add a row: the run is finished
    assert run(compose("optimizer.schedule.base_learning_rate=1e30", "checkpoint.every_steps=1")) == \
        json.loads((directory / "result.json").read_text())
    assert len(read_records(tmp_path / "results")) == 1
    # ... and a rerun that stores results elsewhere gets the same record there (not a missing row)
    again = run(compose("optimizer.schedule.base_learning_rate=1e30", "checkpoint.every_steps=1",
                        f"paths.results_dir={tmp_path / 'other'}"))
    assert read_records(tmp_path / "other") == [again] and again["run_id"] == record["run_id"]


RESUME_OVERRIDES = ["train.steps=150", "train.eval_every=50", "train.log_every=7", "checkpoint.every_steps=25"]
COMPARED = ("val_accuracy_best", "best_step", "val_accuracy_final", "val_loss_final", "test_accuracy_final",
            "test_loss_final", "test_accuracy_best_val", "test_loss_best_val", "train_loss_final",
            "train_accuracy_final")


def _metric_rows(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return [(row["step"], row["split"], row["loss"], row["accuracy"]) for row in csv.DictReader(handle)]


def test_sigterm_then_rerun_continues_exactly(compose, tmp_path):
    reference = run(compose(*RESUME_OVERRIDES, f"run_dir={tmp_path / 'reference'}"))
    shared = [f"paths.results_dir={tmp_path / 'cli_results'}", f"paths.checkpoints_dir={tmp_path / 'checkpoints'}"]

    # the command line run, stopped by a real SIGTERM once its first periodic checkpoint is written
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    killed = subprocess.Popen([sys.executable, "-m", "lra.train", *TINY_OVERRIDES, *RESUME_OVERRIDES, *shared,
                               f"paths.data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'first'}", "logger=wandb"],
                              cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = []
    for line in killed.stdout:
        output.append(line)
        if "saved checkpoint step 25 " in line:
            killed.send_signal(signal.SIGTERM)
            break
    output.append(killed.communicate(timeout=300)[0])
    output = "".join(output)
    assert killed.returncode == EXIT_PREEMPTED, output[-3000:]
    stopped = int(output.split("SIGTERM at step ")[1].split(":")[0])
    assert 25 <= stopped < 150, "the signal arrived after training; the run was not interrupted"
    assert not (tmp_path / "cli_results" / "records").exists()  # no record for an unfinished run

    # the same command again (here in this process; only where it logs differs): it resumes
    record = run(compose(*RESUME_OVERRIDES, *shared, "checkpoint.dir=null", f"run_dir={tmp_path / 'second'}",
                         "logger=wandb"))
    assert record["resumed_from_step"] == stopped and record["status"] == "ok"
    for key in COMPARED:
        assert record[key] == reference[key], key
    # every metric row once, identical to the uninterrupted run's
    assert _metric_rows(tmp_path / "second") == _metric_rows(tmp_path / "reference")
    for which in ("final", "best"):
        _, resumed_model = restore_model(tmp_path / "second", which)
        _, reference_model = restore_model(tmp_path / "reference", which)
        for a, b in zip(_leaves(nnx.state(resumed_model)), _leaves(nnx.state(reference_model))):
            np.testing.assert_array_equal(a, b)
    assert len(read_records(tmp_path / "cli_results")) == 1
    # the resumed run continues the same W&B run (its id is the run's identity)
    first, second = logged_run(tmp_path / "first"), logged_run(tmp_path / "second")
    assert first.run_id == second.run_id and first.run_id.endswith(record["fingerprint"][:16])


def test_stop_request_catches_signals_and_chains_submitit_requeue():
    calls = []
    previous_usr2 = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopRequest() as stop:
            signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: a request to stop
            assert stop.requested == "SIGINT" and calls == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with StopRequest() as stop:
            signal.raise_signal(signal.SIGUSR2)
            assert stop.requested == "SIGUSR2" and calls == []  # not before the checkpoint
        assert calls == [signal.SIGUSR2]  # then submitit's handler (here: a stand-in) runs
    finally:
        signal.signal(signal.SIGUSR2, previous_usr2)
