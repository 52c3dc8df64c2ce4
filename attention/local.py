"""Local attention: softmax attention within non-overlapping blocks (the "Local Attention" row of the
LRA paper, Tay et al., ICLR 2021, Table 1; official code ``lra_benchmarks/models/local/local_attention.py``).

    out_i = sum_{j in blk(i), m_j} softmax_j(q_i . k_j / sqrt(d)) v_j,   blk(i) = {j : floor(j/B) = floor(i/B)}

with B = ``block_size``; padded keys are removed. The last block may be partial (any length). O(n B)
time and memory; blocked through attention/block_sparse.py, never an n x n tensor.

Defaults per task (official LRA at cd31e5c): ``block_size`` 50 on ListOps, Text and Retrieval (the
default of ``LocalTransformerEncoder`` in ``models/local/local.py``; their configs set none) and 64 on
Image and Pathfinder (``image/configs/{cifar10,pathfinder32}/local_base.py``: ``block_size = 64``).
The lra_official presets set them through ``task.attention_overrides.local`` (configs/hparams/lra_official/).

Quirk of the official code (off by default): ``legacy_strided_blocks``. The official module
reshapes (batch, n, ...) into (batch, block_size, n / block_size, ...) and attends over the first of
those axes, so the positions that attend each other are {j, j + n/B, j + 2 n/B, ...}: a strided
(dilated) pattern of stride n/B, not contiguous blocks. Its padding mask is reshaped the other way
(contiguous blocks), so the pair (i, j) is masked according to the tokens at the contiguous-layout
slots of the same (block, row, column), not to i and j. The input is first padded by
B - (n mod B) zero positions (a whole extra block when B divides n); its boolean mask is padded with
-1e9, which is True, so those slots count as real tokens with zero keys and values (the official
projections have no bias). With the flag, this module forms the same pattern and masks, including
the appended slots; outputs then depend on the padded length and on padding, as the official ones.
The lra_official task presets switch it on, since the published row was computed this way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.base import AttentionSpec
from attention.block_sparse import block_sparse_attention, num_blocks
from attention.softmax import MASKED_LOGIT


def local_attention(q, k, v, key_mask, *, block_size: int, weights_fn=None):
    """Attention within contiguous blocks of ``block_size`` positions (module docstring)."""
    nb = num_blocks(q.shape[1], block_size)
    return block_sparse_attention(q, k, v, key_mask, block_size=block_size,
                                  key_blocks=np.arange(nb).reshape(1, nb, 1), weights_fn=weights_fn)


def legacy_strided_local_attention(q, k, v, key_mask, *, block_size: int, weights_fn=None):
    """The official LRA computation (README quirk table): strided groups, contiguously reshaped mask."""
    batch, n, heads, d = q.shape
    B = block_size
    total = n + B - n % B  # official: always pads B - (n mod B), a whole block when B divides n
    groups = total // B
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    pad = ((0, 0), (0, total - n), (0, 0), (0, 0))
    qf, kf, vf = (jnp.pad(t.astype(dtype), pad).reshape(batch, B, groups, heads, d) for t in (q, k, v))
    # The official boolean mask padded with -1e9, i.e. True: the appended slots count as real tokens.
    m = jnp.pad(key_mask.astype(bool), ((0, 0), (0, total - n)), constant_values=True).reshape(batch, groups, B)
    allowed = m[:, :, :, None] & m[:, :, None, :]  # (b, group, row, col), read in the contiguous layout
    logits = jnp.einsum("bignd,bjgnd->bgnij", qf, kf) * d ** -0.5
    logits = jnp.where(allowed[:, :, None], logits, MASKED_LOGIT)
    weights = jax.nn.softmax(logits, axis=-1)
    if weights_fn is not None:
        weights = weights_fn(weights)
    out = jnp.einsum("bgnij,bjgnd->bignd", weights, vf).reshape(batch, total, heads, d)
    return out[:, :n].astype(q.dtype)


class LocalAttention(nnx.Module):
    """Block-local softmax attention; ``block_size`` B, ``legacy_strided_blocks`` (README quirk table)."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, block_size: int = 50,
                 legacy_strided_blocks: bool = False):
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"attention.block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        self.legacy_strided_blocks = bool(legacy_strided_blocks)
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        weights_fn = None
        if self.dropout.rate > 0 and not deterministic:
            weights_fn = lambda w: self.dropout(w, deterministic=False)  # noqa: E731
        fn = legacy_strided_local_attention if self.legacy_strided_blocks else local_attention
        return fn(q, k, v, key_mask, block_size=self.block_size, weights_fn=weights_fn)
