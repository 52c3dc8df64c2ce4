"""Sparse Transformer attention, "fixed" pattern (Child et al., "Generating Long Sequences with Sparse
Transformers", 2019, Sec. 4.3), as the LRA paper ran it (Tay et al., ICLR 2021, "Sparse Trans." row;
official code ``lra_benchmarks/models/sparse_transformer/sparse_attention.py``).

In token coordinates t (CLS excluded), with block length l and c summary positions:

    A1(t) = {t' : floor(t'/l) = floor(t/l)}                       (same block; Fixed1Pattern)
    A2(t) = {t' : t' mod l = 0  or  t' mod l >= l - c}            (summary positions; Fixed2Pattern)
    t attends A1(t) ∪ A2(t), restricted to t' <= t when ``causal`` (both patterns, as the official
    ``_build_mask`` ANDs each with the lower triangle)

one softmax over the union, padded keys removed. The official Fixed2 adds ``t' mod l == 0`` to the
paper's last-c summary positions; this module follows the official set (c + 1 positions per block).
With a CLS token (``spec.has_cls``, the official ``use_cls_token`` under CLS pooling) the pattern
covers the tokens after it and CLS attends, and is attended by, every position (the official pads the
mask with ones in row and column 0).

Cost: O(n l) for A1 plus O(n · n (c+1)/l) for A2: the summary columns grow with n, so at fixed (l, c)
memory is quadratic with the small factor (c+1)/l (about 1/4.5 of dense at l=50, c=10), the
pattern's own cost (the paper takes l ~ sqrt(n)). Blocked through attention/block_sparse.py; no
n x n tensor is formed.

Defaults (official LRA ``utils/train_utils.py`` at cd31e5c, every task): Fixed1(block_size=50) and
Fixed2(block_size=50, c=10), causal. (The model file's own default, l=128 and c=32, is the paper's
EnWik8 setting and is not what LRA ran.)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.base import AttentionSpec
from attention.block_sparse import block_sparse_attention, num_blocks


def _is_summary(t, block_size: int, c: int):
    r = t % block_size
    return (r == 0) | (r >= block_size - c)


def sparse_transformer_attention(q, k, v, key_mask, *, block_size: int, c: int, causal: bool = True,
                                 has_cls: bool = False, weights_fn=None):
    """Fixed-pattern attention of the module docstring; q, k, v (b, n, h, d), key_mask (b, n)."""
    n = q.shape[1]
    off = int(has_cls)
    nb = num_blocks(n, block_size)
    # Token blocks start at position off; with a CLS each straddles two position blocks, so a query
    # block gathers its neighbours too (out-of-range indices are unused slots).
    blocks = np.arange(nb)
    key_blocks = (np.stack([blocks - 1, blocks, blocks + 1], -1) if off else blocks[:, None])[None]

    def same_block(p, p2):
        ok = (p >= off) & (p2 >= off) & ((p - off) // block_size == (p2 - off) // block_size)
        ok = ok & ~_is_summary(p2 - off, block_size, c)  # summary keys come through the extra columns
        return ok & (p2 <= p) if causal else ok

    tokens = np.arange(off, n)
    summary = tokens[np.asarray(_is_summary(tokens - off, block_size, c))]
    extra = np.concatenate([[0], summary]) if off else summary

    def summary_allowed(p, p2):
        ok = (p2 <= p) if causal else jnp.ones(jnp.broadcast_shapes(p.shape, p2.shape), bool)
        return (ok & (p >= off)) | (p2 < off)  # CLS is attended by every position

    return block_sparse_attention(q, k, v, key_mask, block_size=block_size, key_blocks=key_blocks,
                                  block_allowed=same_block, extra_keys=extra, extra_allowed=summary_allowed,
                                  global_queries=np.arange(off), weights_fn=weights_fn)


class SparseTransformerAttention(nnx.Module):
    """Child et al. fixed pattern as in LRA: ``block_size`` l, ``summary_size`` c, ``causal``."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, block_size: int = 50, summary_size: int = 10,
                 causal: bool = True):
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"attention.block_size must be a positive integer, got {block_size!r}")
        if not isinstance(summary_size, int) or not 0 <= summary_size < block_size:
            raise ValueError(f"attention.summary_size must be an integer in [0, block_size={block_size}), "
                             f"got {summary_size!r}")
        self.block_size, self.summary_size, self.causal = block_size, summary_size, bool(causal)
        self.has_cls = spec.has_cls
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        weights_fn = None
        if self.dropout.rate > 0 and not deterministic:
            weights_fn = lambda w: self.dropout(w, deterministic=False)  # noqa: E731
        return sparse_transformer_attention(q, k, v, key_mask, block_size=self.block_size, c=self.summary_size,
                                            causal=self.causal, has_cls=self.has_cls, weights_fn=weights_fn)
