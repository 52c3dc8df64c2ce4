"""Longformer attention: sliding window plus global tokens (Beltagy et al., "Longformer: The
Long-Document Transformer", 2020, Sec. 3.1), the "Longformer" row of the LRA paper (Tay et al., ICLR
2021; official code ``lra_benchmarks/models/longformer/longformer_attention.py``).

With window w, left = w - floor(w/2) (the query itself included) and right = floor(w/2), as the
official ``_build_sliding_window_mask`` (an odd w is symmetric, an even w gives the left one more):

    i attends j  iff  -(left - 1) <= j - i <= right,  or  j < g,  or  i < g

where the first g = ``num_global_tokens`` positions are global (they attend, and are attended by,
every position; under CLS pooling position 0 is the CLS token). One softmax over the union, padded
keys removed. Blocked through attention/block_sparse.py with blocks of max(left - 1, right) positions
(each query block gathers its two neighbours): O(n w) time and memory, no n x n tensor. When the
window spans a third of the input or more, one block of n is cheaper and is used instead.

Global attention here reuses the layer's Q/K/V projections; the paper (and the official module, which
builds them) gives global attention its own projections. With LRA's settings below they are unused.

Defaults per task (official LRA at cd31e5c): ``sliding_window_size`` 512 on every task (the default of
``LongformerEncoder`` in ``models/longformer/longformer.py``; no LRA config sets it). The official
encoder never passes a ``global_mask``, so LRA's Longformer has **no global token** (README quirk table):
the default here is g = 1 (the paper's classification setting, global attention on the first/CLS
token) and the lra_official task presets set ``num_global_tokens: 0`` to reproduce the official runs
(configs/hparams/lra_official/*.yaml, ``task.attention_overrides.longformer``).
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from attention.base import AttentionSpec
from attention.block_sparse import block_sparse_attention, num_blocks


def window_sides(window_size: int) -> tuple[int, int]:
    """(left incl. the query itself, right) of the official ``_build_sliding_window_mask``."""
    right = window_size // 2
    return window_size - right, right


def longformer_attention(q, k, v, key_mask, *, window_size: int, num_global_tokens: int = 0, weights_fn=None):
    """Sliding window + global tokens of the module docstring; q, k, v (b, n, h, d), key_mask (b, n)."""
    n = q.shape[1]
    left, right = window_sides(window_size)
    # Blocks of the window's reach (three per query block); one block of n when three blocks would
    # cover the whole input anyway (a window of n/3 or more: gathering would cost more than dense).
    reach = max(left - 1, right, 1)
    block = n if 3 * reach >= n else reach
    nb = num_blocks(n, block)
    blocks = np.arange(nb)
    key_blocks = np.stack([blocks - 1, blocks, blocks + 1], -1)[None]
    g = min(num_global_tokens, n)

    def in_window(p, p2):  # global keys come through the extra columns
        return (p2 - p >= 1 - left) & (p2 - p <= right) & (p2 >= g)

    return block_sparse_attention(q, k, v, key_mask, block_size=block, key_blocks=key_blocks, block_allowed=in_window,
                                  extra_keys=np.arange(g), global_queries=np.arange(g), weights_fn=weights_fn)


class LongformerAttention(nnx.Module):
    """Sliding-window attention with ``num_global_tokens`` leading global tokens."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, sliding_window_size: int = 512,
                 num_global_tokens: int = 1):
        if not isinstance(sliding_window_size, int) or sliding_window_size < 1:
            raise ValueError(f"attention.sliding_window_size must be a positive integer, got {sliding_window_size!r}")
        if not isinstance(num_global_tokens, int) or num_global_tokens < 0:
            raise ValueError(f"attention.num_global_tokens must be an integer >= 0, got {num_global_tokens!r}")
        self.sliding_window_size, self.num_global_tokens = sliding_window_size, num_global_tokens
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        weights_fn = None
        if self.dropout.rate > 0 and not deterministic:
            weights_fn = lambda w: self.dropout(w, deterministic=False)  # noqa: E731
        return longformer_attention(q, k, v, key_mask, window_size=self.sliding_window_size,
                                    num_global_tokens=self.num_global_tokens, weights_fn=weights_fn)
