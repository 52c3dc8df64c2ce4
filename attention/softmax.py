"""Softmax attention, the baseline of every table (Vaswani et al., "Attention Is All You Need", 2017).

    out = softmax(Q K^T / sqrt(d) + mask) V                                            (Eq. 1)

with padded keys removed from every softmax row. Two computational paths, same math:

- ``implementation: xla`` (default, any device): two einsums around a float32 softmax, which
  materialise the (heads, n, n) logits: O(n^2) time and memory. When attention dropout is active
  (training with ``dropout_rate > 0``) dropout is applied to these weights, as in the official LRA
  and PyTorch harnesses. (``jax.nn.dot_product_attention(implementation="xla")`` computes the same
  numbers but its forward + backward was 2.5x slower on CPU at (8, 1024, 2, 32): docs/benchmarks.md.)
- ``implementation: cudnn`` (GPU only): the cuDNN fused flash-attention kernel, O(n) memory. cuDNN
  accepts only half precision, so q, k, v are cast to ``flash_dtype`` (bf16) for the kernel and the
  output is cast back; padding is passed as per-example lengths, which assumes right padding (the
  harness pads on the right). The fused kernel has no attention dropout, so this path refuses a
  nonzero ``model.attention_dropout_rate`` rather than silently skipping it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec

# Finite "minus infinity" for masked logits: a row with every key masked stays finite (uniform).
MASKED_LOGIT = -1e30


def softmax_attention_weights(q: jax.Array, k: jax.Array, key_mask: jax.Array) -> jax.Array:
    """Row-stochastic weights softmax(q k^T / sqrt(d)) over real keys; (batch, heads, n_q, n_k).

    Computed in at least fp32 (bf16 inputs are upcast; fp64 stays fp64).
    """
    scale = q.shape[-1] ** -0.5
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=dtype) * scale
    logits = jnp.where(key_mask[:, None, None, :], logits, MASKED_LOGIT)
    return jax.nn.softmax(logits, axis=-1)


def apply_weights(weights: jax.Array, v: jax.Array) -> jax.Array:
    """sum_j w_ij v_j for weights (b, h, q, k) and v (b, k, h, d) -> (b, q, h, d)."""
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


def softmax_attention(q, k, v, key_mask, *, implementation: str = "xla", flash_dtype=jnp.bfloat16):
    """Eq. 1 without dropout: explicit weights on XLA, or the cuDNN flash kernel."""
    if implementation == "xla":
        return apply_weights(softmax_attention_weights(q, k, key_mask), v)
    if implementation == "cudnn":
        lengths = key_mask.sum(axis=-1).astype(jnp.int32)
        out = jax.nn.dot_product_attention(
            q.astype(flash_dtype), k.astype(flash_dtype), v.astype(flash_dtype),
            query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn",
        )
        return out.astype(q.dtype)
    raise ValueError(f"attention.implementation must be 'xla' or 'cudnn', got {implementation!r}")


class SoftmaxAttention(nnx.Module):
    """Exact softmax attention; see the module docstring for the two implementations."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, implementation: str = "xla",
                 flash_dtype: str = "bfloat16"):
        if implementation not in ("xla", "cudnn"):
            raise ValueError(f"attention.implementation must be 'xla' or 'cudnn', got {implementation!r}")
        if implementation == "cudnn":
            if spec.dropout_rate > 0:
                raise ValueError(
                    "attention.implementation=cudnn: the fused flash kernel has no attention dropout; "
                    f"set model.attention_dropout_rate=0 (it is {spec.dropout_rate})"
                )
            if spec.head_dim % 8 or spec.head_dim > 256:
                raise ValueError(f"cuDNN flash attention needs head_dim % 8 == 0 and <= 256, got {spec.head_dim}")
        self.implementation = implementation
        self.flash_dtype = jnp.dtype(flash_dtype)
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        if self.dropout.rate > 0 and not deterministic:
            weights = softmax_attention_weights(q, k, key_mask)
            return apply_weights(self.dropout(weights, deterministic=False), v)
        return softmax_attention(q, k, v, key_mask, implementation=self.implementation,
                                 flash_dtype=self.flash_dtype)
