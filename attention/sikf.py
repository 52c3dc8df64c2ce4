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

- ``offset: max`` (default): the keys are shifted per dimension by M_a = max over the real keys of
  k_ja (one vector per (example, head)), and that shift is folded into the query side, which is then
  shifted per row by c_i = max_a (q_ia + M_a):

      phi(k_j)_a = exp(k_ja - M_a),   phi(q_i)_a = exp(q_ia + M_a - c_i),   phi(q_i).phi(k_j) = K(q_i, k_j) e^-c_i

  so the shift cancels exactly in row i. Every entry is <= 1 (nothing overflows), and in the
  dimension a* attaining c_i the query entry is 1 and the key sum is >= 1, so a row's denominator
  is >= 1 and never underflows, even when queries and keys peak in different dimensions (a shared
  per-row query max and per-set key max, the earlier form, underflows there: q at +20 in one
  dimension, k at +30 in another gives a denominator of e^-20 and an output of ~0 next to eps).
  O(n d) like the rest. Only real keys enter M, so padding cannot change real outputs; an example
  with no real key gets M = 0 and output 0.
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

    Returns ``(q_shift, k_shift)`` broadcastable to q and k: ``(b, n, h, d)`` and ``(b, 1, h, d)``
    for ``max`` (per-dimension key maxima folded into the query rows), ``(b, 1, h, 1)`` for ``mean``.
    """
    if offset == "max":
        real = key_mask[:, :, None, None]
        k_max = jnp.where(real, k, -jnp.inf).max(axis=1, keepdims=True)
        k_shift = jnp.where(jnp.isfinite(k_max), k_max, 0.0)  # no real key: any constant will do
        row_max = (q + k_shift).max(axis=-1, keepdims=True)  # c_i = max_a (q_ia + M_a)
        q_shift = row_max - k_shift  # q - q_shift = q + M - c_i
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
