"""A user's own attention, kept outside the harness (tests/test_new_kernel.py runs it as a user would).

ReLU attention with a learned temperature per head: w_ij = relu(q_i . k_j / (sqrt(d) * t_h)) over real
keys, rows normalised to sum to one. It follows the contract of attention/base.py: per-head q, k, v
of shape (batch, length, heads, head_dim), a key mask, and the same shape back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec


class ReluTemperatureAttention(nnx.Module):
    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, eps: float = 1e-6):
        self.eps = eps
        self.log_temperature = nnx.Param(jnp.zeros((spec.num_heads,)))  # one learned scalar per head

    def __call__(self, q, k, v, key_mask, *, deterministic):
        scale = q.shape[-1] ** -0.5 * jnp.exp(-self.log_temperature[...])[None, :, None, None]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
        weights = jax.nn.relu(scores) * key_mask[:, None, None, :]
        weights = weights / (weights.sum(-1, keepdims=True) + self.eps)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v).astype(q.dtype)  # compute dtype (the temperature is float32)
