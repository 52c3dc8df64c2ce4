"""Fitting a global batch on one device: gradient accumulation and ``train.micro_batch: auto``.

``train.grad_accum_steps`` splits the global batch into micro-batches summed inside the compiled
step; with dropout off the update (parameters and Adam moments) equals the full-batch one to float
tolerance; with dropout on each micro-batch draws its own masks. A non-finite micro-batch still
trips the divergence guard. ``micro_batch: auto`` picks the largest micro-batch whose compiled
memory fits the limit, reports it, and refuses with the keys to change when nothing fits.
"""

from __future__ import annotations

import logging
import types

import jax
import numpy as np
import pytest
from flax import nnx

from lra.build import build_run
from lra.training.accumulation import choose_accumulation, fixed_accumulation, micro_batch_sizes
from lra.training.loop import DivergenceError, _check_finite
from lra.training.steps import compile_step, make_train_step, micro_batches

VOCAB = 20


def _parts(compose, *overrides):
    cfg = compose("model.dropout_rate=0", "model.attention_dropout_rate=0", *overrides)
    model, optimizer, _ = build_run(cfg, VOCAB)
    return model, optimizer


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


def _compiled(model, optimizer, batch, accum_steps):
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    step = compile_step(make_train_step(model_graph, optimizer_graph, accum_steps), model_state, optimizer_state, batch)
    return step, model_graph, model_state, optimizer_state


def _step(model, optimizer, batch, accum_steps):
    """One compiled train step -> (parameters and Adam moments after it, metrics)."""
    step, model_graph, model_state, optimizer_state = _compiled(model, optimizer, batch, accum_steps)
    new_model, new_optimizer, metrics = step(model_state, optimizer_state, batch)
    params = _flat(nnx.state(nnx.merge(model_graph, new_model), nnx.Param))
    moments = {k: v for k, v in _flat(new_optimizer).items() if "/mu/" in k or "/nu/" in k}
    return {**params, **moments}, jax.device_get(metrics)


def test_micro_batches_take_strided_rows():
    split = micro_batches({"x": np.arange(8)}, 4)["x"]
    assert split.shape == (4, 2)
    np.testing.assert_array_equal(split[1], [1, 5])  # rows j, j+k: every device keeps rows of each micro-batch


def test_accumulated_update_equals_full_batch_update(compose):
    batch = _batch()
    full, full_metrics = _step(*_parts(compose), batch, 1)
    accumulated, acc_metrics = _step(*_parts(compose), batch, 4)
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(acc_metrics[key], full_metrics[key], rtol=2e-5, atol=1e-6)
    assert full.keys() == accumulated.keys() and any("/mu/" in key for key in full)
    for path, value in full.items():
        np.testing.assert_allclose(accumulated[path], value, rtol=1e-4, atol=1e-7, err_msg=path)
    # the step did produce gradients (Adam's first moment is (1 - b1) * gradient), so this is not vacuous
    assert max(float(np.abs(v).max()) for k, v in full.items() if "/mu/" in k) > 1e-4


def test_accumulation_with_dropout_draws_masks_per_micro_batch(compose):
    """Two micro-batches holding the same examples see different dropout masks (their mean loss
    differs from one micro-batch's alone), and the step is reproducible from the same state."""
    one = _batch(rows=4)
    twice = {k: np.stack([v, v], axis=1).reshape(8, *v.shape[1:]) for k, v in one.items()}  # rows j, j+4 equal
    step, _, model_state, optimizer_state = _compiled(*_parts(compose, "model.dropout_rate=0.5"), twice, 2)
    first = jax.device_get(step(model_state, optimizer_state, twice)[2])
    again = jax.device_get(step(model_state, optimizer_state, twice)[2])
    assert first["loss"] == again["loss"]  # same state (RNG included), same update
    _, single = _step(*_parts(compose, "model.dropout_rate=0.5"), one, 1)
    assert abs(float(first["loss"]) - float(single["loss"])) > 1e-6  # equal masks would give equal losses


def test_a_non_finite_micro_batch_trips_the_divergence_guard(compose):
    model, optimizer = _parts(compose)
    batch = _batch()
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    _, variable = next((p, v) for p, v in flat if "embed" in "/".join(map(str, p)))
    value = np.asarray(variable.get_value()).copy()
    value[batch["tokens"][1, 0]] = np.inf  # row 1: in the second of 2 micro-batches only
    variable.set_value(value)
    nnx.update(model, nnx.from_flat_state(flat))
    _, metrics = _step(model, optimizer, batch, 2)
    with pytest.raises(DivergenceError, match="step 7"):
        _check_finite([metrics], 7, None)


def test_fixed_settings_resolve_or_name_the_key():
    assert fixed_accumulation(32, 1, None) == 1
    assert fixed_accumulation(32, 4, None) == 4
    assert fixed_accumulation(32, None, 8) == 4 and fixed_accumulation(32, 4, 8) == 4
    assert fixed_accumulation(32, 1, "auto") is None
    for steps, micro, devices, key in [(3, None, 1, "train.grad_accum_steps=3"), (1, 5, 1, "train.micro_batch=5"),
                                       (2, 8, 1, "disagree"), (8, None, 8, "does not split over 8 devices"),
                                       (0, None, 1, ">= 1"), (2, "auto", 1, "leave train.grad_accum_steps")]:
        with pytest.raises(ValueError, match=key):
            fixed_accumulation(32, steps, micro, devices)
    assert micro_batch_sizes(32, 4) == [32, 16, 8, 4]


class _FakeCompiled:
    """A compiled step whose XLA memory analysis reports ``bytes`` (temporaries)."""

    def __init__(self, accum_steps, bytes_):
        self.accum_steps, self.bytes = accum_steps, bytes_

    def memory_analysis(self):
        return types.SimpleNamespace(argument_size_in_bytes=0, output_size_in_bytes=0, alias_size_in_bytes=0,
                                     temp_size_in_bytes=self.bytes)


def _fake_compile(per_row_gib: float, calls: list):
    def compile_train(accum_steps):
        calls.append(accum_steps)
        return _FakeCompiled(accum_steps, int((32 // accum_steps) * per_row_gib * 2**30))
    return compile_train


def test_auto_picks_the_largest_micro_batch_that_fits_and_reports_it(caplog):
    calls = []
    with caplog.at_level(logging.INFO, logger="lra.training.accumulation"):
        compiled, plan = choose_accumulation(_fake_compile(1.0, calls), 32, 1, "auto", memory_limit_gb=10,
                                             memory_margin=0.1)
    # 1 GiB per row, 9 GiB usable: 32 and 16 rows do not fit, 8 rows do
    assert calls == [1, 2, 4] and compiled.accum_steps == 4
    assert (plan.micro_batch_size, plan.grad_accum_steps, plan.auto) == (8, 4, True)
    assert plan.record_fields() == {"grad_accum_steps": 4, "micro_batch_size": 8, "micro_batch_auto": True}
    assert "8 rows x 4 accumulation steps" in caplog.text
    _, plan = choose_accumulation(_fake_compile(1.0, []), 32, 1, "auto", devices=4, memory_limit_gb=10,
                                  memory_margin=0.5)
    assert plan.micro_batch_size == 4  # 5 GiB usable; micro-batches stay multiples of the device count
    _, plan = choose_accumulation(_fake_compile(0.01, []), 32, 1, "auto", memory_limit_gb=None,
                                  device_memory=lambda: 2**30)
    assert plan.grad_accum_steps == 1  # the whole batch fits the device's own memory


def test_auto_refuses_when_one_row_does_not_fit_and_names_the_keys():
    with pytest.raises(MemoryError, match="(?s)even a micro-batch of 1 row.*1 rows: 20.00 GiB.*model.remat=block"):
        choose_accumulation(_fake_compile(20.0, []), 32, 1, "auto", memory_limit_gb=16)
    with pytest.raises(ValueError, match="set train.memory_limit_gb"):
        choose_accumulation(_fake_compile(1.0, []), 32, 1, "auto", device_memory=lambda: None)


@pytest.mark.slow
def test_accumulation_lowers_xla_compiled_memory(compose):
    """The premise of auto: a smaller micro-batch needs less of XLA's compiled memory (real compiles)."""
    from lra.metrics import compiled_memory

    batch = _batch(rows=16, length=64)
    parts = _parts(compose, "model.emb_dim=32", "model.mlp_dim=64", "model.qkv_dim=32")
    full = compiled_memory(_compiled(*parts, batch, 1)[0])["xla_temp_bytes"]
    micro = compiled_memory(_compiled(*parts, batch, 8)[0])["xla_temp_bytes"]
    assert micro < full / 2, (micro, full)


def test_remat_gives_the_same_outputs_and_gradients(compose):
    """``model.remat`` recomputes each block in the backward pass: with dropout on (the recomputed
    masks must be the ones of the forward pass) loss and gradients equal those without it."""
    batch = _batch(rows=4)

    def loss_and_grads(remat: str):
        model, _ = _parts(compose, "model.dropout_rate=0.3", f"model.remat={remat}")
        tokens = batch["tokens"]

        @nnx.jit
        def step(model):
            def loss_fn(model):
                logits = model(tokens, deterministic=False)
                return optax_loss(logits, batch["labels"] % logits.shape[-1])
            return nnx.value_and_grad(loss_fn)(model)

        loss, grads = step(model)
        return float(loss), _flat(grads)

    import optax

    def optax_loss(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    plain_loss, plain = loss_and_grads("none")
    remat_loss, remat = loss_and_grads("block")
    assert plain_loss == pytest.approx(remat_loss, rel=1e-6)
    assert plain.keys() == remat.keys()
    for path, value in plain.items():
        np.testing.assert_allclose(remat[path], value, rtol=1e-5, atol=1e-7, err_msg=path)


def test_remat_reaches_both_towers_of_a_dual_encoder(compose):
    model, _ = _parts(compose, "task=retrieval", "model.remat=block")
    assert model.tower.remat_blocks and not _parts(compose, "task=retrieval")[0].tower.remat_blocks


def test_memory_plan_compiles_without_data_and_names_the_fitting_micro_batch(tmp_path):
    from lra.memory_plan import plan
    from tests.conftest import TINY_OVERRIDES

    result = plan([*TINY_OVERRIDES, f"paths.data_dir={tmp_path}"], [1000.0], vocab_size=20)
    [(micro, steps, needed)] = result["rows"]  # the whole batch fits 1000 GiB: one compile, then stop
    assert (micro, steps) == (8, 1) and 0 < needed < 2**30 and result["fits"] == {1000.0: 8}
    assert "smoke listops/softmax: batch 8 x 64 tokens" in result["config"]
    assert not any(tmp_path.iterdir())  # no data was read or prepared
