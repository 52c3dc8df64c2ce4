"""The shared iterative Moore–Penrose pseudo-inverse (Nyströmformer Eq. 16) against exact pinv."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.pseudo_inverse import iterative_pinv, pinv_initial


def _softmax_matrices(shape, seed=0, temperature=1.0):
    """Row-stochastic (..., m, m) matrices like Nyström's A = softmax(Q_L K_L^T)."""
    logits = np.random.default_rng(seed).normal(size=shape) * temperature
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


def test_initial_guess_is_the_documented_formula():
    a = _softmax_matrices((2, 3, 5, 5), seed=1)
    z0 = np.asarray(pinv_initial(jnp.asarray(a, jnp.float32), "per_matrix"))
    for b in range(2):
        for h in range(3):
            norm_1 = np.abs(a[b, h]).sum(axis=0).max()  # max column sum
            norm_inf = np.abs(a[b, h]).sum(axis=1).max()  # max row sum (= 1 for softmax rows)
            np.testing.assert_allclose(z0[b, h], a[b, h].T / (norm_1 * norm_inf), rtol=1e-6)
    global_scale = np.abs(a).sum(axis=-2).max() * np.abs(a).sum(axis=-1).max()
    z0_global = np.asarray(pinv_initial(jnp.asarray(a, jnp.float32), "global"))
    np.testing.assert_allclose(z0_global, np.swapaxes(a, -1, -2) / global_scale, rtol=1e-6)
    with pytest.raises(ValueError, match="pinv init"):
        pinv_initial(jnp.asarray(a), "original")


def test_converges_to_exact_pinv_as_iterations_grow():
    a = _softmax_matrices((2, 2, 8, 8), seed=2)
    exact = np.linalg.pinv(a)
    with jax.enable_x64(True):
        errors = [float(np.abs(np.asarray(iterative_pinv(jnp.asarray(a), it)) - exact).max() / np.abs(exact).max())
                  for it in (1, 3, 6, 10, 20, 40)]
    assert all(b <= a_ for a_, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-2, errors  # one step is far from A^+ ...
    assert errors[-1] < 1e-10, errors  # ... and the iteration reaches it in float64


def test_residual_decreases_monotonically():
    """||I - A Z_j||_2 shrinks every step: its eigenvalues map as r -> r^3 (3 + r) / 4 on [0, 1)."""
    a = _softmax_matrices((1, 1, 10, 10), seed=3, temperature=2.0)
    identity = np.eye(10)
    with jax.enable_x64(True):
        residuals = [np.linalg.norm(identity - a[0, 0] @ np.asarray(iterative_pinv(jnp.asarray(a), it))[0, 0], 2)
                     for it in range(0, 25)]
    assert residuals[0] < 1.0, residuals[0]  # Z_0 is a convergent start for a row-stochastic A
    converged = [r for r in residuals if r < 1e-12]
    decreasing = residuals[: len(residuals) - len(converged) + 1]
    assert len(converged) > 0, residuals
    assert all(b < a_ for a_, b in zip(decreasing, decreasing[1:])), residuals


def test_per_matrix_equals_global_for_a_single_matrix():
    a = jnp.asarray(_softmax_matrices((1, 1, 6, 6), seed=4), jnp.float32)
    np.testing.assert_array_equal(np.asarray(iterative_pinv(a, 6, "per_matrix")),
                                  np.asarray(iterative_pinv(a, 6, "global")))


def test_global_init_couples_the_batch_and_per_matrix_does_not():
    a = _softmax_matrices((3, 2, 6, 6), seed=5)
    # Make example 0 much more peaked: its max column sum grows and, under the global init, becomes
    # every example's scale.
    changed = a.copy()
    changed[0] = _softmax_matrices((2, 6, 6), seed=6, temperature=8.0)
    results = {}
    for init in ("per_matrix", "global"):
        before = np.asarray(iterative_pinv(jnp.asarray(a, jnp.float32), 6, init))
        after = np.asarray(iterative_pinv(jnp.asarray(changed, jnp.float32), 6, init))
        results[init] = np.abs(after[1:] - before[1:]).max()
    assert results["per_matrix"] == 0.0, results
    assert results["global"] > 1e-3, results
