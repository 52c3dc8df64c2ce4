"""Brute-force float64 NumPy references of each family's own math (loops over batch and head), and the
padded inputs the family tests compare on, and a masked-loss gradient helper."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx


def softmax_reference(q, k, v, key_mask):
    """softmax(q k^T / sqrt(d)) v over real keys, one (batch, head) at a time."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    batch, n, heads, d = q.shape
    out = np.zeros_like(q)
    for b in range(batch):
        real = np.asarray(key_mask[b], bool)
        for h in range(heads):
            scores = q[b, :, h] @ k[b, real, h].T / np.sqrt(d)
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            out[b, :, h] = weights @ v[b, real, h]
    return out


def linear_reference(q, k, v, key_mask, eps=1e-6):
    """Katharopoulos Eq. 6 written as an explicit double sum over queries and real keys."""
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))  # elu(x) + 1
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    batch, n, heads, d = q.shape
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                numerator, denominator = np.zeros(v.shape[-1]), 0.0
                for j in range(n):
                    if key_mask[b][j]:
                        similarity = phi(q[b, i, h]) @ phi(k[b, j, h])
                        numerator += similarity * v[b, j, h]
                        denominator += similarity
                out[b, i, h] = numerator / (denominator + eps)
    return out


def dense_pattern_reference(q, k, v, key_mask, allowed):
    """Float64 NumPy: softmax(q k^T / sqrt(d)) v over the keys j with ``allowed[h or 0][i, j]`` and key_mask.

    ``allowed``: bool (n, n) or (h, n, n), the explicit pattern. Rows with no allowed real key are 0.
    The brute-force reference of every sparse-pattern family (local, sparse_transformer, longformer, bigbird).
    """
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    allowed = np.asarray(allowed, bool)
    batch, n, heads, d = q.shape
    out = np.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            pattern = allowed if allowed.ndim == 2 else allowed[h]
            for i in range(n):
                keys = pattern[i] & np.asarray(key_mask[b], bool)
                if not keys.any():
                    continue
                scores = k[b, keys, h] @ q[b, i, h] / np.sqrt(d)
                w = np.exp(scores - scores.max())
                out[b, i, h] = (w / w.sum()) @ v[b, keys, h]
    return out


def padded_qkv(seed=0, batch=2, length=10, heads=2, dim=4, dtype=np.float64):
    """Random q, k, v of shape (batch, length, heads, dim) and a key mask with left padding and a hole
    in example 0 and right padding in example 1 (batch >= 2)."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, length, heads, dim)).astype(dtype) for _ in range(3))
    mask = np.ones((batch, length), bool)
    mask[0, :2] = False  # left padding ...
    mask[0, 5] = False  # ... and a hole
    mask[1, 7:] = False  # right padding
    return q, k, v, mask


def masked_input_grads(attention, q, k, v, mask, deterministic: bool):
    """Gradients of a masked loss of ``attention``'s output with respect to q, k, v (jit-compiled).

    The loss sums the output at real positions plus a small square term, so every real query, key
    and value that the attention uses gets a gradient; the output keeps q's dtype (asserted)."""
    @nnx.jit(static_argnums=4)
    def grads(attention, q, k, v, deterministic):
        def loss(attention, q, k, v):
            out = attention(q, k, v, mask, deterministic=deterministic)
            assert out.dtype == q.dtype
            out = out.astype(jnp.float32)
            return (out * mask[:, :, None, None]).sum() + 1e-3 * (out ** 2).sum()
        return nnx.grad(loss, argnums=(1, 2, 3))(attention, q, k, v)

    return grads(attention, q, k, v, deterministic)
