"""Linear (elu+1) attention against its float64 brute-force reference and its O(n) memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention.base import AttentionSpec
from tests.attention.references import linear_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


def test_float64_matches_brute_force():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 9, 2, 4)) for _ in range(3))
    mask = np.ones((2, 9), bool)
    mask[0, 6:] = False
    mask[1, 2] = False
    with jax.enable_x64(True):
        attention = make_attention("linear", AttentionSpec(num_heads=2, head_dim=4, max_length=9))
        out = np.asarray(attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask),
                                   deterministic=True))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, linear_reference(q, k, v, mask), rtol=1e-10, atol=1e-12)


def test_memory_grows_linearly():
    attention = make_attention("linear", AttentionSpec(num_heads=2, head_dim=16, max_length=2048))
    for ratio in growth_per_doubling(attention, backward=True):
        assert ratio < 2.5, ratio
