"""The training-step benchmark at tiny shapes on CPU: files, columns, the ablation split, the ratios,
a failing attention recorded as a row, and the vocabulary and parameter counts it builds. No timing
is asserted."""

from __future__ import annotations

import csv
import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from lra.bench import step
from lra.build import build_attention, build_model, task_attention_config
from lra.model import count_parameters
from lra.data.tasks import task_vocab_size

TINY = ["protocol=smoke", "task=listops", "task.max_length=32", "train.batch_size=2", "model.emb_dim=16",
        "model.qkv_dim=16", "model.mlp_dim=16", "model.num_layers=1"]


def read_csv(path):
    with open(path, newline="") as handle:
        return {row["attention"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow  # the whole benchmark; its parts are tested below
def test_end_to_end_at_tiny_shapes(tmp_path):
    directory = step.main(["--attention", "softmax,not_an_attention", "--rounds", "3", "--warmup", "1",
                           "--output-root", str(tmp_path), "--name", "tiny", *TINY])
    assert directory == tmp_path / "cpu" / "tiny"
    rows = read_csv(directory / "step.csv")
    assert list(rows) == ["no_attention", "softmax", "not_an_attention"]
    assert rows["not_an_attention"]["status"] == "error" and "not_an_attention" in rows["not_an_attention"]["reason"]
    softmax, stub = rows["softmax"], rows["no_attention"]
    assert softmax["status"] == stub["status"] == "ok"
    assert (int(softmax["batch"]), int(softmax["length"]), int(softmax["rounds"])) == (2, 32, 3)
    assert float(softmax["ratio_to_softmax"]) == 1.0 == float(softmax["cpu_ratio_to_softmax"])
    assert float(softmax["step_cpu_median_ms"]) > 0
    assert float(softmax["step_p25_ms"]) <= float(softmax["step_median_ms"]) <= float(softmax["step_p75_ms"])
    # the split adds up to the step (cells are written to 6 significant digits)
    parts = sum(float(softmax[key]) for key in ("attention_ms", "rest_ms", "optimizer_ms"))
    assert parts == pytest.approx(float(softmax["step_median_ms"]), rel=1e-4)
    assert float(softmax["optimizer_ms"]) == float(softmax["optimizer_median_ms"]) > 0
    # XLA counts the attention's work: the step with attention does more FLOPs than the stub's
    assert float(softmax["flops"]) > float(stub["flops"]) > 0
    assert float(softmax["achieved_gflop_per_s"]) == pytest.approx(
        float(softmax["flops"]) / float(softmax["step_median_ms"]) / 1e6, rel=1e-4)
    assert int(softmax["params"]) == int(stub["params"]) > 0 and float(softmax["compile_s"]) > 0
    info = json.loads((directory / "provenance.json").read_text())
    assert info["settings"]["overrides"] == TINY and info["settings"]["rounds"] == 3
    report = (directory / "step.md").read_text()
    assert "| softmax |" in report and "not_an_attention" in report and "attention share" in report
    assert not list(directory.glob("*.tmp*"))


def test_identity_cost_stub_uses_every_projection():
    q, k, v = (jnp.full((1, 4, 2, 3), value) for value in (1.0, 2.0, 6.0))
    out = step.IdentityCostAttention(None, rngs=nnx.Rngs(0))(q, k, v, jnp.ones((1, 4), bool), deterministic=False)
    assert out.shape == q.shape and bool(jnp.all(out == 3.0))
    grads = jax.grad(lambda q, k, v: step.IdentityCostAttention(None, rngs=nnx.Rngs(0))(
        q, k, v, None, deterministic=True).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(bool(jnp.all(g != 0)) for g in grads)  # q and k projections get a gradient too


def test_rounds_are_interleaved_and_rotated():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name, self.times, self.cpu_times, self.last_cpu = name, [], [], 0.0

        def call(self):
            calls.append(self.name)
            self.last_cpu += 1
            return 0.001

    timed = {(name, "step"): Fake(name) for name in "abc"}
    step.run_rounds(timed, rounds=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(entry.times) == 3 for entry in timed.values())
    assert all(entry.cpu_times == [2, 3, 4] for entry in timed.values())  # the timed calls' CPU times only


def test_task_vocabularies():
    cfg = step.compose_config(["task=listops"])
    assert task_vocab_size(cfg.task) == 17
    assert task_vocab_size(step.compose_config(["task=listops", "task.tokenizer=legacy_alnum"]).task) == 16
    assert task_vocab_size(step.compose_config(["task=text"]).task) == 257
    assert task_vocab_size(step.compose_config(["task=image"]).task) == 256


@pytest.mark.parametrize("vocab,params", [(17, 208_842), (32, 209_802)])
def test_pytorch_lineage_listops_parameter_count(vocab, params):
    """docs/data.md: 208,842 here (17-row vocabulary) vs 209,802 with the PyTorch configs' 32 rows,
    at length 2048; the difference is 15 x 64 embedding entries."""
    cfg = step.compose_config(["protocol=pytorch_lineage", "task=listops", "task.max_length=2048"])
    model = nnx.eval_shape(lambda: build_model(cfg, vocab, build_attention(task_attention_config(cfg))[1]))
    assert count_parameters(model) == params


def test_step_is_data_parallel_over_every_device(tmp_path):
    """With two host devices the benchmarked step splits the batch's rows over both, as training does."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-m", "lra.bench.step", "--attention", "softmax", "--rounds", "1", "--warmup", "0",
                    "--output-root", str(tmp_path), "--name", "two", *TINY], check=True, env=env,
                   capture_output=True, text=True)
    rows = read_csv(tmp_path / "cpu" / "two" / "step.csv")
    assert rows["softmax"]["status"] == "ok" and rows["softmax"]["devices"] == "2"
    assert "over 2 device(s)" in (tmp_path / "cpu" / "two" / "step.md").read_text()
    provenance = json.loads((tmp_path / "cpu" / "two" / "provenance.json").read_text())
    assert provenance["device_count"] == 2
