"""Gradient accumulation and rematerialisation give the full-batch update.

``train.grad_accum_steps`` splits the global batch into micro-batches summed inside the compiled
step; with dropout off the updated parameters equal the full-batch ones to float tolerance, with
dropout on each micro-batch draws its own masks. A non-finite micro-batch still trips the
divergence guard (its loss and gradient norm are not finite).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lra.build import build_attention, build_model
from lra.training.loop import _check_finite, DivergenceError
from lra.training.optimizer import build_optimizer
from lra.training.steps import compile_step, make_train_step, micro_batches

VOCAB = 20


def _parts(compose, *overrides):
    cfg = compose("model.dropout_rate=0", "model.attention_dropout_rate=0", *overrides)
    _, attention, _ = build_attention(cfg.attention)
    model = build_model(cfg, VOCAB, attention)
    tx, _ = build_optimizer(cfg.optimizer, cfg.train.steps)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def _batch(rows=8, length=24, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(rows, length)).astype(np.int32)
    lengths = rng.integers(4, length + 1, size=rows)
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0  # padded tails of different lengths
    weights = np.ones(rows, np.float32)
    weights[-1] = 0.0  # a padding row, as in a last evaluation batch
    return {"tokens": tokens, "labels": rng.integers(0, 10, size=rows).astype(np.int32), "weights": weights}


def _flat(state) -> dict:
    return {"/".join(map(str, path)): np.asarray(jax.device_get(value.get_value() if hasattr(value, "get_value")
                                                                else value))
            for path, value in nnx.to_flat_state(state)}


def _step(model, optimizer, batch, accum_steps):
    """One compiled train step -> (parameters and Adam moments after it, metrics)."""
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    step = compile_step(make_train_step(model_graph, optimizer_graph, accum_steps), model_state, optimizer_state, batch)
    new_model, new_optimizer, metrics = step(model_state, optimizer_state, batch)
    params = _flat(nnx.state(nnx.merge(model_graph, new_model), nnx.Param))
    moments = {k: v for k, v in _flat(new_optimizer).items() if "/mu/" in k or "/nu/" in k}
    return {**params, **moments}, jax.device_get(metrics)


def test_micro_batches_take_strided_rows():
    batch = {"x": np.arange(8)}
    split = micro_batches(batch, 4)["x"]
    assert split.shape == (4, 2)
    np.testing.assert_array_equal(split[1], [1, 5])  # rows j, j+k: every device keeps rows of each micro-batch


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_accumulated_update_equals_full_batch_update(compose, accum_steps):
    batch = _batch()
    full, full_metrics = _step(*_parts(compose), batch, 1)
    accumulated, acc_metrics = _step(*_parts(compose), batch, accum_steps)
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(acc_metrics[key], full_metrics[key], rtol=2e-5, atol=1e-6)
    assert full.keys() == accumulated.keys() and any("/mu/" in key for key in full)
    for path, value in full.items():
        np.testing.assert_allclose(accumulated[path], value, rtol=1e-4, atol=1e-7, err_msg=path)
    # the step did produce gradients (Adam's first moment is (1 - b1) * gradient), so this is not vacuous
    assert max(float(np.abs(v).max()) for k, v in full.items() if "/mu/" in k) > 1e-4


def test_accumulation_with_dropout_draws_masks_per_micro_batch(compose):
    """Two micro-batches holding the same examples see different dropout masks, so their summed
    loss differs from twice one micro-batch's; the step stays reproducible from the same state."""
    one = _batch(rows=4)
    twice = {k: np.stack([v, v], axis=1).reshape(8, *v.shape[1:]) for k, v in one.items()}  # rows j, j+k equal
    model, optimizer = _parts(compose, "model.dropout_rate=0.5")
    accumulated = _step(model, optimizer, twice, 2)
    model2, optimizer2 = _parts(compose, "model.dropout_rate=0.5")
    again = _step(model2, optimizer2, twice, 2)
    np.testing.assert_array_equal(accumulated[1]["loss"], again[1]["loss"])  # same seed, same update
    model3, optimizer3 = _parts(compose, "model.dropout_rate=0.5")
    single = _step(model3, optimizer3, one, 1)
    # each micro-batch of `twice` is `one`; equal masks would make the mean loss equal single's
    assert abs(float(accumulated[1]["loss"]) - float(single[1]["loss"])) > 1e-6


def test_a_non_finite_micro_batch_trips_the_divergence_guard(compose):
    model, optimizer = _parts(compose)
    batch = _batch()
    # an infinite embedding makes every logit of the first micro-batch's rows non-finite
    params = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(params)
    path, variable = next((p, v) for p, v in flat if "embed" in "/".join(map(str, p)))
    value = np.asarray(variable.get_value()).copy()
    value[batch["tokens"][0, 0]] = np.inf
    variable.set_value(value)
    nnx.update(model, nnx.from_flat_state(flat))
    _, metrics = _step(model, optimizer, batch, 2)
    with pytest.raises(DivergenceError):
        _check_finite([metrics], 1, None)
