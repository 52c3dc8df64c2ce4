"""Linear attention with the elu+1 feature map (Katharopoulos et al., "Transformers are RNNs", ICML 2020).

    phi(x) = elu(x) + 1                                                              (Sec. 3.2)
    out_i  = phi(q_i)^T (sum_j m_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j m_j phi(k_j) + eps)   (Eq. 6)

No 1/sqrt(d) scaling (as in the paper); padded keys (m_j = 0) are removed from both sums.
Cost O(n d d_v) time and O(d d_v) extra memory per head: the n x n matrix is never formed.

Legacy forms (quirk A7; off by default, results depend on them):
  - ``legacy_unnormalised``: the Nyström LRA harness (``LRA/code/attention_linear.py``) has no
    denominator and scales phi(Q) and phi(K) by ``Q.size(2) ** -0.25`` each.
    Its tensors are (batch, heads, length, head_dim), so that size is the padded LENGTH n, not the head
    dim (the reference doc's "d^-1/4" misreads it):
        out_i = n^(-1/2) · sum_j m_j phi(q_i)^T phi(k_j) v_j
    with padded keys and values zeroed. Outputs grow with the number of real keys and depend on the
    padded length n, so this form is not padding invariant.
  - ``legacy_ignore_mask``: the official LRA code (``lra_benchmarks/models/linear_transformer``)
    never passes the padding mask to Eq. 6, so padded keys enter both sums (not padding invariant).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec


def elu_feature_map(x: jax.Array) -> jax.Array:
    return jax.nn.elu(x) + 1.0


def linear_attention(q, k, v, key_mask, *, eps: float = 1e-6, legacy_unnormalised: bool = False,
                     legacy_ignore_mask: bool = False):
    """Eq. 6 with masked keys; sums in at least fp32 (bf16 inputs are upcast, fp64 stays fp64).

    The two legacy flags select the forms of the module docstring.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    if legacy_ignore_mask:
        key_mask = jnp.ones_like(key_mask)
    phi_q = elu_feature_map(q.astype(dtype))
    phi_k = elu_feature_map(k.astype(dtype)) * key_mask[:, :, None, None]
    kv = jnp.einsum("bkhd,bkhe->bhde", phi_k, v.astype(dtype))
    numerator = jnp.einsum("bqhd,bhde->bqhe", phi_q, kv)
    if legacy_unnormalised:
        return (numerator * q.shape[1] ** -0.5).astype(q.dtype)
    denominator = jnp.einsum("bqhd,bhd->bqh", phi_q, phi_k.sum(axis=1))
    return (numerator / (denominator[..., None] + eps)).astype(q.dtype)


class LinearAttention(nnx.Module):
    """Katharopoulos et al. linear attention; ``eps`` is the denominator guard of Eq. 6.

    ``legacy_unnormalised`` and ``legacy_ignore_mask`` select the legacy forms of the module doc.
    """

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, eps: float = 1e-6,
                 legacy_unnormalised: bool = False, legacy_ignore_mask: bool = False):
        del spec, rngs  # no parameters and no randomness
        self.eps = eps
        self.legacy_unnormalised = bool(legacy_unnormalised)
        self.legacy_ignore_mask = bool(legacy_ignore_mask)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        return linear_attention(q, k, v, key_mask, eps=self.eps, legacy_unnormalised=self.legacy_unnormalised,
                                legacy_ignore_mask=self.legacy_ignore_mask)
