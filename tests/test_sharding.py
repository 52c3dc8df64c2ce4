"""Data parallelism on fake CPU devices: 4 devices compute what 1 device computes for one global batch.

The device count of a JAX process is fixed when JAX starts, so the comparison runs in one
subprocess started with XLA_FLAGS=--xla_force_host_platform_device_count=4, training the same tiny
run on a mesh of the first device and on a mesh of all four.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, TINY_OVERRIDES, compose_config


def _train(devices, overrides: list[str]) -> tuple[dict, dict]:
    """Train the tiny run on a mesh over ``devices``; -> (metrics, flattened final parameters)."""
    from flax import nnx
    from omegaconf import OmegaConf

    from lra.data.tasks import load_task
    from lra.build import build_run
    from lra.training.loop import LoopConfig, train_and_evaluate
    from lra.training.sharding import data_mesh

    cfg = compose_config(*TINY_OVERRIDES, *overrides)
    cache = load_task(cfg.task, cfg.paths.data_dir, progress=False)
    model, optimizer, learning_rate = build_run(cfg, cache.vocab_size)
    loop_cfg = LoopConfig(max_length=cfg.task.max_length, seed=int(cfg.seed),
                          **OmegaConf.to_container(cfg.train, resolve=True))
    logged = []
    metrics = train_and_evaluate(model, optimizer, learning_rate, {s: cache[s] for s in ("train", "val", "test")},
                                 loop_cfg, lambda step, split, values: logged.append([step, split, values]),
                                 mesh=data_mesh(devices))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    params = {"/".join(map(str, path)): np.asarray(value).tolist() for path, value in flat}
    devices_used = len(flat[0][1].get_value().sharding.device_set)  # parameters replicated on each
    return {"logged": logged, "devices_used": devices_used,
            **{k: metrics[k] for k in ("val_accuracy_best", "test_loss_final")}}, params


def compare_one_and_four_devices(data_dir: str) -> None:
    """Run inside the 4-device subprocess; prints one JSON line with both runs and the error."""
    import jax

    assert jax.device_count() == 4, jax.devices()
    overrides = [f"paths.data_dir={data_dir}", "train.steps=4", "train.overhead_pairs=0"]
    one = _train(jax.devices()[:1], overrides)
    four = _train(jax.devices(), overrides)
    try:
        _train(jax.devices(), [*overrides, "train.batch_size=6"])
        error = None
    except ValueError as raised:
        error = str(raised)
    print("RESULT " + json.dumps({"one": one, "four": four, "error": error}))


def test_four_devices_match_one_device_for_the_same_global_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    code = f"from tests.test_sharding import compare_one_and_four_devices as run; run({str(tmp_path / 'data')!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    runs = json.loads(line.removeprefix("RESULT "))
    (one_metrics, one_params), (four_metrics, four_params) = runs["one"], runs["four"]
    assert (one_metrics["devices_used"], four_metrics["devices_used"]) == (1, 4)

    # the same logged points, with the same losses up to float summation order
    assert [row[:2] for row in one_metrics["logged"]] == [row[:2] for row in four_metrics["logged"]]
    for (step, split, a), (_, _, b) in zip(one_metrics["logged"], four_metrics["logged"]):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, err_msg=f"{split} loss at step {step}")
        assert a["accuracy"] == b["accuracy"], (step, split)
    np.testing.assert_allclose(one_metrics["test_loss_final"], four_metrics["test_loss_final"], rtol=1e-5)
    assert one_params.keys() == four_params.keys()
    for name in one_params:
        np.testing.assert_allclose(np.asarray(one_params[name]), np.asarray(four_params[name]),
                                   rtol=1e-4, atol=1e-5, err_msg=name)

    # a global batch that does not split over the devices is refused, naming the key to change
    assert runs["error"] and "train.batch_size=6" in runs["error"] and "4 devices" in runs["error"]


def test_distributed_auto_joins_only_when_several_processes_are_described(monkeypatch):
    from lra.training.sharding import distributed_requested

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed_requested("auto")
    monkeypatch.setenv("SLURM_NTASKS", "4")  # an allocation, but this process was not started by srun
    assert not distributed_requested("auto")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert distributed_requested("auto")
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    assert distributed_requested("auto") and not distributed_requested(False)
    with pytest.raises(ValueError, match="distributed.initialize"):
        distributed_requested("sometimes")


@pytest.mark.slow
def test_two_processes_train_one_run_and_only_process_0_writes(compose, tmp_path):
    """Two CPU processes x 2 fake devices joined by jax.distributed (env variables, gloo)."""
    from lra.results import read_records
    from lra.train import run

    reference = run(compose("train.overhead_pairs=0", f"run_dir={tmp_path / 'reference'}",
                            f"paths.results_dir={tmp_path / 'reference_results'}"))
    command = [sys.executable, "-m", "lra.train", *TINY_OVERRIDES, "train.overhead_pairs=0",
               f"paths.data_dir={tmp_path / 'data'}", f"paths.results_dir={tmp_path / 'results'}",
               f"paths.checkpoints_dir={tmp_path / 'checkpoints'}", f"run_dir={tmp_path / 'run'}"]
    base = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": "localhost:18777", "JAX_NUM_PROCESSES": "2"}
    processes = [subprocess.Popen(command, cwd=tmp_path, env={**base, "JAX_PROCESS_ID": str(i)}, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    [record] = read_records(tmp_path / "results")  # one record, from process 0
    assert record["device_count"] == "4" and record["status"] == "ok"
    for key in ("train_loss_final", "val_loss_final", "test_loss_final"):
        np.testing.assert_allclose(record[key], reference[key], rtol=1e-5, err_msg=key)
    [checkpoint_dir] = (tmp_path / "checkpoints" / "smoke" / "listops" / "softmax").glob("seed0-*")  # + config hash
    assert (checkpoint_dir / "result.json").is_file()
