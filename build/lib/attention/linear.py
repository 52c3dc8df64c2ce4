"""Linear attention with the elu+1 feature map (Katharopoulos et al., "Transformers are RNNs", ICML 2020).

    phi(x) = elu(x) + 1                                                              (Sec. 3.2)
    out_i  = phi(q_i)^T (sum_j m_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j m_j phi(k_j) + eps)   (Eq. 6)

No 1/sqrt(d) scaling (as in the paper); padded keys (m_j = 0) are removed from both sums.
Cost O(n d d_v) time and O(d d_v) extra memory per head: the n x n matrix is never formed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec


def elu_feature_map(x: jax.Array) -> jax.Array:
    return jax.nn.elu(x) + 1.0


def linear_attention(q, k, v, key_mask, *, eps: float = 1e-6):
    """Eq. 6 with masked keys; sums in at least fp32 (bf16 inputs are upcast, fp64 stays fp64)."""
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    phi_q = elu_feature_map(q.astype(dtype))
    phi_k = elu_feature_map(k.astype(dtype)) * key_mask[:, :, None, None]
    kv = jnp.einsum("bkhd,bkhe->bhde", phi_k, v.astype(dtype))
    numerator = jnp.einsum("bqhd,bhde->bqhe", phi_q, kv)
    denominator = jnp.einsum("bqhd,bhd->bqh", phi_q, phi_k.sum(axis=1))
    return (numerator / (denominator[..., None] + eps)).astype(q.dtype)


class LinearAttention(nnx.Module):
    """Katharopoulos et al. linear attention; ``eps`` is the denominator guard of Eq. 6."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, eps: float = 1e-6):
        del spec, rngs  # no parameters and no randomness
        self.eps = eps

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        return linear_attention(q, k, v, key_mask, eps=self.eps)
