"""Reformer LSH attention: float64 brute-force reference of its own math (hash, sort, chunk, look
back, self mask, round combination), the exact one-chunk limit, legacy LRA logits, randomness, memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.base import AttentionSpec
from tests.attention.references import softmax_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


def _inputs(seed=0, batch=2, length=11, heads=2, dim=4):
    rng = np.random.default_rng(seed)
    q, v = (rng.normal(size=(batch, length, heads, dim)) for _ in range(2))
    mask = np.ones((batch, length), bool)
    mask[0, 8:] = False  # right padding
    mask[1, [0, 4]] = False  # holes
    return q, v, mask


def reformer_brute_force(q, v, mask, rotations, chunk_len, self_mask=True):
    """Loops: hash each real position, sort by (bucket, position), chunk the sorted list, attend to the
    real keys of the query's chunk and the previous chunk, combine rounds by their log-sum-exps."""
    batch, n, heads, d = q.shape
    out = np.zeros_like(v)
    for b in range(batch):
        real = [i for i in range(n) if mask[b, i]]
        for h in range(heads):
            k = q[b, :, h] / np.linalg.norm(q[b, :, h], axis=-1, keepdims=True)
            per_round = {i: [] for i in real}
            for r in range(rotations.shape[2]):
                rot = q[b, :, h] @ rotations[h, :, r]
                bucket = np.argmax(np.concatenate([rot, -rot], axis=-1), axis=-1)
                ordered = sorted(real, key=lambda i: (bucket[i], i))
                for slot, i in enumerate(ordered):
                    chunk = slot // chunk_len
                    window = [j for s, j in enumerate(ordered) if chunk - 1 <= s // chunk_len <= chunk]
                    if self_mask and len(window) > 1:
                        window = [j for j in window if j != i]
                    logits = np.array([q[b, i, h] @ k[j] for j in window])
                    lse = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
                    per_round[i].append((lse, np.exp(logits - lse) @ v[b, window, h]))
            for i in real:
                lses = np.array([z for z, _ in per_round[i]])
                weights = np.exp(lses - lses.max())
                weights /= weights.sum()
                out[b, i, h] = sum(w * o for w, (_, o) in zip(weights, per_round[i]))
    return out


def _reformer(length=11, dim=4, **overrides):
    return make_attention("reformer", AttentionSpec(num_heads=2, head_dim=dim, max_length=length), **overrides)


@pytest.mark.parametrize("n_hashes,n_buckets,chunk_len", [(1, 4, 2), (3, 4, 3), (2, 6, 4)])
def test_float64_matches_brute_force(n_hashes, n_buckets, chunk_len):
    q, v, mask = _inputs()
    with jax.enable_x64(True):
        attention = _reformer(n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=chunk_len)
        rotations = np.asarray(attention.fixed_rotations[...], np.float64)
        out = np.asarray(attention(jnp.asarray(q), None, jnp.asarray(v), jnp.asarray(mask), deterministic=True))
    reference = reformer_brute_force(q, v, mask, rotations, chunk_len)
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-10, atol=1e-12)
    assert np.isfinite(out).all()


def test_one_chunk_is_shared_qk_softmax_without_self():
    """chunk_len >= n: every real key is in every window; softmax of q_i.q_j/|q_j| over j != i."""
    q, v, mask = _inputs(seed=1)
    with jax.enable_x64(True):
        out = np.asarray(_reformer(n_hashes=2, chunk_len=11)(
            jnp.asarray(q), None, jnp.asarray(v), jnp.asarray(mask), deterministic=True))
    reference = np.zeros_like(v)
    for b in range(2):
        for h in range(2):
            unit = q[b, :, h] / np.linalg.norm(q[b, :, h], axis=-1, keepdims=True)
            for i in np.flatnonzero(mask[b]):
                keys = [j for j in np.flatnonzero(mask[b]) if j != i]
                logits = unit[keys] @ q[b, i, h]
                w = np.exp(logits - logits.max())
                reference[b, i, h] = (w / w.sum()) @ v[b, keys, h]
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-10, atol=1e-12)


def test_a_query_alone_in_its_window_attends_to_itself():
    q, v, _ = _inputs(seed=2)
    mask = np.zeros((2, 11), bool)
    mask[0, 3] = True
    with jax.enable_x64(True):
        out = np.asarray(_reformer(n_buckets=4, chunk_len=2)(
            jnp.asarray(q), None, jnp.asarray(v), jnp.asarray(mask), deterministic=True))
    np.testing.assert_allclose(out[0, 3], v[0, 3], rtol=1e-12)


def test_without_self_mask_a_query_also_attends_to_itself():
    """self_mask: false with one chunk: softmax of q_i.q_j/|q_j| over every real j, i included."""
    q, v, mask = _inputs(seed=3)
    with jax.enable_x64(True):
        out = np.asarray(_reformer(chunk_len=11, self_mask=False)(
            jnp.asarray(q), None, jnp.asarray(v), jnp.asarray(mask), deterministic=True))
    unit = q / np.linalg.norm(q, axis=-1, keepdims=True)
    reference = softmax_reference(q * 2.0, unit, v, mask)  # (2 q).k / sqrt(4) = q.k
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-10, atol=1e-12)


# --- the official LRA code's form (legacy_lra) ------------------------------------------------------

def lra_code_reference(q, v, rotations, n_buckets):
    """NumPy transcription of the official lsh_attention_single_head, one (example, head) at a time:
    zero-pad to the next multiple of 10 (10 more if already one), hash with rotations shared by the
    heads, sort by (round, bucket, position), n_hashes x n_buckets chunks with the wrapping look-back
    of look_one_back, logits q.q sqrt(d) with no mask, unsort, combine rounds by their log-sum-exps."""
    b, n, h, d = q.shape
    length = n + 10 - n % 10
    rounds = rotations.shape[1]
    out = np.zeros_like(v)
    for bi in range(b):
        for hi in range(h):
            x = np.zeros((length, d)); x[:n] = q[bi, :, hi]
            val = np.zeros((length, d)); val[:n] = v[bi, :, hi]
            rotated = np.einsum("tf,fhi->hti", x, rotations)
            buckets = np.argmax(np.concatenate([rotated, -rotated], -1), -1) + n_buckets * np.arange(rounds)[:, None]
            ticker = np.arange(rounds * length)
            sticker = np.argsort(length * buckets.reshape(-1) + ticker % length, kind="stable")
            undo = np.argsort(sticker, kind="stable")
            st = sticker % length
            bqk = x[st].reshape(rounds * n_buckets, -1, d)
            bv = val[st].reshape(rounds * n_buckets, -1, d)
            look_back = lambda c: np.concatenate([c, np.concatenate([c[-1:], c[:-1]], 0)], 1)
            dots = np.einsum("hie,hje->hij", bqk, look_back(bqk)) * d ** 0.5
            lse = np.log(np.exp(dots - dots.max(-1, keepdims=True)).sum(-1, keepdims=True)) + dots.max(-1, keepdims=True)
            o = np.matmul(np.exp(dots - lse), look_back(bv)).reshape(-1, d)[undo].reshape(rounds, length, d)
            logits = lse.reshape(-1)[undo].reshape(rounds, length, 1)
            probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
            out[bi, :, hi] = (o * probs).sum(0)[:n]
    return out


@pytest.mark.parametrize("length,n_hashes,n_buckets", [(11, 1, 4), (13, 2, 10)])
def test_legacy_lra_matches_the_official_code_on_padding_and_holes(length, n_hashes, n_buckets):
    q, v, mask = _inputs(seed=7, length=length)  # 20 -> 5 chunks of 4 / 20 -> 2 x 10 chunks of 2
    with jax.enable_x64(True):
        attention = _reformer(length=length, n_hashes=n_hashes, n_buckets=n_buckets, legacy_lra=True)
        rotations = np.asarray(attention.fixed_rotations[...][0], np.float64)
        out = np.asarray(attention(jnp.asarray(q), None, jnp.asarray(v), jnp.asarray(mask), deterministic=False))
    np.testing.assert_allclose(out, lra_code_reference(q, v, rotations, n_buckets), rtol=1e-10, atol=1e-12)
    corrected = reformer_brute_force(q, v, mask, np.asarray(attention.fixed_rotations[...], np.float64),
                                     attention.chunk_len)
    assert np.abs(out[mask] - corrected[mask]).max() > 1e-2


def test_legacy_lra_refuses_a_length_its_reshape_cannot_split():
    q = jnp.ones((1, 11, 2, 4))
    with pytest.raises(ValueError, match="attention.n_buckets"):
        _reformer(n_buckets=6, legacy_lra=True)(q, None, q, jnp.ones((1, 11), bool), deterministic=True)


def test_rotations_fixed_at_evaluation_and_redrawn_in_training():
    q, v, mask = (jnp.asarray(t, jnp.float32) for t in _inputs(seed=4, length=16))
    attention = _reformer(length=16, n_buckets=4, chunk_len=2)
    evaluation = attention(q, None, v, mask, deterministic=True)
    trained = [attention(q, None, v, mask, deterministic=False) for _ in range(2)]
    assert not np.allclose(np.asarray(trained[0]), np.asarray(trained[1]))
    np.testing.assert_array_equal(np.asarray(attention(q, None, v, mask, deterministic=True)), np.asarray(evaluation))
    fixed = _reformer(length=16, n_buckets=4, chunk_len=2, redraw="never")
    np.testing.assert_array_equal(np.asarray(fixed(q, None, v, mask, deterministic=False)),
                                  np.asarray(fixed(q, None, v, mask, deterministic=True)))


def test_rotations_come_from_the_seed():
    shape = AttentionSpec(num_heads=2, head_dim=4, max_length=8)
    a, b, c = (make_attention("reformer", shape, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(np.asarray(a.fixed_rotations[...]), np.asarray(b.fixed_rotations[...]))
    assert not np.allclose(np.asarray(a.fixed_rotations[...]), np.asarray(c.fixed_rotations[...]))


def test_default_chunk_is_the_lra_codes():
    """LRA pads 1001 tokens to 1010 and reshapes into 10 chunks of 101: ceil(1001 / 10)."""
    assert _reformer(length=1001).chunk_len == 101
    assert _reformer(length=1024).chunk_len == 103


def test_odd_bucket_count_is_refused():
    with pytest.raises(ValueError, match="attention.n_buckets"):
        _reformer(n_buckets=5)


def test_memory_grows_linearly_at_fixed_chunk():
    attention = _reformer(length=1024, dim=16, n_hashes=2, n_buckets=8, chunk_len=32)
    for ratio in growth_per_doubling(attention, lengths=(256, 512, 1024), backward=True):
        assert ratio < 2.5, ratio
