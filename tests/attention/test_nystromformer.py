"""Nyströmformer against a float64 brute-force reference of its own math, its exact limits,
its approximation error, padding invariance, gradients and O(n) memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.base import AttentionSpec
from attention.nystromformer import NystromAttention, depthwise_conv, nystrom_attention, segment_assignment
from tests.attention.references import softmax_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


# ----------------------------------------------------------------------------------------------
# Brute-force float64 reference, written with loops from the module docstring's equations.

def _softmax_rows(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _segments_of(real_positions, m):
    """Documented rule: the real token of rank r goes to segment floor(r * m / L)."""
    segments = [[] for _ in range(m)]
    for rank, position in enumerate(real_positions):
        segments[rank * m // len(real_positions)].append(position)
    return segments


def _conv_reference(v, mask, kernel):
    batch, n, heads, _ = v.shape
    size = kernel.shape[-1]
    out = np.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                for t in range(size):
                    j = i + t - size // 2
                    if 0 <= j < n and mask[b, j]:
                        out[b, i, h] += kernel[h, t] * v[b, j, h]
    return out


def nystrom_reference(q, k, v, mask, m, kernel=None, segment_means="real_tokens"):
    """Eq. 13 per (example, head) with np.linalg.pinv; exact softmax when an example has L <= m."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    batch, n, heads, d = q.shape
    out = softmax_reference(q, k, v, mask)  # the exact fallback; overwritten where Nyström applies
    for b in range(batch):
        real = np.flatnonzero(mask[b])
        if segment_means == "real_tokens":
            if len(real) <= m:
                continue
            segments = _segments_of(list(real), m)
        else:  # the authors' form: position j to segment floor(j m / n) (n/m consecutive positions when
            assert n > m  # m divides n), pads counted as zero rows
            segments = [[j for j in range(n) if j * m // n == l] for l in range(m)]
        for h in range(heads):
            qt = q[b, :, h] * d ** -0.25 * mask[b][:, None]
            kt = k[b, :, h] * d ** -0.25 * mask[b][:, None]
            q_l = np.stack([qt[s].mean(axis=0) for s in segments])
            k_l = np.stack([kt[s].mean(axis=0) for s in segments])
            f1 = _softmax_rows(qt @ k_l.T)
            a = _softmax_rows(q_l @ k_l.T)
            f3 = _softmax_rows(q_l @ kt[real].T)
            out[b, :, h] = f1 @ np.linalg.pinv(a) @ (f3 @ v[b, real, h])
    if kernel is not None:
        out = out + _conv_reference(v, mask, np.asarray(kernel, np.float64))
    return out


# Compiled once per (shapes, knobs): eager op-by-op dispatch costs more CPU than these tiny shapes.
_nystrom = jax.jit(nystrom_attention, static_argnames=(
    "num_landmarks", "pinv_iterations", "pinv_init", "segment_means", "exact_fallback"))


def _evaluator(attention):
    return jax.jit(lambda q, k, v, mask: attention(q, k, v, mask, deterministic=True))


def _inputs(seed, batch, n, heads=2, dim=4, scale=1.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, n, heads, dim)) * s for s in (scale, scale, 1.0)]


# ----------------------------------------------------------------------------------------------

def test_segments_follow_the_documented_rule():
    mask = np.zeros((3, 20), bool)
    mask[0] = True                      # no padding, L = 20 divisible by m = 5
    mask[1, :13] = True                 # right padding, L = 13 not divisible
    mask[2, [0, 2, 3, 7, 8, 9, 15]] = True  # holes, L = 7
    s = np.asarray(segment_assignment(jnp.asarray(mask), 5))
    np.testing.assert_array_equal(s[0], np.repeat(np.eye(5, dtype=bool), 4, axis=0))  # the authors' reshape
    for b in range(3):
        assert not s[b, ~mask[b]].any()                            # pads belong to no segment
        np.testing.assert_array_equal(s[b, mask[b]].sum(axis=1), 1)  # every real token to exactly one
        sizes = s[b].sum(axis=0)
        length = mask[b].sum()
        assert set(sizes) <= {length // 5, -(-length // 5)}, sizes
        order = np.argmax(s[b, mask[b]], axis=1)
        assert (np.diff(order) >= 0).all()                          # contiguous in real-token order
    tiny = np.asarray(segment_assignment(jnp.asarray(np.arange(8) < 3)[None], 5))  # L = 3 <= m = 5
    np.testing.assert_array_equal(tiny[0, :3].sum(axis=0), [1, 1, 0, 1, 0])  # floor(r*5/3): one token each


def test_float64_matches_brute_force_at_fewer_landmarks_than_tokens():
    q, k, v = _inputs(0, 4, 14)
    mask = np.ones((4, 14), bool)
    mask[1, 11:] = False           # L = 11, not divisible by m = 3
    mask[2, [2, 5, 6]] = False     # holes
    mask[3, 3:] = False            # L = 3 <= m: exact fallback inside a Nyström batch
    with jax.enable_x64(True):
        attention = make_attention("nystromformer", AttentionSpec(num_heads=2, head_dim=4, max_length=14),
                                   num_landmarks=3, pinv_iterations=40, conv_kernel_size=5)
        out = np.asarray(_evaluator(attention)(*(jnp.asarray(t) for t in (q, k, v, mask))))
        kernel = np.asarray(attention.conv_kernel[...])
    assert out.dtype == np.float64
    reference = nystrom_reference(q, k, v, mask, 3, kernel)
    assert np.abs(reference - softmax_reference(q, k, v, mask) - _conv_reference(v, mask, kernel))[:3].max() > 1e-2
    # 40 Newton–Schulz steps reach A^+ to rounding (the A here have condition numbers < 1e3).
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-9, atol=1e-10)


def test_authors_pad_including_means_quirk():
    q, k, v = _inputs(1, 2, 12)
    mask = np.ones((2, 12), bool)
    mask[1, 7:] = False
    with jax.enable_x64(True):
        run = lambda q, k, v, mask: np.asarray(_nystrom(
            *(jnp.asarray(t) for t in (q, k, v, mask)), num_landmarks=4, pinv_iterations=40,
            segment_means="with_padding"))
        out = run(q, k, v, mask)
        np.testing.assert_allclose(out[mask], nystrom_reference(q, k, v, mask, 4, segment_means="with_padding")[mask],
                                   rtol=1e-9, atol=1e-10)
        # ... and, unlike the default, its real outputs change with the amount of padding.
        longer = [np.concatenate([t, np.zeros((2, 4, 2, 4))], axis=1) for t in (q, k, v)]
        padded = run(*longer, np.concatenate([mask, np.zeros((2, 4), bool)], axis=1))
    assert np.abs(padded[1, :7] - out[1, :7]).max() > 1e-3


def test_authors_means_when_landmarks_do_not_divide_the_length():
    """with_padding at n = 14, m = 4 (segments of 3 or 4 positions: the general path, not the reshape)."""
    q, k, v = _inputs(11, 2, 14)
    mask = np.ones((2, 14), bool)
    mask[1, 9:] = False
    with jax.enable_x64(True):
        out = np.asarray(_nystrom(*(jnp.asarray(t) for t in (q, k, v, mask)), num_landmarks=4, pinv_iterations=40,
                                  segment_means="with_padding"))
    np.testing.assert_allclose(out[mask], nystrom_reference(q, k, v, mask, 4, segment_means="with_padding")[mask],
                               rtol=1e-9, atol=1e-10)


def test_conv_skip_and_its_gradients_match_brute_force():
    """The shift-and-add conv with its hand-written backward: output, input and kernel gradients (float64)."""
    rng = np.random.default_rng(12)
    v, g = rng.normal(size=(2, 9, 2, 3)), rng.normal(size=(2, 9, 2, 3))
    kernel = rng.normal(size=(2, 5))
    mask = np.ones((2, 9), bool)
    mask[0, [2, 3]] = False
    mask[1, 6:] = False
    with jax.enable_x64(True):
        loss = lambda v, kernel: jnp.sum(depthwise_conv(v, jnp.asarray(mask), kernel) * g)
        out = np.asarray(jax.jit(depthwise_conv)(jnp.asarray(v), jnp.asarray(mask), jnp.asarray(kernel)))
        grad_v, grad_kernel = (np.asarray(x) for x in jax.jit(jax.grad(loss, argnums=(0, 1)))(
            jnp.asarray(v), jnp.asarray(kernel)))
    np.testing.assert_allclose(out, _conv_reference(v, mask, kernel), rtol=1e-12, atol=1e-12)
    c = kernel.shape[1] // 2
    expected_v, expected_kernel = np.zeros_like(v), np.zeros_like(kernel)
    for b in range(2):
        for i in range(9):
            for t in range(5):
                j = i + t - c  # out[b, i] += kernel[:, t] * mask[b, j] * v[b, j]
                if 0 <= j < 9 and mask[b, j]:
                    expected_v[b, j] += kernel[:, t, None] * g[b, i]
                    expected_kernel[:, t] += (g[b, i] * v[b, j]).sum(axis=-1)
    np.testing.assert_allclose(grad_v, expected_v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_kernel, expected_kernel, rtol=1e-12, atol=1e-12)


def test_one_token_per_landmark_without_fallback_is_softmax():
    """m = n, no conv: F1 Z F3 V = F1 A^+ A V = softmax V once Z = A^+ (here after 30 steps, float64)."""
    q, k, v = _inputs(2, 2, 12)
    mask = np.ones((2, 12), bool)
    mask[1, 9:] = False
    reference = softmax_reference(q, k, v, mask)
    with jax.enable_x64(True):
        errors = {it: np.abs(np.asarray(_nystrom(*(jnp.asarray(t) for t in (q, k, v, mask)),
                                                 num_landmarks=12, pinv_iterations=it,
                                                 exact_fallback=False)) - reference)[mask].max()
                  for it in (6, 30)}
    assert errors[30] < 1e-10, errors
    assert errors[6] > 1e-4, errors  # six steps are an approximation, not the exact inverse


def test_exact_fallback_when_landmarks_cover_the_real_tokens():
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(3, 3, 40))
    mask = jnp.stack([jnp.arange(40) < 40, jnp.arange(40) < 10, jnp.arange(40) < 16])
    reference = softmax_reference(q, k, v, mask)
    out = np.asarray(_nystrom(q, k, v, mask, num_landmarks=16))  # n = 40 > m: per-example rule
    np.testing.assert_allclose(out[1:][np.asarray(mask[1:])], reference[1:][np.asarray(mask[1:])], atol=2e-6)
    assert np.abs(out[0] - reference[0]).max() > 1e-3  # L = 40 > m: Nyström, not exact
    clipped = np.asarray(_nystrom(q, k, v, mask, num_landmarks=64))  # m > n: clipped, exact for all
    np.testing.assert_allclose(clipped[np.asarray(mask)], reference[np.asarray(mask)], atol=2e-6)


def test_error_versus_softmax_shrinks_as_landmarks_grow():
    """Default 6 pinv steps, mean |error| over 8 independent examples x 2 heads, n = 64, d = 8."""
    q, k, v = _inputs(10, 8, 64, dim=8, scale=0.5)
    mask = np.ones((8, 64), bool)
    reference = softmax_reference(q, k, v, mask)
    errors = {}
    for m in (2, 8, 32):
        out = np.asarray(_nystrom(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)), jnp.asarray(mask),
                                  num_landmarks=m))
        errors[m] = float(np.abs(out - reference).mean())
    assert errors[2] > errors[8] > errors[32], errors
    assert errors[32] < 0.5 * errors[2], errors


def test_padding_invariance_with_masked_segment_means():
    """m = 4 < L = 13, conv on: neither the amount of padding nor its content reaches real outputs."""
    attention = make_attention("nystromformer", AttentionSpec(num_heads=2, head_dim=4, max_length=40),
                               num_landmarks=4, conv_kernel_size=7)
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(4, 2, 13))
    evaluate, outputs = _evaluator(attention), []
    for total, seed in ((13, 0), (40, 2)):
        pad = [jax.random.normal(key, (2, total - 13, 2, 4)) * 50.0 for key in jax.random.split(jax.random.key(seed), 3)]
        mask = jnp.broadcast_to(jnp.arange(total) < 13, (2, total))
        out = evaluate(*(jnp.concatenate([t, p], axis=1) for t, p in zip((q, k, v), pad)), mask)
        assert np.isfinite(np.asarray(out)).all()
        outputs.append(np.asarray(out[:, :13]))
    for out in outputs[1:]:
        np.testing.assert_allclose(out, outputs[0], rtol=1e-5, atol=1e-5)


def test_permuting_tokens_within_a_segment_permutes_the_output():
    """Without conv, landmarks are unchanged by a permutation inside a segment (n = 12, m = 3)."""
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(5, 1, 12))
    mask = jnp.ones((1, 12), bool)
    perm = np.array([3, 1, 0, 2, 4, 5, 6, 7, 11, 9, 10, 8])  # within segments {0..3} and {8..11}
    out = _nystrom(q, k, v, mask, num_landmarks=3)
    permuted = _nystrom(q[:, perm], k[:, perm], v[:, perm], mask, num_landmarks=3)
    np.testing.assert_allclose(np.asarray(permuted), np.asarray(out[:, perm]), rtol=1e-5, atol=1e-6)
    across = np.array([4, 1, 2, 3, 0, 5, 6, 7, 8, 9, 10, 11])  # across segments: landmarks change
    moved = _nystrom(q[:, across], k[:, across], v[:, across], mask, num_landmarks=3)
    assert np.abs(np.asarray(moved) - np.asarray(out[:, across])).max() > 1e-4


@pytest.mark.parametrize("dtype", [jnp.float32])  # bfloat16: test_conformance.py BF16_CASES
def test_finite_gradients(dtype):
    """Nyström path (L > m), exact fallback (L <= m) and a fully padded example, conv on."""
    attention = make_attention("nystromformer", AttentionSpec(num_heads=2, head_dim=4, max_length=24),
                               num_landmarks=4, conv_kernel_size=5)
    q, k, v = (jnp.asarray(t, dtype) for t in _inputs(6, 3, 24))
    mask = jnp.stack([jnp.arange(24) < 19, jnp.arange(24) < 3, jnp.zeros(24, bool)])

    def loss(q, k, v):
        out = attention(q, k, v, mask, deterministic=False)
        value = out.astype(jnp.float32)
        return (value * mask[:, :, None, None]).sum() + 1e-3 * (value ** 2).sum(), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    assert out.dtype == dtype and np.isfinite(np.asarray(out, np.float32)).all()
    for g in grads:
        assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()
    assert float(jnp.abs(grads[0][0, :19].astype(jnp.float32)).sum()) > 0
    assert float(jnp.abs(grads[1][1, :3].astype(jnp.float32)).sum()) > 0


def test_global_pinv_init_quirk_couples_examples():
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(7, 2, 16))
    mask = jnp.ones((2, 16), bool)
    q2 = q.at[0].multiply(6.0)  # a much more peaked A for example 0 only
    changes = {}
    for init in ("per_matrix", "global"):
        before = _nystrom(q, k, v, mask, num_landmarks=4, pinv_init=init)
        after = _nystrom(q2, k, v, mask, num_landmarks=4, pinv_init=init)
        changes[init] = float(jnp.abs(after[1] - before[1]).max())
    assert changes["per_matrix"] == 0.0, changes
    assert changes["global"] > 1e-4, changes


def test_invalid_knobs_name_the_key():
    spec = AttentionSpec(num_heads=1, head_dim=4, max_length=8)
    rngs = jax.random.key(0)
    for knobs, key in (({"conv_kernel_size": 4}, "conv_kernel_size"), ({"pinv_init": "original"}, "pinv_init"),
                       ({"segment_means": "padded"}, "segment_means"), ({"num_landmarks": 0}, "num_landmarks")):
        with pytest.raises(ValueError, match=f"attention.{key}"):
            NystromAttention(spec, rngs=rngs, **knobs)


def test_memory_grows_linearly_forward_and_backward():
    attention = make_attention("nystromformer", AttentionSpec(num_heads=2, head_dim=16, max_length=4096))
    ratios = growth_per_doubling(attention, lengths=(1024, 2048, 4096), backward=True)
    assert all(r < 2.5 for r in ratios), f"fwd+bwd temp bytes per doubling 1K->2K->4K: {ratios}"
