"""Contract tests every registered attention must pass (parametrised over configs/attention/)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.base import AttentionSpec
from tests.attention.registry_fixtures import CPU_ATTENTIONS, make_attention

SPEC = AttentionSpec(num_heads=2, head_dim=8, max_length=48)


def random_qkv(seed, batch, length, spec=SPEC):
    keys = jax.random.split(jax.random.key(seed), 3)
    shape = (batch, length, spec.num_heads, spec.head_dim)
    return [jax.random.normal(key, shape) for key in keys]


def test_registry_lists_the_baselines():
    assert {"softmax", "linear"} <= set(CPU_ATTENTIONS)
    assert "softmax_flash" not in CPU_ATTENTIONS  # GPU-only: skipped on a CPU


@pytest.mark.parametrize("name", CPU_ATTENTIONS)
def test_output_shape_and_dtype(name):
    attention = make_attention(name, SPEC)
    q, k, v = random_qkv(0, 3, 20)
    out = attention(q, k, v, jnp.ones((3, 20), bool), deterministic=True)
    assert out.shape == q.shape and out.dtype == q.dtype


@pytest.mark.parametrize("name", CPU_ATTENTIONS)
def test_padding_invariance(name):
    """Outputs at real tokens do not depend on how much padding follows, nor on its content."""
    attention = make_attention(name, SPEC)
    real = 13
    q, k, v = random_qkv(1, 2, real)
    outputs = []
    for total, garbage_seed in ((real, 0), (29, 5), (48, 7)):
        pad = [jax.random.normal(key, (2, total - real, *q.shape[2:])) * 50.0
               for key in jax.random.split(jax.random.key(garbage_seed), 3)]
        padded = [jnp.concatenate([t, p], axis=1) for t, p in zip((q, k, v), pad)]
        mask = jnp.arange(total)[None, :] < real
        out = attention(*padded, jnp.broadcast_to(mask, (2, total)), deterministic=True)
        assert np.isfinite(np.asarray(out)).all()
        outputs.append(np.asarray(out[:, :real]))
    for out in outputs[1:]:
        np.testing.assert_allclose(out, outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CPU_ATTENTIONS)
def test_finite_gradients_including_fully_padded_example(name):
    attention = make_attention(name, SPEC)
    q, k, v = random_qkv(2, 2, 16)
    mask = jnp.stack([jnp.arange(16) < 9, jnp.zeros(16, bool)])  # second example: no real token

    def loss(q, k, v):
        out = attention(q, k, v, mask, deterministic=True)
        return (out * mask[:, :, None, None]).sum() + 1e-3 * (out ** 2).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
    assert float(jnp.abs(grads[0][0, :9]).sum()) > 0  # gradients actually flow to real queries


@pytest.mark.parametrize("name", CPU_ATTENTIONS)
def test_deterministic_evaluation_is_repeatable(name):
    attention = make_attention(name, SPEC)
    q, k, v = random_qkv(3, 2, 16)
    mask = jnp.ones((2, 16), bool)
    first = attention(q, k, v, mask, deterministic=True)
    second = attention(q, k, v, mask, deterministic=True)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


@pytest.mark.parametrize("name", CPU_ATTENTIONS)
def test_batch_independence(name):
    """Changing one example does not change another's output (no batch-global statistics)."""
    attention = make_attention(name, SPEC)
    q, k, v = random_qkv(4, 3, 16)
    mask = jnp.ones((3, 16), bool).at[2, 11:].set(False)
    reference = attention(q, k, v, mask, deterministic=True)
    q2, k2, v2 = (t.at[0].multiply(7.0).at[0].add(3.0) for t in (q, k, v))
    changed = attention(q2, k2, v2, mask.at[0, 5:].set(False), deterministic=True)
    np.testing.assert_allclose(np.asarray(changed[1:]), np.asarray(reference[1:]), rtol=1e-5, atol=1e-5)
