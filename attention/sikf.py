"""SIKF: linear attention with the shift-invariant exp kernel (Zubkov & Gavrilov, "FastRPB: a Scalable
Relative Positional Encoding for Long Sequence Tasks", arXiv 2202.11364, 2022).

    K(q, k)  = sum_a exp(q_a + k_a) = phi(q)^T phi(k),   phi(x) = exp(x) elementwise
    out_i    = phi(q_i)^T (sum_j m_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j m_j phi(k_j) + eps)

on the raw per-head q and k: no 1/sqrt(d) temperature and no random features; padded keys
(m_j = 0) are removed from both sums. Adding a constant c to every entry of q_i multiplies row i's
numerator and denominator by e^c, and adding one constant to every key multiplies all rows by it,
so normalised attention is shift invariant like softmax (hence the name). Cost O(n d d_v) time and
O(d d_v) extra memory per head, as elu+1 linear attention.

Exponentials overflow, so constant shifts are subtracted before exp. They cancel exactly in the
normalisation and change the result only through eps (and through over/underflow):

- ``offset: max`` (default; the stable form recommended in the reference): each query row is shifted
  by its own max over d (cancels in that row), the keys by one max over the (real keys, d) of their
  (example, head) (shared by all keys). Every phi entry is then <= 1 and the largest query entry is
  exactly 1, so nothing overflows. Only real keys enter the max, so padding cannot change real
  outputs; an example with no real key gets offset 0 and output 0.
- ``offset: mean`` (the authors' LinBERT code): one scalar c = mean_{n,d}(q) + mean_{n,d}(k) per
  (example, head) is subtracted from both q and k, with padded positions included in the means.
  It overflows for large activations (|q| ~ 100 gives inf/NaN in fp32) and lets padding shift the
  eps term, so it is offered only to reproduce the authors' numerics.

Sums are accumulated in at least fp32 (bf16 inputs are upcast, fp64 stays fp64); the offsets are
constants for differentiation (``stop_gradient``), as the max in a stable softmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice

OFFSETS = ("max", "mean")


def sikf_offsets(q, k, key_mask, offset: str = "max"):
    """Shifts subtracted from q (per query row) and k (per example and head) before exp.

    Returns ``(q_shift, k_shift)`` broadcastable to q and k: ``(b, n, h, 1)`` and ``(b, 1, h, 1)``.
    """
    if offset == "max":
        q_shift = q.max(axis=-1, keepdims=True)
        real = key_mask[:, :, None, None]
        k_max = jnp.where(real, k, -jnp.inf).max(axis=(1, 3), keepdims=True)
        k_shift = jnp.where(jnp.isfinite(k_max), k_max, 0.0)  # no real key: any constant will do
    elif offset == "mean":  # authors: mean over length and d, padded positions included
        shared = q.mean(axis=(1, 3), keepdims=True) + k.mean(axis=(1, 3), keepdims=True)
        q_shift = k_shift = shared
    else:
        raise ValueError(f"attention.offset must be one of {OFFSETS}, got {offset!r}")
    return jax.lax.stop_gradient(q_shift), jax.lax.stop_gradient(k_shift)


def sikf_attention(q, k, v, key_mask, *, eps: float = 1e-6, offset: str = "max"):
    """Row-normalised exp-kernel linear attention over real keys; returns q's dtype."""
    out_dtype, dtype = q.dtype, jnp.promote_types(q.dtype, jnp.float32)
    q, k, v = (t.astype(dtype) for t in (q, k, v))
    q_shift, k_shift = sikf_offsets(q, k, key_mask, offset)
    real = key_mask[:, :, None, None]
    phi_q = jnp.exp(q - q_shift)
    # Double where: a padded key's garbage never reaches exp, so neither it nor its gradient is inf.
    phi_k = jnp.where(real, jnp.exp(jnp.where(real, k - k_shift, 0.0)), 0.0)
    kv = jnp.einsum("bkhd,bkhe->bhde", phi_k, v)
    numerator = jnp.einsum("bqhd,bhde->bqhe", phi_q, kv)
    denominator = jnp.einsum("bqhd,bhd->bqh", phi_q, phi_k.sum(axis=1))
    return (numerator / (denominator[..., None] + eps)).astype(out_dtype)


class SIKFAttention(nnx.Module):
    """Shift-invariant exp-kernel linear attention; ``offset`` selects the stabilising shift."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, eps: float = 1e-6, offset: str = "max"):
        del spec, rngs  # no parameters and no randomness
        require_choice("attention.offset", offset, OFFSETS)
        self.eps, self.offset = eps, offset

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        return sikf_attention(q, k, v, key_mask, eps=self.eps, offset=self.offset)
