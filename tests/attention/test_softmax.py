"""Softmax attention against its float64 brute-force reference, its O(n^2) memory, its GPU path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.base import AttentionSpec
from attention.softmax import SoftmaxAttention, apply_weights, softmax_attention_weights
from tests.attention.references import softmax_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling
from lra.build import ConfigError


def _inputs(dtype, seed=0, batch=2, length=11, heads=3, dim=5):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, length, heads, dim)).astype(dtype) for _ in range(3))
    mask = np.ones((batch, length), bool)
    mask[1, 7:] = False
    mask[0, 3] = False  # a hole in the middle: masks need not be right padding for the XLA path
    return q, k, v, mask


def test_float64_matches_brute_force():
    q, k, v, mask = _inputs(np.float64)
    with jax.enable_x64(True):
        attention = make_attention("softmax", AttentionSpec(num_heads=3, head_dim=5, max_length=11))
        out = np.asarray(attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask),
                                   deterministic=True))
        explicit = np.asarray(apply_weights(softmax_attention_weights(q, k, mask), jnp.asarray(v)))
    reference = softmax_reference(q, k, v, mask)
    # The explicit-weights path (the XLA implementation, with or without dropout) is exact in float64.
    np.testing.assert_allclose(explicit, reference, rtol=1e-10, atol=1e-12)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, reference, rtol=1e-10, atol=1e-12)


def test_dropout_only_in_training():
    spec = AttentionSpec(num_heads=3, head_dim=5, max_length=11, dropout_rate=0.5)
    attention = make_attention("softmax", spec)
    q, k, v, mask = (jnp.asarray(t) for t in _inputs(np.float32))
    evaluation = attention(q, k, v, mask, deterministic=True)
    np.testing.assert_allclose(np.asarray(evaluation), softmax_reference(q, k, v, mask), rtol=1e-4, atol=1e-5)
    training = attention(q, k, v, mask, deterministic=False)
    assert np.isfinite(np.asarray(training)).all()
    assert not np.allclose(np.asarray(training), np.asarray(evaluation), atol=1e-3)


def test_memory_grows_quadratically():
    attention = make_attention("softmax", AttentionSpec(num_heads=2, head_dim=16, max_length=2048))
    for ratio in growth_per_doubling(attention):
        assert 3.0 < ratio < 5.0, ratio  # doubling n quadruples the n x n logits


def test_flash_path_is_refused_on_cpu_with_a_clear_error():
    with pytest.raises(ConfigError, match="runs on gpu .*backend here is cpu"):
        make_attention("softmax_flash", AttentionSpec(num_heads=2, head_dim=32, max_length=64))


def test_flash_path_refuses_attention_dropout():
    spec = AttentionSpec(num_heads=2, head_dim=32, max_length=64, dropout_rate=0.1)
    with pytest.raises(ValueError, match="model.attention_dropout_rate"):
        SoftmaxAttention(spec, rngs=None, implementation="cudnn")


def test_unknown_implementation_names_the_key():
    with pytest.raises(ValueError, match="attention.implementation"):
        SoftmaxAttention(AttentionSpec(num_heads=1, head_dim=8, max_length=8), rngs=None, implementation="tpu")
