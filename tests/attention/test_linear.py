"""Linear (elu+1) attention against its float64 brute-force reference and its O(n) memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from attention.base import AttentionSpec
from lra.registry import ATTENTION_CONFIGS
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


# --- legacy forms (quirk A7) -----------------------------------------------------------------------

def _padded_inputs(real=7, total=12, seed=1):
    """Inputs with ``real`` tokens followed by large garbage padding up to ``total`` positions."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(2, total, 2, 4)) for _ in range(3))
    for t in (q, k, v):
        t[:, real:] *= 20.0
    mask = np.broadcast_to(np.arange(total) < real, (2, total))
    return q, k, v, mask


def _linear(spec_length=12, **flags):
    return make_attention("linear", AttentionSpec(num_heads=2, head_dim=4, max_length=spec_length), **flags)


def test_legacy_flags_are_off_by_default():
    config = OmegaConf.load(ATTENTION_CONFIGS / "linear.yaml")
    assert config.legacy_unnormalised is False and config.legacy_ignore_mask is False


def test_legacy_unnormalised_matches_brute_force():
    """Nyström harness: out_i = n^-1/2 sum_j m_j phi(q_i).phi(k_j) v_j, n the padded length."""
    q, k, v, mask = _padded_inputs()
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))
    n = q.shape[1]
    reference = np.zeros_like(v)
    for b in range(2):
        for h in range(2):
            for i in range(n):
                for j in range(n):
                    if mask[b, j]:
                        reference[b, i, h] += phi(q[b, i, h]) @ phi(k[b, j, h]) / np.sqrt(n) * v[b, j, h]
    with jax.enable_x64(True):
        out = np.asarray(_linear(legacy_unnormalised=True)(*(jnp.asarray(t) for t in (q, k, v, mask)),
                                                             deterministic=True))
    np.testing.assert_allclose(out, reference, rtol=1e-10, atol=1e-12)


def test_legacy_unnormalised_depends_on_the_padded_length():
    """Not padding invariant: adding padding rescales real outputs by sqrt(n_short / n_long)."""
    q, k, v, mask = (jnp.asarray(t, jnp.float32) for t in _padded_inputs(real=7, total=12))
    attention = _linear(legacy_unnormalised=True)
    long = np.asarray(attention(q, k, v, mask, deterministic=True)[:, :7])
    short = np.asarray(attention(q[:, :7], k[:, :7], v[:, :7], mask[:, :7], deterministic=True))
    np.testing.assert_allclose(long, short * np.sqrt(7 / 12), rtol=1e-5, atol=1e-6)
    assert not np.allclose(long, short, rtol=1e-2)


def test_legacy_ignore_mask_uses_padded_keys():
    """Official LRA: Eq. 6 over every position, so real outputs depend on the padding content."""
    q, k, v, mask = _padded_inputs()
    attention = _linear(legacy_ignore_mask=True)
    with jax.enable_x64(True):
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v, mask)), deterministic=True))
    np.testing.assert_allclose(out, linear_reference(q, k, v, np.ones_like(mask)), rtol=1e-10, atol=1e-12)
    masked = linear_reference(q, k, v, mask)
    assert np.abs(out[:, :7] - masked[:, :7]).max() > 1e-2  # the default (masked) form differs at real tokens
