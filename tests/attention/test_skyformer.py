"""Skyformer and exact kernelized attention: float64 brute-force references of their own math, the
exact limits of the method (landmarks = all tokens, gamma -> 0), landmark sampling, randomness, memory scaling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.base import AttentionSpec
from attention.skyformer import (gather_rows, kernelized_attention, normalized_landmark_kernel, real_positions,
                                 sample_landmarks, scale_and_mask, skyformer_attention)
from tests.attention.references import padded_qkv as _inputs
from tests.attention.references import masked_input_grads
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


# Compiled once per shape: eager dispatch of the many small ops is slow on a busy CPU.
_skyformer = jax.jit(skyformer_attention, static_argnames=("pinv_iterations", "pinv_init", "inverse"))
_sample = jax.jit(sample_landmarks, static_argnums=(2, 3))


@nnx.jit(static_argnames="deterministic")
def _call(attention, q, k, v, mask, deterministic=True):
    return attention(q, k, v, mask, deterministic=deterministic)


def _module(name, seed=0, dim=4, length=10, **overrides):
    return make_attention(name, AttentionSpec(num_heads=2, head_dim=dim, max_length=length), seed=seed, **overrides)


def _gauss(x, y):
    return np.exp(-0.5 * np.sum((x - y) ** 2))


def kernelized_brute_force(q, k, v, mask):
    """out_i = sum_{j real} exp(-|q_i - k_j|^2 / (2 sqrt(d))) v_j, by loops (distance form)."""
    batch, n, heads, d = q.shape
    out = np.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                for j in range(n):
                    if mask[b, j]:
                        out[b, i, h] += _gauss(q[b, i, h] / d ** 0.25, k[b, j, h] / d ** 0.25) * v[b, j, h]
    return out


def ridge_nystrom_brute_force(q, k, v, mask, query_pos, key_pos, gamma):
    """kappa(Q^, S) (kappa(S, S) + gamma I)^-1 kappa(S, K^ real) V with S = [Q^[query_pos]; K^[key_pos]]."""
    batch, n, heads, d = q.shape
    out = np.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            points = [q[b, p, h] / d ** 0.25 for p in query_pos[b]] + [k[b, p, h] / d ** 0.25 for p in key_pos[b]]
            m = len(points)
            gram = np.array([[_gauss(points[a], points[c]) for c in range(m)] for a in range(m)])
            inverse = np.linalg.inv(gram + gamma * np.eye(m))
            for i in range(n):
                left = np.array([_gauss(q[b, i, h] / d ** 0.25, s) for s in points])
                for j in range(n):
                    if mask[b, j]:
                        right = np.array([_gauss(s, k[b, j, h] / d ** 0.25) for s in points])
                        out[b, i, h] += (left @ inverse @ right) * v[b, j, h]
    return out


def _all_real_positions(mask):
    """Every real position of each example (examples with fewer real tokens repeat their first one)."""
    length = int(mask.sum(axis=1).max())
    rows = []
    for row in mask:
        real = np.flatnonzero(row)
        rows.append(np.concatenate([real, np.full(length - len(real), real[0])]))
    return jnp.asarray(np.stack(rows), jnp.int32)


def test_kernelized_matches_brute_force_and_the_automatic_normalisation_identity():
    q, k, v, mask = _inputs()
    with jax.enable_x64(True):
        out = np.asarray(_module("kernelized")(*map(jnp.asarray, (q, k, v, mask)), deterministic=True))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, kernelized_brute_force(q, k, v, mask), rtol=1e-10, atol=1e-12)
    # Sec. 4.1: C = D_Q^-1/2 exp(Q K^T / sqrt(d)) D_K^-1/2, (D_Q)_ii = exp(|q_i|^2 / sqrt(d)).
    d = q.shape[-1]
    for b in range(2):
        for h in range(2):
            dq = np.exp(np.sum(q[b, :, h] ** 2, -1) / np.sqrt(d))
            dk = np.exp(np.sum(k[b, :, h] ** 2, -1) / np.sqrt(d))
            c = np.exp(q[b, :, h] @ k[b, :, h].T / np.sqrt(d)) / np.sqrt(dq[:, None] * dk[None, :])
            np.testing.assert_allclose(out[b, :, h], (c * mask[b]) @ v[b, :, h], rtol=1e-10, atol=1e-12)


def test_kernelized_dropout_acts_only_in_training():
    q, k, v, mask = map(jnp.asarray, _inputs(dtype=np.float32))
    attention = make_attention("kernelized", AttentionSpec(num_heads=2, head_dim=4, max_length=10, dropout_rate=0.5))
    evaluation = _call(attention, q, k, v, mask)
    np.testing.assert_allclose(np.asarray(evaluation), np.asarray(kernelized_attention(q, k, v, mask)), rtol=1e-5, atol=1e-6)
    training = _call(attention, q, k, v, mask, deterministic=False)
    assert np.isfinite(np.asarray(training)).all()
    assert not np.allclose(np.asarray(training), np.asarray(evaluation), atol=1e-3)


def test_skyformer_matches_brute_force_ridge_nystrom_and_the_iteration_converges_to_it():
    """gamma = 0.1, exact inverse: equals the closed-form ridge Nystrom (1e-10). The 6-step
    Newton-Schulz result approaches it as iterations grow; 24 steps reach 1e-9 on these inputs."""
    q, k, v, mask = _inputs(seed=1)
    with jax.enable_x64(True):
        query_pos, key_pos = _sample(jax.random.key(3), jnp.asarray(mask), 12)
        args = (*map(jnp.asarray, (q, k, v, mask)), query_pos, key_pos)
        exact = np.asarray(_skyformer(*args, gamma=0.1, inverse="exact"))
        iterated = [np.asarray(_skyformer(*args, gamma=0.1, pinv_iterations=i)) for i in (3, 6, 24)]
    reference = ridge_nystrom_brute_force(q, k, v, mask, np.asarray(query_pos), np.asarray(key_pos), 0.1)
    real = mask[:, :, None, None]
    np.testing.assert_allclose(exact * real, reference * real, rtol=1e-10, atol=1e-10)
    errors = [float(np.abs((out - reference) * real).max()) for out in iterated]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-9, errors


def test_every_real_token_as_landmark_with_gamma_zero_is_exact_kernelized_attention():
    """All 2n points, gamma = 0: Nystrom is exact. Exact inverse: 1e-9. The iteration needs more than 6
    steps at gamma = 0 (cond(M~) ~ 10-100 here); 30 steps reach 1e-8."""
    q, k, v, mask = _inputs(seed=2)
    positions = _all_real_positions(mask)
    with jax.enable_x64(True):
        args = (*map(jnp.asarray, (q, k, v, mask)), positions, positions)
        exact_inverse = np.asarray(_skyformer(*args, gamma=0.0, inverse="exact"))
        iterated = np.asarray(_skyformer(*args, gamma=0.0, pinv_iterations=30))
    reference = kernelized_brute_force(q, k, v, mask)
    real = mask[:, :, None, None]
    np.testing.assert_allclose(exact_inverse * real, reference * real, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(iterated * real, reference * real, rtol=1e-8, atol=1e-8)


def test_normalised_landmark_kernel_has_spectrum_in_zero_one():
    """Lemma 3: eigenvalues of D^-1/2 (M + gamma I) D^-1/2 lie in (0, 1], the top one being exactly 1."""
    q, k, _, mask = _inputs(seed=3, length=16, dim=8)
    with jax.enable_x64(True):
        query_pos, key_pos = _sample(jax.random.key(0), jnp.asarray(mask), 32, False)
        landmarks = jnp.concatenate([gather_rows(scale_and_mask(jnp.asarray(q), jnp.asarray(mask)), query_pos),
                                     gather_rows(scale_and_mask(jnp.asarray(k), jnp.asarray(mask)), key_pos)], 1)
        for gamma in (0.1, 1.0):
            eigenvalues = np.linalg.eigvalsh(np.asarray(normalized_landmark_kernel(landmarks, gamma)[0]))
            assert eigenvalues.min() > 0 and abs(eigenvalues.max(axis=-1) - 1).max() < 1e-12


@functools.partial(jax.jit, static_argnums=4)
def _mean_relative_error(q, k, v, mask, num_landmarks):
    """Relative error of Skyformer (defaults: gamma 0.1, 6 iterations) vs exact, averaged over 4 keys."""
    exact = kernelized_attention(q, k, v, mask)
    real = mask[:, :, None, None]

    def error(seed):
        out = skyformer_attention(q, k, v, mask, *sample_landmarks(jax.random.key(seed), mask, num_landmarks))
        return jnp.linalg.norm((out - exact) * real) / jnp.linalg.norm(exact * real)

    return jax.vmap(error)(jnp.arange(4)).mean()


def test_error_against_exact_shrinks_as_landmarks_grow():
    q, k, v, mask = (jnp.asarray(t) for t in _inputs(seed=4, length=48, dim=8, dtype=np.float32))
    errors = [float(_mean_relative_error(q, k, v, mask, m)) for m in (4, 32, 256)]
    assert all(b < 0.8 * a for a, b in zip(errors, errors[1:])), f"relative error for m = 4, 32, 256: {errors}"


def test_landmarks_come_only_from_real_tokens_whatever_the_mask():
    mask = np.zeros((3, 24), bool)
    mask[0, 5:] = True  # left padding
    mask[1, [1, 4, 6, 7, 15, 22]] = True  # holes everywhere
    mask[2, :3] = True  # right padding, fewer real tokens than landmarks
    order, count = real_positions(jnp.asarray(mask))
    for b in range(3):
        np.testing.assert_array_equal(np.asarray(order[b, :count[b]]), np.flatnonzero(mask[b]))
    seen = [set(), set(), set()]
    for seed in range(20):
        query_pos, key_pos = _sample(jax.random.key(seed), jnp.asarray(mask), 16)
        assert query_pos.shape == (3, 8) and key_pos.shape == (3, 8)
        for b in range(3):
            chosen = np.concatenate([np.asarray(query_pos[b]), np.asarray(key_pos[b])])
            assert mask[b, chosen].all(), (b, chosen)
            seen[b].update(chosen.tolist())
    for b in range(3):  # uniform over the real tokens: every one of them gets drawn
        assert seen[b] == set(np.flatnonzero(mask[b]).tolist())


def test_padded_and_hole_content_is_ignored_and_layout_does_not_matter():
    """Garbage at left padding and holes leaves real outputs unchanged; moving the same real tokens
    to the front (right padding) gives the same outputs, since landmarks are drawn by rank."""
    q, k, v, mask = _inputs(seed=5, length=12, dtype=np.float32)
    attention = _module("skyformer", length=12, num_landmarks=8)
    base = _call(attention, *map(jnp.asarray, (q, k, v, mask)))
    garbage = [np.where(mask[:, :, None, None], t, 1e3 * np.random.default_rng(9).normal(size=t.shape))
               for t in (q, k, v)]
    changed = _call(attention, *map(jnp.asarray, (*garbage, mask)))
    real = mask[:, :, None, None]
    np.testing.assert_allclose(np.asarray(changed) * real, np.asarray(base) * real, rtol=1e-5, atol=1e-5)
    order = np.argsort(~mask, axis=1, kind="stable")  # real tokens first, in order
    packed = [np.take_along_axis(t, order[:, :, None, None], axis=1) for t in (q, k, v)]
    packed_mask = np.take_along_axis(mask, order, axis=1)
    moved = _call(attention, *map(jnp.asarray, (*packed, packed_mask)))
    np.testing.assert_allclose(np.asarray(moved) * packed_mask[:, :, None, None],
                               np.take_along_axis(np.asarray(base), order[:, :, None, None], axis=1)
                               * packed_mask[:, :, None, None], rtol=1e-5, atol=1e-5)


def test_evaluation_is_fixed_by_the_seed_and_training_resamples():
    q, k, v, mask = map(jnp.asarray, _inputs(seed=6, dtype=np.float32))
    attention = _module("skyformer", num_landmarks=6)
    first = np.asarray(_call(attention, q, k, v, mask))
    np.testing.assert_array_equal(first, np.asarray(_call(attention, q, k, v, mask)))
    np.testing.assert_array_equal(first, np.asarray(_call(_module("skyformer", num_landmarks=6), q, k, v, mask)))
    assert not np.allclose(first, np.asarray(_call(_module("skyformer", seed=1, num_landmarks=6), q, k, v, mask)))
    train_a = np.asarray(_call(attention, q, k, v, mask, deterministic=False))
    train_b = np.asarray(_call(attention, q, k, v, mask, deterministic=False))
    assert not np.allclose(train_a, train_b) and not np.allclose(train_a, first)
    np.testing.assert_array_equal(first, np.asarray(_call(attention, q, k, v, mask)))  # training left eval alone
    resampling = _module("skyformer", num_landmarks=6, eval_landmarks="resample")  # authors' quirk E5
    assert not np.allclose(np.asarray(_call(resampling, q, k, v, mask)), np.asarray(_call(resampling, q, k, v, mask)))


def test_shared_landmarks_across_batch_flag():
    mask = jnp.ones((4, 20), bool)
    per_example = np.asarray(jnp.concatenate(_sample(jax.random.key(0), mask, 16, False), axis=1))
    shared = np.asarray(jnp.concatenate(_sample(jax.random.key(0), mask, 16, True), axis=1))
    assert (shared == shared[0]).all()  # one u for the batch: equal lengths give equal positions
    assert not (per_example == per_example[0]).all()
    longer = _sample(jax.random.key(0), jnp.ones((7, 20), bool), 16, False)  # batch size does not matter
    np.testing.assert_array_equal(np.asarray(jnp.concatenate(longer, axis=1))[:4], per_example)


@pytest.mark.parametrize("dtype", [jnp.float32])  # bfloat16: test_conformance.py BF16_CASES
@pytest.mark.parametrize("name", ["skyformer", "kernelized"])
def test_finite_gradients(name, dtype):
    q, k, v, mask = _inputs(seed=7, batch=3, dtype=np.float32)
    mask[2] = False  # an example with no real token
    q, k, v = (jnp.asarray(t, dtype) for t in (q, k, v))
    mask = jnp.asarray(mask)
    attention = _module(name, num_landmarks=8) if name == "skyformer" else _module(name)

    # Training mode (fresh landmarks / dropout); evaluation-mode fp32 gradients are in test_conformance.
    result = masked_input_grads(attention, q, k, v, mask, False)
    for g in result:
        assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()
    assert float(jnp.abs(result[0][0, 2:5].astype(jnp.float32)).sum()) > 0  # real queries get gradients


def test_skyformer_memory_grows_linearly():
    attention = _module("skyformer", dim=8, length=4096)
    ratios = growth_per_doubling(attention, lengths=(1024, 2048, 4096), heads=1, head_dim=8, backward=True)
    assert all(r < 2.5 for r in ratios), f"fwd+bwd temp bytes per doubling 1K->2K->4K: {ratios}"


def test_kernelized_memory_grows_quadratically():
    attention = _module("kernelized", dim=8, length=1024)
    ratios = growth_per_doubling(attention, lengths=(256, 512, 1024), heads=1, head_dim=8, backward=True)
    assert all(3.0 < r < 5.0 for r in ratios), f"fwd+bwd temp bytes per doubling 256->512->1K: {ratios}"


def authors_skyformer(q, k, v, mask, u, gamma=0.1, iterations=6):
    """The released Skyformer forward (src/models/attention_skyformer.py), written from its steps in
    float64 numpy, given its one uniform draw u (shared by the batch). Layout (b, n, h, d) in and out."""
    q, k, v = (np.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))  # their (b, h, n, d)
    b, h, n, d = q.shape
    real = mask[:, None, :, None].astype(np.float64)
    q, k, v = q * real * 32 ** -0.25, k * real * 32 ** -0.25, v * real  # their hard-coded 32^-1/4
    count = mask.sum(-1)
    picks = np.floor(count[:, None] * u[None, :]).astype(np.int64)  # raw positions in [0, L_b)
    picks[:, len(u) // 2:] += n  # second half: rows of the key block of X = [Q; K]
    stacked = np.concatenate([q, k], axis=2)  # (b, h, 2n, d)
    chosen = np.stack([stacked[i][:, picks[i]] for i in range(b)])  # (b, h, m, d)
    half_x = 0.5 * (stacked ** 2).sum(-1)
    half_s = 0.5 * (chosen ** 2).sum(-1)
    sketch = np.exp(np.einsum("bhnd,bhmd->bhnm", stacked, chosen) - half_x[..., :, None] - half_s[..., None, :])
    query_side, key_side = sketch[:, :, :n], sketch[:, :, n:]
    small = np.stack([sketch[i][:, picks[i]] for i in range(b)]) + gamma * np.eye(len(u))  # (b, h, m, m)
    inv_sqrt = np.sqrt(1.0 / small.sum(-1))
    small = inv_sqrt[..., :, None] * small * inv_sqrt[..., None, :]
    z = np.swapaxes(small, -1, -2) / small.sum(-2).max()  # their "original" start: one max for everything
    eye = np.eye(len(u))
    for _ in range(iterations):
        kz = small @ z
        z = (0.25 * z) @ (13 * eye - kz @ (15 * eye - kz @ (7 * eye - kz)))
    key_side = ((key_side * inv_sqrt[..., None, :]) @ z) * inv_sqrt[..., None, :] * real
    out = query_side @ np.einsum("bhnm,bhne->bhme", key_side, v)
    return np.transpose(out, (0, 2, 1, 3))


def _holes_and_padding(batch=3, length=16, seed=0):
    """Right padding with holes (as pixel_zero_is_padding makes), holes only, and a full row."""
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, length)) > 0.4
    mask[0, 11:] = False
    mask[:, 0] = True
    mask[-1] = True
    return mask


def test_authors_flags_reproduce_the_released_skyformer_on_padding_and_holes():
    """pinv_init=global, shared_landmarks_across_batch, landmark_positions=raw: equal to the authors'
    forward (float64, 1e-10); the default rank draw differs once the mask has holes."""
    length, m = 16, 8
    q, k, v, _ = _inputs(seed=11, batch=3, length=length, dim=32)
    mask = _holes_and_padding(length=length)
    authors = dict(pinv_init="global", shared_landmarks_across_batch=True, landmark_positions="raw")
    with jax.enable_x64(True):
        attention = _module("skyformer", dim=32, length=length, num_landmarks=m, **authors)
        u = np.asarray(jax.random.uniform(attention.eval_key[...], (m,)))
        ours = np.asarray(_call(attention, *map(jnp.asarray, (q, k, v, mask))))
        default = _module("skyformer", dim=32, length=length, num_landmarks=m,
                          shared_landmarks_across_batch=True, pinv_init="global")
        by_rank = np.asarray(_call(default, *map(jnp.asarray, (q, k, v, mask))))
    assert u.dtype == np.float64
    reference = authors_skyformer(q, k, v, mask, u)
    real = mask[:, :, None, None]
    scale = np.abs(reference * real).max()
    np.testing.assert_allclose(ours * real, reference * real, rtol=1e-10, atol=1e-10 * scale)
    holes = ~mask[0, :11].all() or ~mask[1].all()
    assert holes and np.abs((by_rank - reference) * real).max() > 1e-3 * scale


def test_skyformer_global_start_is_the_max_column_sum_and_nystromformer_keeps_its_own():
    from attention.pseudo_inverse import pinv_initial
    matrix = np.random.default_rng(0).random((2, 3, 5, 5)) + 0.1
    with jax.enable_x64(True):
        skyformer_start = np.asarray(pinv_initial(jnp.asarray(matrix), "global", scale="column"))
        nystrom_start = np.asarray(pinv_initial(jnp.asarray(matrix), "global"))
    transposed = np.swapaxes(matrix, -1, -2)
    np.testing.assert_allclose(skyformer_start, transposed / matrix.sum(-2).max(), rtol=1e-14)
    np.testing.assert_allclose(nystrom_start, transposed / (matrix.sum(-2).max() * matrix.sum(-1).max()), rtol=1e-14)
