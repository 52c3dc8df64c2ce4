"""SIKF (shift-invariant exp-kernel linear attention) against its float64 quadratic form, its exact
shift invariance, stability at large inputs, padding, gradients and O(n) memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.base import AttentionSpec
from attention.sikf import sikf_attention
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling

SPEC = AttentionSpec(num_heads=2, head_dim=4, max_length=9)


def sikf_reference(q, k, v, key_mask, eps=1e-6, offset="none"):
    """Explicit double sum over queries and real keys of K(q, k) = sum_a exp(q_a + k_a), float64.

    ``offset`` applies the module's shifts, written out independently: ``max`` = per-dimension max
    M_a over the real keys, folded into the query row's shift c_i = max_a (q_ia + M_a); ``mean`` = mean(q) + mean(k) over all positions and d,
    subtracted from both; ``none`` = raw exp.
    """
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    batch, n, heads, d = q.shape
    out = np.zeros(v.shape)
    for b in range(batch):
        real = [j for j in range(n) if key_mask[b][j]]
        for h in range(heads):
            row_shift = np.zeros(n)  # subtracted from q_ia + k_ja
            if offset == "max":
                key_max = [max((k[b, j, h, a] for j in real), default=0.0) for a in range(d)]
                row_shift = np.array([max(q[b, i, h, a] + key_max[a] for a in range(d)) for i in range(n)])
            elif offset == "mean":
                row_shift = np.full(n, 2 * (q[b, :, h].mean() + k[b, :, h].mean()))
            for i in range(n):
                numerator, denominator = np.zeros(v.shape[-1]), 0.0
                for j in real:
                    kernel = sum(np.exp(q[b, i, h, a] + k[b, j, h, a] - row_shift[i]) for a in range(d))
                    numerator += kernel * v[b, j, h]
                    denominator += kernel
                out[b, i, h] = numerator / (denominator + eps)
    return out


def random_inputs(seed, batch=2, n=9, heads=2, d=4, scale=1.0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, n, heads, d)) for _ in range(3))
    mask = np.ones((batch, n), bool)
    mask[0, 6:] = False
    mask[-1, 2] = False  # a hole in the middle: masking is per key, not a length
    return q * scale, k * scale, v, mask


@pytest.mark.parametrize("offset", ["max", "mean"])
def test_float64_linear_ordering_matches_the_quadratic_form(offset):
    q, k, v, mask = random_inputs(0)
    with jax.enable_x64(True):
        attention = make_attention("sikf", SPEC, offset=offset)
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v, mask)), deterministic=True))
        exact = np.asarray(sikf_attention(*(jnp.asarray(t) for t in (q, k, v, mask)), eps=0.0, offset=offset))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, sikf_reference(q, k, v, mask, offset=offset), rtol=1e-10, atol=1e-12)
    # with eps = 0 the shifts cancel exactly: the raw, unshifted kernel gives the same attention
    np.testing.assert_allclose(exact, sikf_reference(q, k, v, mask, eps=0.0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("offset", ["max", "mean"])
def test_shift_invariance_with_eps_zero(offset):
    q, k, v, mask = random_inputs(1)
    rng = np.random.default_rng(2)
    row_shift = rng.normal(size=(2, 9, 2, 1)) * 3.0  # one constant per query row
    key_shift = rng.normal(size=(2, 1, 2, 1)) * 3.0  # one constant for all keys of an (example, head)
    with jax.enable_x64(True):
        run = lambda q, k: np.asarray(sikf_attention(*(jnp.asarray(t) for t in (q, k, v, mask)),
                                                     eps=0.0, offset=offset))
        base = run(q, k)
        np.testing.assert_allclose(run(q + row_shift, k), base, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(run(q, k + key_shift), base, rtol=1e-10, atol=1e-12)
        # a shift that differs between keys is not a symmetry: the test can fail
        per_key = rng.normal(size=(2, 9, 2, 1)) * 3.0
        assert np.abs(run(q, k + per_key) - base)[mask].max() > 1e-2


def test_max_and_mean_offsets_agree_at_ordinary_magnitudes():
    q, k, v, mask = random_inputs(3)
    args = [jnp.asarray(t, jnp.float32) for t in (q, k, v)] + [jnp.asarray(mask)]
    by_max = np.asarray(sikf_attention(*args, offset="max"))
    by_mean = np.asarray(sikf_attention(*args, offset="mean"))
    np.testing.assert_allclose(by_max, by_mean, rtol=1e-5, atol=1e-5)


def test_large_inputs_stay_finite_and_accurate_with_the_max_offset():
    q, k, v, mask = random_inputs(4, n=16, scale=1.0)
    q, k = q * 100.0, k * 30.0
    args = [jnp.asarray(t, jnp.float32) for t in (q, k, v)] + [jnp.asarray(mask)]
    out = np.asarray(sikf_attention(*args))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, sikf_reference(q, k, v, mask, offset="max"), atol=2e-3)
    grads = jax.grad(lambda q, k, v: sikf_attention(q, k, v, args[3]).sum(), argnums=(0, 1, 2))(*args[:3])
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # the authors' mean offset overflows here: the offset choice is not cosmetic
    assert not np.isfinite(np.asarray(sikf_attention(*args, offset="mean"))).all()


def test_padding_cannot_reach_real_outputs_but_does_with_the_authors_mean_offset():
    q, k, v, _ = random_inputs(5, batch=1, n=6)
    pad = np.random.default_rng(6).normal(size=(1, 10, 2, 4))
    mask = np.arange(16)[None] < 6
    results = {}
    for offset in ("max", "mean"):
        short = np.asarray(sikf_attention(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)),
                                          jnp.ones((1, 6), bool), offset=offset))
        padded = [jnp.asarray(np.concatenate([t, pad * 1000.0], axis=1), jnp.float32) for t in (q, k, v)]
        long = np.asarray(sikf_attention(*padded, jnp.asarray(mask), offset=offset))
        assert np.isfinite(long[:, :6]).all() and (offset == "mean" or np.isfinite(long).all())
        results[offset] = np.abs(long[:, :6] - short).max()
    assert results["max"] < 1e-5, results
    assert results["mean"] > 1e-3, results  # padding content shifts the authors' offset


def test_no_real_token_gives_zero_output():
    q, k, v, _ = random_inputs(7, batch=1)
    out = sikf_attention(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)), jnp.zeros((1, 9), bool))
    np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32])  # bfloat16: test_conformance.py BF16_CASES
def test_finite_gradients_fp32(dtype):
    q, k, v, _ = random_inputs(8, n=12)
    mask = jnp.stack([jnp.arange(12) < 7, jnp.zeros(12, bool)])  # second example fully padded
    attention = make_attention("sikf", SPEC)
    args = [jnp.asarray(t * 5.0, dtype) for t in (q, k, v)]
    assert attention(*args, mask, deterministic=False).dtype == dtype

    def loss(q, k, v):
        return attention(q, k, v, mask, deterministic=False).astype(jnp.float32).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
    for g in grads:
        assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()
    assert float(jnp.abs(grads[2][0, :7].astype(jnp.float32)).sum()) > 0


def test_config_rejects_an_unknown_offset():
    with pytest.raises(ValueError, match="offset"):
        make_attention("sikf", SPEC, offset="median")


def test_memory_grows_linearly():
    attention = make_attention("sikf", AttentionSpec(num_heads=2, head_dim=16, max_length=2048))
    ratios = growth_per_doubling(attention, backward=True)
    assert all(r < 2.5 for r in ratios), f"fwd+bwd temp bytes ratio per doubling of n (512->2048): {ratios}"


def test_queries_and_keys_peaking_in_different_dimensions_do_not_underflow():
    """q at +20 in one dimension, k at +30 in another: a per-row query max with a per-set key max
    leaves a denominator of e^-20 next to eps (output ~0); the per-dimension key maxima folded into
    the query rows keep the row's denominator >= 1, so fp32 matches the exact float64 form."""
    n, d = 6, 4
    rng = np.random.default_rng(3)
    q = rng.normal(size=(1, n, 1, d)) * 0.1
    k = rng.normal(size=(1, n, 1, d)) * 0.1
    q[..., 0] += 20.0
    k[..., 1] += 30.0
    v = rng.normal(size=(1, n, 1, d))
    mask = np.array([[True, True, False, True, True, False]])
    out = np.asarray(sikf_attention(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)), jnp.asarray(mask)))
    exact = sikf_reference(q, k, v, mask, eps=0.0)  # raw exp in float64: the kernel's own value
    assert np.abs(exact).max() > 0.1
    np.testing.assert_allclose(out, exact, rtol=1e-4, atol=1e-5)
