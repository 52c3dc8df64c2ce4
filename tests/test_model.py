"""The common encoder: shapes, padding invariance, parameter counts, positional tables, dtypes, and the
attention's rematerialisation (model.remat)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.linear import LinearAttention
from attention.softmax import SoftmaxAttention
from lra.model import Encoder, count_parameters, sinusoidal_table


def tiny_encoder(attention=SoftmaxAttention, **overrides):
    kwargs = dict(vocab_size=17, num_classes=10, max_length=40, attention=attention, emb_dim=16,
                  num_heads=2, qkv_dim=16, mlp_dim=24, num_layers=2, rngs=nnx.Rngs(params=0, dropout=1))
    kwargs.update(overrides)
    return Encoder(**kwargs)


def padded_tokens(real_tokens: np.ndarray, total: int) -> jnp.ndarray:
    out = np.zeros((real_tokens.shape[0], total), np.int32)
    out[:, : real_tokens.shape[1]] = real_tokens
    return jnp.asarray(out)


# Each option once in the default suite; every combination with `make test-slow`.
@pytest.mark.parametrize("pooling, pos_emb", [
    ("cls", "sinusoidal"), ("mean", "learned"),
    pytest.param("mean", "sinusoidal", marks=pytest.mark.slow), pytest.param("cls", "learned", marks=pytest.mark.slow)])
def test_logits_shape(pooling, pos_emb):
    model = tiny_encoder(pooling=pooling, pos_emb=pos_emb)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 17, (3, 40)), jnp.int32)
    assert model(tokens, deterministic=True).shape == (3, 10)
    assert model(tokens, deterministic=False).shape == (3, 10)


@pytest.mark.parametrize("attention, pooling", [
    (SoftmaxAttention, "cls"), (LinearAttention, "cls"), (LinearAttention, "mean"),
    pytest.param(SoftmaxAttention, "mean", marks=pytest.mark.slow)])
def test_encoder_output_is_padding_invariant(attention, pooling):
    model = tiny_encoder(attention, pooling=pooling)
    real = np.random.default_rng(1).integers(1, 17, (2, 17))
    logits = [np.asarray(model(padded_tokens(real, total), deterministic=True)) for total in (17, 25, 40)]
    for other in logits[1:]:
        np.testing.assert_allclose(other, logits[0], rtol=1e-5, atol=1e-5)


def test_unmasked_mean_quirk_depends_on_padding():
    """The older harnesses' mean (sum / padded length) is NOT padding invariant: the quirk is real."""
    model = tiny_encoder(pooling="mean", mean_pool_includes_padding=True)
    real = np.random.default_rng(2).integers(1, 17, (2, 17))
    short = np.asarray(model(padded_tokens(real, 17), deterministic=True))
    long = np.asarray(model(padded_tokens(real, 40), deterministic=True))
    assert np.abs(short - long).max() > 1e-3


def test_pixel_tasks_treat_zero_as_a_real_token():
    model = tiny_encoder(pooling="mean", pad_id=None)
    tokens = jnp.zeros((1, 40), jnp.int32)
    assert bool(model.token_mask(tokens).all())
    masked_model = tiny_encoder(pooling="mean")
    assert not bool(masked_model.token_mask(tokens).any())


def test_official_listops_parameter_count():
    """Counted independently from the official config (bias-free QKVO, CLS, sinusoidal positions)."""
    emb, mlp, layers, vocab, classes = 512, 1024, 4, 17, 10
    per_layer = 2 * (2 * emb) + 4 * emb * emb + (emb * mlp + mlp) + (mlp * emb + emb)
    expected = vocab * emb + emb + layers * per_layer + 2 * emb + (emb * mlp + mlp) + (mlp * classes + classes)
    model = Encoder(vocab_size=vocab, num_classes=classes, max_length=2000, attention=SoftmaxAttention,
                    emb_dim=emb, num_heads=8, qkv_dim=512, mlp_dim=mlp, num_layers=layers, rngs=nnx.Rngs(0))
    assert count_parameters(model) == expected
    assert abs(expected - 8.95e6) < 0.01e6  # reference: ~8.95M


def test_sinusoidal_table_formula():
    table = sinusoidal_table(50, 8)
    position, i = 37, 3
    frequency = 10000.0 ** (-2 * i / 8)
    assert table[position, 2 * i] == pytest.approx(np.sin(position * frequency), abs=1e-6)
    assert table[position, 2 * i + 1] == pytest.approx(np.cos(position * frequency), abs=1e-6)


def test_bfloat16_compute_keeps_fp32_parameters():
    model = tiny_encoder(dtype="bfloat16")
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, 17, (2, 40)), jnp.int32)
    hidden, _ = model.encode(tokens, deterministic=True)
    assert hidden.dtype == jnp.bfloat16
    logits = model(tokens, deterministic=True)
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_invalid_choices_name_their_config_key():
    with pytest.raises(ValueError, match="model.pooling"):
        tiny_encoder(pooling="max")
    with pytest.raises(ValueError, match="model.pos_emb"):
        tiny_encoder(pos_emb="rotary")
    with pytest.raises(ValueError, match="model.qkv_dim"):
        tiny_encoder(qkv_dim=15)
    with pytest.raises(ValueError, match="model.remat"):
        tiny_encoder(remat="everything")


def test_dropout_makes_training_stochastic_and_evaluation_deterministic():
    model = tiny_encoder(dropout_rate=0.3)
    tokens = jnp.asarray(np.random.default_rng(4).integers(1, 17, (2, 40)), jnp.int32)
    a, b = model(tokens, deterministic=True), model(tokens, deterministic=True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c, d = model(tokens, deterministic=False), model(tokens, deterministic=False)
    assert not np.allclose(np.asarray(c), np.asarray(d))


class ScaledValueBias(nnx.Module):
    """A toy positional-bias add-on: a learned per-head scale times the mean of real values."""

    def __init__(self, spec, *, rngs):
        self.scale = nnx.Param(jnp.full((spec.num_heads, 1), 0.5))

    def __call__(self, v, key_mask):
        weights = key_mask[:, :, None, None].astype(v.dtype)
        mean = (v * weights).sum(1, keepdims=True) / jnp.maximum(weights.sum(1, keepdims=True), 1.0)
        return jnp.broadcast_to(self.scale[...] * mean, v.shape)


def test_positional_bias_hook_is_added_per_layer_and_keeps_padding_invariance():
    plain = tiny_encoder(pooling="mean")
    biased = tiny_encoder(pooling="mean", positional_bias=ScaledValueBias)
    assert sum(isinstance(m, ScaledValueBias) for _, m in nnx.iter_modules(biased)) == 2  # one per layer
    real = np.random.default_rng(6).integers(1, 17, (2, 17))
    a = np.asarray(plain(padded_tokens(real, 17), deterministic=True))
    b = np.asarray(biased(padded_tokens(real, 17), deterministic=True))
    assert np.abs(a - b).max() > 1e-4  # the add-on changes the model
    c = np.asarray(biased(padded_tokens(real, 40), deterministic=True))
    np.testing.assert_allclose(c, b, rtol=1e-5, atol=1e-5)


# --- model.remat: recompute the attention in the backward pass --------------------------------------

def _train_step(model, tokens, labels):
    """Loss and gradients of one training-mode pass (dropout and random redraws on), jitted like the
    train step; returns them with the model state after the call (RNG counters advanced)."""
    graph, state = nnx.split(model)

    @jax.jit
    def step(state):
        model = nnx.merge(graph, state)
        loss = lambda model: optax_free_cross_entropy(model(tokens, deterministic=False), labels)
        value, grads = nnx.value_and_grad(loss)(model)
        return value, grads, nnx.state(model)

    return step(state)


def optax_free_cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


@pytest.mark.parametrize("attention", ["softmax", pytest.param("performer", marks=pytest.mark.slow)])
def test_remat_attention_changes_no_number(attention):
    """Same loss, gradients and RNG state with the attention rematerialised: softmax with attention
    dropout 0.3, Performer redrawing its features at every call (both draw inside the recomputed call)."""
    from lra.build import build_attention
    from lra.registry import load_attention_config

    _, factory, _ = build_attention(load_attention_config(attention))
    tokens = padded_tokens(np.random.default_rng(5).integers(1, 17, (2, 30)), 40)
    labels = jnp.array([1, 7])
    runs = []
    for remat in ("none", "attention"):
        model = tiny_encoder(factory, attention_dropout_rate=0.3, remat=remat,
                             rngs=nnx.Rngs(params=0, dropout=1, attention=2))
        runs.append(_train_step(model, tokens, labels))
    (loss, grads, state), (loss_r, grads_r, state_r) = runs
    np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-6)
    for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(np.asarray(g_r), np.asarray(g), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_r)):  # counters advanced alike
        a, b = (jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in (a, b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_remat_attention_keeps_no_attention_weights_for_the_backward_pass():
    """What the backward pass keeps from the forward (jax.ad_checkpoint.print_saved_residuals): the softmax
    layers' (batch, heads, n, n) logits, weights and dropout masks without remat, none of them with
    ``remat=attention`` (they are recomputed)."""
    import contextlib
    import io
    import re

    from jax.ad_checkpoint import print_saved_residuals

    n = 41  # 40 tokens + CLS
    tokens = padded_tokens(np.random.default_rng(6).integers(1, 17, (2, 30)), 40)
    labels = jnp.array([1, 7])
    square = {}
    for remat in ("none", "attention"):
        model = tiny_encoder(remat=remat, attention_dropout_rate=0.1)
        graph, state = nnx.split(model)

        def loss(state):
            return optax_free_cross_entropy(nnx.merge(graph, state)(tokens, deterministic=False), labels)

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            print_saved_residuals(loss, state)
        square[remat] = re.findall(rf"^\w+\[[\d,]*{n},{n}\].*$", printed.getvalue(), flags=re.M)
    assert len(square["none"]) >= 2 * 2, square["none"]  # at least weights and dropout mask, 2 layers
    assert square["attention"] == [], square["attention"]
