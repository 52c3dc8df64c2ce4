"""The training step pinned down: golden values of two steps, and a logging window without host syncs.

The golden values catch a silent change to what a step computes (loss, masking, dropout draws,
optimizer, schedule, initialisation): a deliberate change updates them. To regenerate, run
``python -m tests.test_train_step`` and paste the printed numbers into ``GOLDEN`` with a line in the
commit saying why they changed.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lra.build import build_attention, build_model
from lra.data import batches as batching
from lra.data.token_cache import TokenSplit
from lra.training.optimizer import build_optimizer
from lra.training.steps import compile_step, make_train_step

VOCAB, ROWS, LENGTH = 17, 8, 32

# Two steps of the tiny ListOps smoke model (softmax attention, dropout on) from seed 0 on the batch
# of _golden_batch(): (loss, gradient norm) of step 1 and of step 2 (after one Adam update).
# Computed once on a CPU (jax 0.10.2, float32); regenerate as the module docstring says.
GOLDEN = [2.564279079437256, 2.847299575805664, 2.7409589290618896, 3.0064098834991455]
RTOL = 1e-4


def _model_and_optimizer(compose):
    cfg = compose("attention=softmax")
    _, attention, _ = build_attention(cfg.attention)
    model = build_model(cfg, VOCAB, attention)  # initialised from cfg.seed (0)
    tx, _ = build_optimizer(cfg.optimizer, cfg.train.steps)
    return cfg, model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def _golden_batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(ROWS, LENGTH)).astype(np.int32)
    lengths = rng.integers(5, LENGTH + 1, size=ROWS)
    tokens[np.arange(LENGTH)[None, :] >= lengths[:, None]] = 0
    weights = np.ones(ROWS, np.float32)
    weights[-1] = 0.0
    return {"tokens": tokens, "labels": rng.integers(0, 10, size=ROWS).astype(np.int32), "weights": weights}


def _two_steps(compose) -> list[float]:
    _, model, optimizer = _model_and_optimizer(compose)
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    batch = jax.device_put(_golden_batch())
    step = compile_step(make_train_step(model_graph, optimizer_graph), model_state, optimizer_state, batch)
    values = []
    for _ in range(2):
        model_state, optimizer_state, metrics = step(model_state, optimizer_state, batch)
        values += [float(metrics["loss"]), float(metrics["grad_norm"])]
    return values


def test_two_training_steps_give_the_recorded_loss_and_gradient_norm(compose):
    values = _two_steps(compose)
    np.testing.assert_allclose(values, GOLDEN, rtol=RTOL)
    assert values[2] != values[0]  # the update changed the parameters


def test_a_logging_window_makes_no_implicit_host_transfer(compose):
    """Between two logging points the loop only calls the compiled step on prefetched device batches
    and keeps the metrics on the device (lra/training/loop.py). Under jax.transfer_guard("disallow")
    an implicit transfer in that stretch raises: on every backend a host value fed to the device (a
    host batch handed to the step, a Python step count or learning rate computed per step), and on
    an accelerator also a device value read back (a float() of a loss; the CPU backend does not
    guard those, its device memory being the host's). The one explicit jax.device_get at the
    window's end is allowed."""
    _, model, optimizer = _model_and_optimizer(compose)
    rng = np.random.default_rng(1)
    sequences = [rng.integers(1, VOCAB, size=int(n)) for n in rng.integers(5, LENGTH, size=40)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])])
    split = TokenSplit("train", np.concatenate(sequences).astype(np.uint8), offsets, rng.integers(0, 10, size=40))
    batches = batching.prefetch_to_device(batching.train_batches(split, ROWS, LENGTH, seed=0), size=2)
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    batch = next(batches)
    step = compile_step(make_train_step(model_graph, optimizer_graph), model_state, optimizer_state, batch,
                        donate_argnums=(0, 1))
    pending, window = [], 4
    with jax.transfer_guard("disallow"):
        for _ in range(window):
            model_state, optimizer_state, metrics = step(model_state, optimizer_state, batch)
            pending.append(metrics)
            batch = next(batches)
        values = jax.device_get(pending)  # the window's one (explicit) sync
    assert len(values) == window and all(np.isfinite(v["loss"]) and np.isfinite(v["grad_norm"]) for v in values)
    assert all(isinstance(m["loss"], jax.Array) for m in pending)  # kept on the device until the window's end
    # the guard is real: the same step fed a host batch (what prefetching avoids) is refused
    host_batch = jax.device_get(batch)
    with jax.transfer_guard("disallow"), pytest.raises(Exception, match="(?i)disallowed host-to-device"):
        step(model_state, optimizer_state, host_batch)


if __name__ == "__main__":  # regenerate GOLDEN
    import tempfile
    from pathlib import Path

    from tests.conftest import compose_tiny

    with tempfile.TemporaryDirectory() as tmp:
        print("GOLDEN =", _two_steps(lambda *o: compose_tiny(Path(tmp), *o)))
