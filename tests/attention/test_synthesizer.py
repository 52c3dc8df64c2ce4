"""Synthesizer: float64 brute-force reference of its own math, the length refusal, memory scaling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.base import AttentionSpec
from tests.attention.references import softmax_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


def _inputs(seed=0, batch=2, length=9, heads=2, dim=4):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, length, heads, dim)) for _ in range(3))
    mask = np.ones((batch, length), bool)
    mask[0, 6:] = False
    mask[1, 2] = False  # a hole
    return q, k, v, mask


def synthesizer_brute_force(q, k, v, mask, synthetic, dot_product=True):
    """out_i = sum_{j real} exp(l_ij) v_j / sum_{j real} exp(l_ij), l_ij = R_ij (+ q_i.k_j / sqrt(d))."""
    batch, n, heads, d = q.shape
    out = np.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                logits = np.array([synthetic[h, i, j] + (q[b, i, h] @ k[b, j, h] / np.sqrt(d) if dot_product else 0)
                                   for j in range(n)])
                real = mask[b]
                w = np.exp(logits[real] - logits[real].max())
                out[b, i, h] = (w / w.sum()) @ v[b, real, h]
    return out


@pytest.mark.parametrize("overrides", [{}, {"dot_product": False},
                                       {"mode": "factorized_random", "k": 3},
                                       {"mode": "factorized_random", "k": 3, "dot_product": False}])
def test_float64_matches_brute_force(overrides):
    q, k, v, mask = _inputs()
    with jax.enable_x64(True):
        attention = make_attention("synthesizer", AttentionSpec(num_heads=2, head_dim=4, max_length=12), **overrides)
        params = {name: np.asarray(getattr(attention, name)[...], np.float64)
                  for name in ("random", "random1", "random2") if hasattr(attention, name)}
        if "random" in params:
            full = params["random"]
        else:
            full = np.einsum("hlk,hkm->hlm", params["random1"], params["random2"])
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v, mask)), deterministic=True))
    reference = synthesizer_brute_force(q, k, v, mask, full[:, :9, :9], overrides.get("dot_product", True))
    np.testing.assert_allclose(out, reference, rtol=1e-10, atol=1e-12)


def test_zero_synthetic_logits_give_softmax():
    """R = 0 with the dot product is exactly softmax attention."""
    q, k, v, mask = _inputs(seed=1)
    with jax.enable_x64(True):
        attention = make_attention("synthesizer", AttentionSpec(num_heads=2, head_dim=4, max_length=9))
        attention.random[...] = jnp.zeros_like(attention.random[...])
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v, mask)), deterministic=True))
    np.testing.assert_allclose(out, softmax_reference(q, k, v, mask), rtol=1e-10, atol=1e-12)


def test_official_initialisation_bound():
    """Glorot-uniform on (heads, N, N): |R| <= sqrt(6 / (heads * 2N)), and R fills that range."""
    attention = make_attention("synthesizer", AttentionSpec(num_heads=4, head_dim=4, max_length=50))
    r = np.asarray(attention.random[...])
    bound = np.sqrt(6 / (4 * 100))
    assert r.shape == (4, 50, 50) and np.abs(r).max() <= bound and np.abs(r).max() > 0.95 * bound


def test_longer_input_is_refused_naming_the_config_key():
    attention = make_attention("synthesizer", AttentionSpec(num_heads=2, head_dim=4, max_length=8))
    q = jnp.ones((1, 9, 2, 4))
    with pytest.raises(ValueError, match="task.max_length"):
        attention(q, q, q, jnp.ones((1, 9), bool), deterministic=True)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="attention.mode"):
        make_attention("synthesizer", AttentionSpec(num_heads=2, head_dim=4, max_length=8), mode="dense")


def test_memory_grows_quadratically():
    """The n x n logits are materialised: about 4x memory per doubling of the length."""
    attention = make_attention("synthesizer", AttentionSpec(num_heads=2, head_dim=16, max_length=1024))
    ratios = growth_per_doubling(attention, lengths=(256, 512, 1024))
    assert all(r > 3.0 for r in ratios), ratios
