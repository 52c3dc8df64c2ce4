"""Sparse Sinkhorn attention (Tay, Bahri, Yang, Metzler, Juan, "Sparse Sinkhorn Attention", ICML 2020),
in the structure of the official LRA code (``lra_benchmarks/models/sinkhorn_transformer/sinkhorn_attention.py``).

The sequence is cut into N_B contiguous blocks of b tokens. A learned sorting network maps every
block to a distribution over blocks; each query block then attends to its own keys and to the
keys of the block the sort sends it, softly mixed:

    s_i     = sum_{t in block i, real} k_t                       block summary (sum pooling, Sec. 3.2)
    R_ij    = s_i . W_:j                                          sorting network, W in R^{d x N_max}
                                                                  (one linear layer, no bias, shared by heads)
    P       = softmax_j(R)                      (sort_activation: softmax, the LRA default)
            | Sinkhorn(R / tau) = row and column normalisation in log space, ``sinkhorn_iterations``
              times (sort_activation: sinkhorn, Sec. 3.3, Eq. 6-8)
    K~_i[s] = sum_j P_ij m_j[s] K_j[s],  V~_i likewise,  mu_i[s] = sum_j P_ij m_j[s]     (Sec. 3.2, psi_S)
    out     = softmax(Q_i K_i^T / sqrt(d) + mask) V_i  +  softmax(Q_i K~_i^T / sqrt(d) + [mu_i > 0]) V~_i

(local and sorted attention summed, as the LRA code combines them). Blocks and slots holding only
padding are excluded from P (as rows and columns, re-masked after every Sinkhorn step) and from both
softmaxes, so real outputs do not depend on padding appended to the right; the input is padded to a
multiple of b internally. With P = I the output is twice block-local attention. Cost O(n b d +
(n/b)^2 b d) time, O(n b + (n/b)^2) memory: linear in n at fixed b while n/b <= b.

N_max = ceil(max_length / b) columns of W; a longer input is refused (error names ``task.max_length``).
W is Glorot-uniform, as the official code. Attention dropout (``spec.dropout_rate``) is applied to
both softmax weight matrices in training, as the official code does. No Gumbel noise (the LRA code
has none on its default path).

Defaults per task (official LRA configs): block size 50 on ListOps, Text and Retrieval (the model's
default), 64 on CIFAR-10 and Pathfinder-32 (``image/configs/*/sinkhorn_base.py``); sort activation
softmax everywhere (no config changes it). The PyTorch-lineage papers have no Sinkhorn row.

The LRA code departs from the method (README quirk table); ``legacy_lra: true`` reproduces it:

  - it forms its blocks by reshaping (n) to (b, N_B), so "block" j is the strided set
    {j, j + N_B, j + 2 N_B, ...} (slot s = t // N_B), while its padding mask is cut into contiguous
    blocks: block j's local attention is masked with mask[j b + s] (queries) and mask[j b + s'] (keys)
    of the contiguous chunk j, so padded keys can be attended and real keys masked (bias -1e10);
  - its sorting einsum ``'bskhd,bnhl->bsnhd'`` sums over the source block k and the target index l
    separately: K~_n[s] = (sum_k K_k[s]) (sum_l P_nl), with sum_l P_nl = 1 for the softmax sort, so
    every sorted block is the sum of all blocks' keys (values alike, padding included) and the sorting
    network gets no gradient; the sorted mask is (sum_k mask_k[s, s']) (sum_{h,l} P) > 0, i.e. slot
    pair (s, s') is open when any contiguous chunk has both real;
  - its reshape needs n to be a multiple of b; here the input is padded with masked zero positions
    to the next multiple instead (the official code would refuse such a length).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice
from attention.softmax import MASKED_LOGIT

SORT_ACTIVATIONS = ("softmax", "sinkhorn")


def sort_matrix(logits, block_real, *, sort_activation: str = "softmax", iterations: int = 1,
                temperature: float = 1.0):
    """P (batch, heads, N_B, N_B) from sort logits (batch, heads, N_B, N_B); rows/cols of padding-only
    blocks are zero. softmax: each row normalised; sinkhorn: alternate row and column normalisation."""
    valid = block_real[:, None, :, None] & block_real[:, None, None, :]
    log_alpha = jnp.where(valid, logits, MASKED_LOGIT)
    if sort_activation == "softmax":
        return jax.nn.softmax(log_alpha, axis=-1) * valid
    log_alpha = jnp.where(valid, logits / temperature, MASKED_LOGIT)
    for _ in range(iterations):
        log_alpha = jnp.where(valid, log_alpha - jax.nn.logsumexp(log_alpha, axis=-1, keepdims=True), MASKED_LOGIT)
        log_alpha = jnp.where(valid, log_alpha - jax.nn.logsumexp(log_alpha, axis=-2, keepdims=True), MASKED_LOGIT)
    return jnp.exp(log_alpha) * valid


def _masked_weights(q, k, key_ok):
    """softmax(q k^T / sqrt(d)) over the keys with key_ok, batched over the leading axes."""
    logits = jnp.einsum("...qd,...kd->...qk", q, k) * q.shape[-1] ** -0.5
    return jax.nn.softmax(jnp.where(key_ok[..., None, :], logits, MASKED_LOGIT), axis=-1)


def sinkhorn_attention(q, k, v, key_mask, sort_kernel, *, block_size: int, sort_activation: str = "softmax",
                       iterations: int = 1, temperature: float = 1.0, dropout=None):
    """The module docstring's equations; q, k, v (batch, n, heads, d); sort_kernel (d, N_max).

    ``dropout``: a function applied to each attention weight matrix (training), or None.
    Computed in at least fp32 (bf16 upcast, fp64 kept); returns q's shape and dtype.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    batch, n, heads, d = q.shape
    n_blocks = -(-n // block_size)
    if n_blocks > sort_kernel.shape[-1]:
        raise ValueError(f"attention sinkhorn: input length {n} needs {n_blocks} blocks of {block_size}, but the "
                         f"sorting network was built for {sort_kernel.shape[-1]} (from task.max_length plus any "
                         "CLS token); raise task.max_length")
    pad = n_blocks * block_size - n

    def blocks(x):  # (b, n, h, d) -> (b, h, N_B, block, d)
        x = jnp.pad(x.astype(dtype), [(0, 0), (0, pad), (0, 0), (0, 0)])
        return jnp.moveaxis(x.reshape(batch, n_blocks, block_size, heads, d), 3, 1)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    m = jnp.pad(key_mask, [(0, 0), (0, pad)]).reshape(batch, n_blocks, block_size)
    mf = m.astype(dtype)[:, None, :, :, None]
    kb, vb = kb * mf, vb * mf  # padded keys and values contribute nothing to any mixture
    block_real = m.any(axis=-1)
    summary = kb.sum(axis=-2)  # (b, h, N_B, d)
    logits = jnp.einsum("bhnd,dl->bhnl", summary, sort_kernel.astype(dtype)[:, :n_blocks])
    p = sort_matrix(logits, block_real, sort_activation=sort_activation, iterations=iterations,
                    temperature=temperature)
    sorted_k = jnp.einsum("bhij,bhjsd->bhisd", p, kb)
    sorted_v = jnp.einsum("bhij,bhjsd->bhisd", p, vb)
    mass = jnp.einsum("bhij,bjs->bhis", p, m.astype(dtype))
    local = _masked_weights(qb, kb, m[:, None])
    sorted_ = _masked_weights(qb, sorted_k, mass > 0)
    if dropout is not None:
        local, sorted_ = dropout(local), dropout(sorted_)
    out = jnp.einsum("...qk,...kd->...qd", local, vb) + jnp.einsum("...qk,...kd->...qd", sorted_, sorted_v)
    out = jnp.moveaxis(out, 1, 3).reshape(batch, n_blocks * block_size, heads, d)[:, :n]
    return out.astype(q.dtype)


def lra_sinkhorn_attention(q, k, v, key_mask, sort_kernel, *, block_size: int, dropout=None):
    """The official LRA code's computation, bugs included (``legacy_lra``; module docstring)."""
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    batch, n, heads, d = q.shape
    n_blocks = -(-n // block_size)
    if n_blocks > sort_kernel.shape[-1]:
        raise ValueError(f"attention sinkhorn: input length {n} needs {n_blocks} blocks of {block_size}; "
                         "raise task.max_length")
    pad = n_blocks * block_size - n

    def strided(x):  # (b, n, h, d) -> (b, h, N_B, block, d) with slot s, block j = token s N_B + j
        x = jnp.pad(x.astype(dtype), [(0, 0), (0, pad), (0, 0), (0, 0)])
        return jnp.transpose(x.reshape(batch, block_size, n_blocks, heads, d), (0, 3, 2, 1, 4))

    qb, kb, vb = strided(q), strided(k), strided(v)
    m = jnp.pad(key_mask, [(0, 0), (0, pad)]).reshape(batch, n_blocks, block_size)  # contiguous chunks
    chunk_mask = m[:, :, :, None] & m[:, :, None, :]  # (b, N_B, s, s'): the official padding mask
    logits = jnp.einsum("bhnd,dl->bhnl", kb.sum(axis=-2), sort_kernel.astype(dtype)[:, :n_blocks])
    p_sum = jax.nn.softmax(logits, axis=-1).sum(axis=-1)  # (b, h, N_B): sum_l P_nl, 1 up to rounding
    sorted_k = kb.sum(axis=2, keepdims=True) * p_sum[..., None, None]
    sorted_v = vb.sum(axis=2, keepdims=True) * p_sum[..., None, None]
    sorted_mask = chunk_mask.sum(axis=1)[:, None].astype(dtype) * p_sum.sum(axis=1)[:, :, None, None] > 0
    scale = d ** -0.5

    def weights(keys, allowed):
        scores = jnp.einsum("bhnsd,bhnkd->bhnsk", qb * scale, keys)
        return jax.nn.softmax(scores + jnp.where(allowed, 0.0, -1e10), axis=-1)  # the official additive bias

    local = weights(kb, chunk_mask[:, None])
    sorted_ = weights(sorted_k, sorted_mask[:, None])
    if dropout is not None:
        local, sorted_ = dropout(local), dropout(sorted_)
    out = jnp.einsum("bhnsk,bhnkd->bhnsd", local, vb) + jnp.einsum("bhnsk,bhnkd->bhnsd", sorted_, sorted_v)
    out = jnp.transpose(out, (0, 3, 2, 1, 4)).reshape(batch, n_blocks * block_size, heads, d)[:, :n]
    return out.astype(q.dtype)


# Compiled once per shape for calls without dropout (evaluation, tests); with dropout the module's
# nnx.Dropout must run in the caller's trace, so those calls go through the plain functions.
_sinkhorn_jit = jax.jit(sinkhorn_attention, static_argnames=("block_size", "sort_activation", "iterations",
                                                             "temperature", "dropout"))
_lra_sinkhorn_jit = jax.jit(lra_sinkhorn_attention, static_argnames=("block_size", "dropout"))


class SinkhornAttention(nnx.Module):
    """Sparse Sinkhorn attention; knobs and defaults in the module docstring."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, block_size: int = 50,
                 sort_activation: str = "softmax", sinkhorn_iterations: int = 1, temperature: float = 1.0,
                 legacy_lra: bool = False):
        if block_size < 1:
            raise ValueError(f"attention.block_size must be >= 1, got {block_size}")
        require_choice("attention.sort_activation", sort_activation, SORT_ACTIVATIONS)
        if sinkhorn_iterations < 1 or temperature <= 0:
            raise ValueError("attention.sinkhorn_iterations must be >= 1 and attention.temperature > 0, got "
                             f"{sinkhorn_iterations} and {temperature}")
        self.block_size, self.sort_activation = block_size, sort_activation
        self.iterations, self.temperature = sinkhorn_iterations, temperature
        self.legacy_lra = bool(legacy_lra)
        if self.legacy_lra and sort_activation != "softmax":
            raise ValueError("attention.legacy_lra reproduces the official default sort_activation=softmax only")
        max_blocks = -(-spec.max_length // block_size)
        self.sort_kernel = nnx.Param(jax.nn.initializers.xavier_uniform()(
            rngs.params(), (spec.head_dim, max_blocks), jnp.float32))
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        dropout = None
        if self.dropout.rate > 0 and not deterministic:
            dropout = lambda w: self.dropout(w, deterministic=False)
        if self.legacy_lra:
            function = lra_sinkhorn_attention if dropout else _lra_sinkhorn_jit
            return function(q, k, v, key_mask, self.sort_kernel[...], block_size=self.block_size, dropout=dropout)
        function = sinkhorn_attention if dropout else _sinkhorn_jit
        return function(q, k, v, key_mask, self.sort_kernel[...], block_size=self.block_size,
                        sort_activation=self.sort_activation, iterations=self.iterations,
                        temperature=self.temperature, dropout=dropout)
