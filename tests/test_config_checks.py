"""Bad config values are refused up front, naming the key, the value and what is allowed."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from lra.config_checks import ConfigError, check_config, config_problems
from lra.data.batches import train_batches
from lra.data.token_cache import TokenSplit
from lra.train import run
from tests.conftest import REPO, TINY_OVERRIDES, compose_config, compose_tiny

PROTOCOLS = ("smoke", "lra_official", "pytorch_lineage")
TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")


def test_every_preset_passes():
    for protocol, task in itertools.product(PROTOCOLS, TASKS):
        assert config_problems(compose_config(f"protocol={protocol}", f"task={task}")) == [], (protocol, task)


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=-4", "train.batch_size=-4: must be an integer >= 1"),
    ("train.steps=0", "train.steps=0: must be an integer >= 1"),
    ("train.steps=abc", "train.steps='abc': must be an integer >= 1 (got a str)"),
    ("train.steps=1.5", "train.steps=1.5: must be an integer >= 1 (got a float)"),
    ("train.eval_every=0", "train.eval_every=0: must be an integer >= 1"),
    ("train.log_every=0", "train.log_every=0: must be an integer >= 1"),
    ("seed=-1", "seed=-1: must be an integer in 0..2147483647"),
    ("model.dtype=int8", "model.dtype='int8': must be one of float32, bfloat16"),
    ("task.max_length=0", "task.max_length=0: must be an integer >= 1"),
    ("model.dropout_rate=1.0", "model.dropout_rate=1.0: must be a number in [0, 1)"),
    ("checkpoint.every_steps=0", "checkpoint.every_steps=0: must be an integer >= 1"),
    ("task.generator.min_length=300", "task.generator.min_length=300: must be below task.generator.max_length=256"),
])
def test_a_bad_value_is_refused_before_anything_is_loaded(tmp_path, override, message):
    cfg = compose_tiny(tmp_path, "task.generator.max_length=256", override)
    with pytest.raises(ConfigError) as raised:
        run(cfg)
    assert message in str(raised.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists() and not (tmp_path / "run").exists()


def test_all_problems_are_listed_at_once():
    with pytest.raises(ConfigError, match=r"(?s)seed=-1.*train\.steps=0.*train\.batch_size=-4"):
        check_config({"seed": -1, "train": {"steps": 0, "batch_size": -4}})


def test_batches_must_split_over_the_devices():
    cfg = {"train": {"batch_size": 16, "eval_batch_size": 50}}
    assert config_problems(cfg, devices=2) == []
    assert config_problems(cfg, devices=4) == [
        "train.eval_batch_size=50: must be a multiple of the 4 devices the batch is split over"]


@pytest.mark.parametrize("task", ["listops", "text", "retrieval", "image"])
def test_the_smoke_presets_fit_1_2_4_and_8_devices(task):
    cfg = compose_config("protocol=smoke", f"task={task}")
    for devices in (1, 2, 4, 8):
        assert config_problems(cfg, devices=devices) == [], (task, devices)


def test_the_training_batch_producer_never_spins():
    split = TokenSplit("train", np.ones(30, np.uint8), np.arange(0, 31, 3, dtype=np.int64), np.zeros(10, np.int32))
    outcome = []

    def first_batch():
        try:
            next(train_batches(split, batch_size=-4, max_length=3, seed=0))
        except ValueError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=first_batch, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert outcome == ["train.batch_size must be >= 1; got -4"]


@pytest.mark.slow
def test_the_default_smoke_run_trains_on_8_fake_devices(tmp_path):
    """The default first run (ListOps smoke, its own batch sizes), shrunk in steps and data only."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "lra.train", "logger=csv", "progress=false", "train.steps=2",
               "train.eval_every=2", "train.log_every=1", "train.overhead_pairs=0", "task.max_length=64",
               "task.generator.min_length=10", "task.generator.max_length=64", "task.generator.num_train=64",
               "task.generator.num_val=70", "task.generator.num_test=70", "model.num_layers=1",
               f"paths.data_dir={tmp_path / 'data'}", f"paths.results_dir={tmp_path / 'results'}",
               f"run_dir={tmp_path / 'run'}", "checkpoint.enabled=false", "hydra.callbacks={}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "results" / "records").glob("*.json"))


@pytest.mark.slow
def test_a_sweep_lists_jobs_refused_for_bad_values_and_exits_1(tmp_path):
    command = [sys.executable, "-m", "lra.train", "-m", "seed=-1,-2", *TINY_OVERRIDES,
               f"paths.data_dir={tmp_path / 'data'}", f"paths.results_dir={tmp_path / 'results'}",
               f"hydra.sweep.dir={tmp_path / 'multirun'}", "hydra.callbacks.sweep.preflight=false"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 job(s) refused before training (no record)" in done.stdout
    assert "seed -1: ConfigError: invalid config" in done.stdout and not (tmp_path / "data").exists()
