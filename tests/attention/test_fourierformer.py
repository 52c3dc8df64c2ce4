"""FourierFormer against a float64 brute-force reference of its own formula, its limits, its
numerical safety (log space, zeros of sinc), gradients, padding and its O(n^2) compiled memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.base import AttentionSpec
from attention.fourierformer import (
    FourierFormerAttention,
    fourier_attention,
    fourier_attention_weights,
    log_abs_sinc,
)
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import compiled_temp_bytes

FLOOR = 1e-4  # the default sinc_floor


def fourier_reference(q, k, v, key_mask, R, *, eps=0.0, floor=FLOOR):
    """out_i = sum_j m_j K_ij v_j / (sum_j m_j K_ij + eps), K_ij = prod_d max(|sinc(R_d (q_id - k_jd))|, floor)^4,
    in float64 linear space, one (example, head, query, key, dim) at a time. Rows with no real key -> 0."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    batch, n, heads, dim = q.shape
    R = np.broadcast_to(np.asarray(R, np.float64).reshape(-1), (dim,))
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                numerator, denominator = np.zeros(v.shape[-1]), 0.0
                for j in range(k.shape[1]):
                    if not key_mask[b][j]:
                        continue
                    kernel = 1.0
                    for d in range(dim):
                        x = R[d] * (q[b, i, h, d] - k[b, j, h, d])
                        sinc = 1.0 if x == 0 else np.sin(x) / x
                        kernel *= max(abs(sinc), floor) ** 4
                    numerator += kernel * v[b, j, h]
                    denominator += kernel
                if denominator > 0:
                    out[b, i, h] = numerator / (denominator + eps)
    return out


def naive_linear_space(q, k, v, key_mask, R, eps=1e-6):
    """The authors' computation order in the input dtype: an (n, n, D) product, ^4, / (sum + eps)."""
    x = R * (q[:, :, None] - k[:, None, :])  # (b, n, m, h, D)
    safe = jnp.where(x == 0, 1.0, x)
    kernel = jnp.prod(jnp.where(x == 0, 1.0, jnp.sin(safe) / safe), axis=-1) ** 4  # (b, n, m, h)
    kernel = kernel * key_mask[:, None, :, None]
    weights = kernel / (kernel.sum(axis=2, keepdims=True) + eps)
    return jnp.einsum("bqkh,bkhd->bqhd", weights, v)


def _inputs(seed, batch=2, length=9, heads=2, dim=4, scale=1.0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, length, heads, dim)) * s for s in (scale, scale, 1.0))
    mask = np.ones((batch, length), bool)
    mask[0, 6:] = False
    mask[-1, 2] = False  # a hole: masks need not be right padding
    return q, k, v, mask


def _spec(dim, length, heads=2, **kwargs):
    return AttentionSpec(num_heads=heads, head_dim=dim, max_length=length, **kwargs)


# --- the formula ------------------------------------------------------------------------------------

def test_log_abs_sinc_series_branch_matches_direct_formula():
    with jax.enable_x64(True):
        x = np.concatenate([np.linspace(-0.3, 0.3, 601), [1e-12, -1e-300, 0.0999999, 0.1000001]])
        direct = np.log(np.abs(np.sin(x) / np.where(x == 0, 1.0, x)), where=x != 0, out=np.zeros_like(x))
        np.testing.assert_allclose(np.asarray(log_abs_sinc(jnp.asarray(x), FLOOR)), direct, rtol=1e-12, atol=1e-15)
        assert float(log_abs_sinc(jnp.asarray(0.0), FLOOR)) == 0.0
        # The floor: at a zero of sin the per-dimension factor is sinc_floor, not 0.
        np.testing.assert_allclose(float(log_abs_sinc(jnp.asarray(np.pi), FLOOR)), np.log(FLOOR), rtol=1e-12)


def test_float64_matches_brute_force_scalar_R():
    q, k, v, mask = _inputs(0)
    with jax.enable_x64(True):
        attention = make_attention("fourierformer", _spec(4, 9), R_init=1.3)
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v, mask)), deterministic=True))
        R = np.asarray(attention.R[...], np.float64)
    assert out.dtype == np.float64 and R.shape == (1,)
    np.testing.assert_allclose(out, fourier_reference(q, k, v, mask, R), rtol=1e-10, atol=1e-12)


def test_float64_matches_brute_force_per_dim_R_and_eps_quirk():
    q, k, v, mask = _inputs(1, dim=5)
    R = np.array([0.3, 1.0, 2.5, 0.0, 1.7])  # one R per dimension, one of them 0 (that dimension ignored)
    with jax.enable_x64(True):
        attention = make_attention("fourierformer", _spec(5, 9), R_shape="per_dim")
        assert attention.R[...].shape == (5,)
        attention.R[...] = jnp.asarray(R, jnp.float32)
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v, mask)), deterministic=True))
        # The authors' denominator guard, chosen comparable to the kernel mass so it visibly matters.
        guarded = np.asarray(fourier_attention(*(jnp.asarray(t) for t in (q, k, v, mask)), jnp.asarray(R), eps=0.05))
    R32 = R.astype(np.float32)
    np.testing.assert_allclose(out, fourier_reference(q, k, v, mask, R32), rtol=1e-10, atol=1e-12)
    reference = fourier_reference(q, k, v, mask, R, eps=0.05)
    np.testing.assert_allclose(guarded, reference, rtol=1e-10, atol=1e-12)
    assert not np.allclose(guarded, fourier_reference(q, k, v, mask, R), atol=1e-3)


def test_weights_are_row_stochastic_over_real_keys_and_zero_without_keys():
    q, k, _, mask = _inputs(2)
    mask[1] = False  # the second example has no real token at all
    weights = np.asarray(fourier_attention_weights(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32),
                                                   jnp.asarray(mask), jnp.ones(1)))
    np.testing.assert_allclose(weights[0].sum(-1), 1.0, rtol=1e-6)
    assert (weights[0][..., ~mask[0]] == 0).all() and (weights[0] >= 0).all()
    assert (weights[1] == 0).all()  # documented fallback: zero weights, zero output
    # The same with the authors' denominator guard, and its gradient stays finite on the empty example.
    args = [jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), jnp.asarray(mask), jnp.ones(1)]
    guarded = np.asarray(fourier_attention_weights(*args, eps=1e-6))
    assert np.isfinite(guarded).all() and (guarded[1] == 0).all() and (guarded[0].sum(-1) <= 1.0 + 1e-6).all()
    grads = jax.jit(jax.grad(lambda q, k: fourier_attention_weights(q, k, *args[2:], eps=1e-6)[..., :3].sum(),
                             argnums=(0, 1)))(*args[:2])
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_R_to_zero_gives_mean_of_values_over_real_keys():
    q, k, v, mask = _inputs(3, dim=8, scale=3.0)
    mean = np.stack([v[b, mask[b]].mean(axis=0) for b in range(2)])[:, None]  # (b, 1, h, d)
    with jax.enable_x64(True):
        args = [jnp.asarray(t) for t in (q, k, v, mask)]
        exact = np.asarray(fourier_attention(*args, jnp.zeros(1)))
        errors = [np.abs(np.asarray(fourier_attention(*args, jnp.full(1, r))) - mean).max() for r in (1e-1, 1e-2, 1e-3)]
    np.testing.assert_allclose(exact, np.broadcast_to(mean, exact.shape), rtol=1e-12, atol=1e-12)
    # The error shrinks like R^2 (the leading term of log sinc): at least 50x per decade.
    assert errors[0] > 50 * errors[1] > 2500 * errors[2], errors


def test_permutation_equivariance():
    q, k, v, mask = _inputs(4, dim=6)
    perm = np.random.default_rng(0).permutation(9)
    args = [jnp.asarray(t, jnp.float32) for t in (q, k, v)] + [jnp.asarray(mask)]
    out = np.asarray(fourier_attention(*args, jnp.full(1, 0.8)))
    permuted = np.asarray(fourier_attention(*(a[:, perm] for a in args), jnp.full(1, 0.8)))
    np.testing.assert_allclose(permuted, out[:, perm], rtol=1e-5, atol=1e-6)


# --- log space vs the authors' linear space ---------------------------------------------------------

def test_log_space_equals_naive_linear_space_when_it_does_not_underflow():
    q, k, v, mask = _inputs(5, dim=8)
    args = [jnp.asarray(t, jnp.float32) for t in (q, k, v)] + [jnp.asarray(mask)]
    naive = np.asarray(naive_linear_space(*args, 1.0, eps=0.0))
    assert np.isfinite(naive).all()
    np.testing.assert_allclose(np.asarray(fourier_attention(*args, jnp.ones(1))), naive, rtol=1e-4, atol=1e-5)


def test_head_dim_64_naive_underflows_log_space_stays_accurate():
    """sinc^4 over 64 dimensions: the row's largest kernel is ~exp(-140..-190), below fp32's ~1e-45."""
    q, k, v, mask = _inputs(6, batch=1, length=12, heads=1, dim=64)
    mask[:] = True
    args = [jnp.asarray(t, jnp.float32) for t in (q, k, v)] + [jnp.asarray(mask)]
    reference = fourier_reference(q, k, v, mask, 1.5)  # float64 holds exp(-300) fine
    naive_nan = np.asarray(naive_linear_space(*args, 1.5, eps=0.0))
    naive_authors = np.asarray(naive_linear_space(*args, 1.5, eps=1e-6))
    assert np.isnan(naive_nan).all()  # 0 / 0 in every row
    assert (naive_authors == 0).all()  # the authors' guard: every output collapses to 0
    out = np.asarray(fourier_attention(*args, jnp.full(1, 1.5)))
    assert np.abs(reference).max() > 0.1
    np.testing.assert_allclose(out, reference, rtol=2e-3, atol=2e-4)


# --- gradients ---------------------------------------------------------------------------------------

def test_finite_gradients_at_zero_difference_and_at_zeros_of_sinc():
    """Delta = 0 (series branch at 0) and R Delta = pi, 2 pi (zeros of sin, floored) in the same inputs."""
    q = np.zeros((1, 4, 1, 3))
    k = np.zeros((1, 4, 1, 3))
    k[0, 1, 0, 0] = np.pi
    k[0, 2, 0, :] = [np.pi, 2 * np.pi, -np.pi]  # every dimension on a zero
    k[0, 3, 0, 1] = 1e-20
    v = np.random.default_rng(0).normal(size=(1, 4, 1, 3))
    mask = np.ones((1, 4), bool)
    for dtype in (jnp.float32, jnp.float64):
        with jax.enable_x64(dtype == jnp.float64):
            def loss(q, k, v, R):
                return (fourier_attention(q, k, v, jnp.asarray(mask), R) * jnp.arange(1.0, 4.0)).sum()
            args = [jnp.asarray(t, dtype) for t in (q, k, v)] + [jnp.ones(1, dtype)]
            grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
            for g in grads:
                assert np.isfinite(np.asarray(g)).all(), dtype
            assert np.isfinite(np.asarray(loss(*args)))


def test_gradient_wrt_R_matches_finite_differences():
    q, k, v, mask = _inputs(7, dim=4)
    w = np.random.default_rng(1).normal(size=v.shape)
    with jax.enable_x64(True):
        args = [jnp.asarray(t) for t in (q, k, v, mask)]

        @jax.jit
        def loss(R):
            return (fourier_attention(*args, R) * w).sum()

        for R in (np.array([0.9]), np.array([0.4, 1.2, 2.0, 0.05])):  # scalar and per-dim (incl. series branch)
            grad = np.asarray(jax.grad(loss)(jnp.asarray(R)))
            for d in range(R.size):
                step = np.zeros_like(R)
                step[d] = 1e-6
                numeric = (float(loss(jnp.asarray(R + step))) - float(loss(jnp.asarray(R - step)))) / 2e-6
                np.testing.assert_allclose(grad[d], numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_gradients_head_dim_64_length_1024(dtype):
    length = 1024
    spec = _spec(64, length, heads=1, dtype=dtype)
    attention = FourierFormerAttention(spec, rngs=nnx.Rngs(0), R_init=1.0)
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (1, length, 1, 64), dtype) for key in keys[:3])
    mask = jnp.arange(length)[None] < 1000
    weight = jax.random.normal(keys[3], (1, length, 1, 64), jnp.float32) * mask[..., None, None]

    def loss(module, q, k, v):
        out = module(q, k, v, mask, deterministic=True)
        assert out.dtype == dtype
        return (out.astype(jnp.float32) * weight).sum()

    (module_grad, gq, gk, gv) = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2, 3)))(attention, q, k, v)
    grad_R = np.asarray(module_grad.R[...], np.float32)
    for g in (gq, gk, gv):
        g = np.asarray(g, np.float32)
        assert np.isfinite(g).all() and np.abs(g).sum() > 0
    assert np.isfinite(grad_R).all() and np.abs(grad_R).sum() > 0


# --- padding, dropout, config --------------------------------------------------------------------------

def test_padding_invariance_per_dim_head_dim_64():
    R = jnp.linspace(0.2, 2.0, 64)  # per-dim bandwidths
    attend = jax.jit(fourier_attention)
    real = 11
    q, k, v = (jax.random.normal(key, (2, real, 1, 64)) for key in jax.random.split(jax.random.key(1), 3))
    outputs = []
    for total, seed in ((real, 0), (25, 3), (40, 4)):
        pad = [jax.random.normal(key, (2, total - real, 1, 64)) * 50.0 for key in jax.random.split(jax.random.key(seed), 3)]
        padded = [jnp.concatenate([t, p], axis=1) for t, p in zip((q, k, v), pad)]
        mask = jnp.broadcast_to(jnp.arange(total)[None] < real, (2, total))
        out = np.asarray(attend(*padded, mask, R))
        assert np.isfinite(out).all()
        outputs.append(out[:, :real])
    for out in outputs[1:]:
        np.testing.assert_allclose(out, outputs[0], rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training():
    attention = make_attention("fourierformer", _spec(4, 9, dropout_rate=0.5))
    q, k, v, mask = (jnp.asarray(t, jnp.float32) if t.dtype != bool else jnp.asarray(t) for t in _inputs(8))
    call = nnx.jit(lambda module, q, k, v, mask, deterministic: module(q, k, v, mask, deterministic=deterministic),
                   static_argnums=5)
    evaluation = np.asarray(call(attention, q, k, v, mask, True))
    np.testing.assert_allclose(evaluation, fourier_reference(q, k, v, np.asarray(mask), 1.0), rtol=1e-4, atol=1e-5)
    training = np.asarray(call(attention, q, k, v, mask, False))
    assert np.isfinite(training).all() and not np.allclose(training, evaluation, atol=1e-3)


def test_bad_knobs_name_the_key():
    with pytest.raises(ValueError, match="attention.R_shape"):
        FourierFormerAttention(_spec(4, 8), rngs=nnx.Rngs(0), R_shape="per_head")
    with pytest.raises(ValueError, match="attention.sinc_floor"):
        FourierFormerAttention(_spec(4, 8), rngs=nnx.Rngs(0), sinc_floor=0.0)


# --- memory ---------------------------------------------------------------------------------------------

def test_compiled_memory_is_quadratic_in_length_with_no_length_squared_times_dim_term():
    attention = make_attention("fourierformer", _spec(16, 2048))
    lengths = (512, 1024, 2048)
    sizes = [compiled_temp_bytes(attention, n, head_dim=16, backward=True) for n in lengths]  # fwd+bwd
    ratios = [b / a for a, b in zip(sizes, sizes[1:])]
    assert all(ratio < 5.0 for ratio in ratios), f"fwd+bwd temp memory ratio per doubling of n {lengths}: {ratios}"
    wide = compiled_temp_bytes(attention, 1024, head_dim=64, backward=True)
    # An (n, n, D) tensor would make this ~4; the (n, n) accumulator keeps it ~1.
    assert wide / sizes[1] < 1.5, (f"fwd+bwd temp memory at n=1024, head_dim 64 vs 16: {wide / sizes[1]:.3f} "
                                   f"({wide / 2**20:.1f} MiB vs {sizes[1] / 2**20:.1f} MiB); per-doubling {ratios}")
