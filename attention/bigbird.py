"""BigBird block-sparse attention, ITC form (Zaheer et al., "Big Bird: Transformers for Longer
Sequences", NeurIPS 2020, Sec. 2 and App. D), the "BigBird" row of the LRA paper (Tay et al., ICLR 2021;
official code ``lra_benchmarks/models/bigbird/bigbird_attention.py``) and of the Skyformer table.

Positions are cut into blocks of B = ``block_size`` over the layer's ``max_length`` (nb blocks, the
last one possibly partial). With a the query's block and a' the key's block:

    global:  blocks 0 and nb-1 attend every position and every position attends them
    window:  a' in {a-1, a, a+1}
    random:  a' in R[h, a], ``num_random_blocks`` r blocks per (head, query block), drawn once,
             uniformly without replacement among the blocks that are neither global nor in a's window

one softmax over the union, padded keys removed. O(n B (5 + r)) time and memory, blocked through
attention/block_sparse.py; no n x n tensor.

Randomness: R is drawn at construction from the ``rngs.attention`` stream (so each layer of a model
gets its own pattern, fixed for training and evaluation and reproducible from the run's seed) and
kept in the model state (``RandomBlocks``), as the paper fixes the random graph. The official code
seeds NumPy with the layer index (``connectivity_seed=lyr`` in ``models/bigbird/bigbird.py``),
which also fixes the pattern per layer; the draws differ, the distribution is the same, except:

Quirk ``legacy_random_first_1024`` (off by default): the official ``get_block_rand_mask`` is
called with ``last_idx=min(length, 1024)``, so on sequences longer than 1024 the random blocks are
drawn only among the blocks of the first 1024 positions (ListOps 2K, Retrieval 4K). With the flag,
random blocks are restricted to blocks 1 .. 1024/B - 1 as there.

The pattern lives on the ``max_length`` grid, not on the padded length of a batch, so outputs at real
tokens do not depend on how much padding follows. A shorter input uses the leading blocks of the grid.

Quirk ``legacy_appended_block`` (off by default): the official module pads
the input by B - (n mod B) zero positions (a whole block when B divides n) and pads its boolean
padding mask with -1e9, which is True: those slots are attended as real keys with zero keys and
values (the official projections have no bias), and the padded grid's last block, which holds them,
is global. With the flag, this module does the same on each call (outputs then depend on n).

Defaults per task (official LRA at cd31e5c): ``block_size`` 64 and ``num_random_blocks`` 3 on every
task (``BigBirdAttention`` defaults, ``_DEFAULT_BLOCK_SIZE = 64`` in ``models/bigbird/bigbird.py``;
the Image and Pathfinder configs set ``block_size = 64`` explicitly). The lra_official task presets
switch on both official flags above (configs/hparams/lra_official/*.yaml). The Skyformer harness
(``src/config.py``: 3 random blocks of 64 on every task; ``src/models/attention_bigbird.py``, adapted
from HuggingFace's block-sparse BigBird) draws with NumPy seeded by the run seed before every call,
so its pattern is fixed but the same in every layer, and on 1024/3072/4096-long inputs it keeps the
random blocks in the first 1024 positions: the pytorch_lineage Text and Retrieval presets (4096)
set ``legacy_random_first_1024``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.base import AttentionSpec
from attention.block_sparse import block_sparse_attention, num_blocks


class RandomBlocks(nnx.Variable):
    """BigBird's random key blocks, (heads, blocks, r) int32, -1 = none; fixed, not trained."""


def draw_random_blocks(key, heads: int, blocks: int, r: int, *, limit: int | None = None) -> jax.Array:
    """For each head and non-global query block, r distinct blocks among {1..blocks-2} outside the
    query's window {a-1, a, a+1} (and below ``limit`` when given); -1 where fewer exist."""
    a = jnp.arange(blocks)[:, None]
    candidate = jnp.arange(blocks)[None, :]
    ok = (candidate >= 1) & (candidate <= blocks - 2) & (jnp.abs(candidate - a) > 1)
    ok = ok & (a >= 1) & (a <= blocks - 2)  # global query blocks take no random blocks
    if limit is not None:
        ok = ok & (candidate < limit)
    scores = jnp.where(ok, jax.random.uniform(key, (heads, blocks, blocks)), -1.0)
    k = min(r, blocks)
    top, index = jax.lax.top_k(scores, k)
    chosen = jnp.where(top >= 0, index, -1).astype(jnp.int32)
    return jnp.pad(chosen, ((0, 0), (0, 0), (0, r - k)), constant_values=-1)


def bigbird_pattern(random_blocks, n: int, block_size: int, grid_blocks: int):
    """(key_blocks (h, nb, 3 + r), global positions) for an input of n <= grid_blocks * block_size."""
    nb = num_blocks(n, block_size)
    a = np.arange(nb)
    window = np.stack([a - 1, a, a + 1], -1)
    window = np.where((window == 0) | (window == grid_blocks - 1), -1, window)  # globals: extra columns
    window = jnp.broadcast_to(jnp.asarray(window), (random_blocks.shape[0], nb, 3))
    # Random slots some query block can fill (static): top_k puts the drawn blocks before the -1s.
    grid_rows = np.arange(1, min(nb, grid_blocks - 1))
    fillable = max([int((np.abs(np.arange(1, grid_blocks - 1) - a) > 1).sum()) for a in grid_rows] or [0])
    chosen = random_blocks[:, :nb, :min(fillable, random_blocks.shape[2])]
    chosen = jnp.where((chosen == 0) | (chosen >= min(nb, grid_blocks - 1)), -1, chosen)  # globals, absent blocks
    key_blocks = jnp.concatenate([window, chosen], -1)
    last = (grid_blocks - 1) * block_size
    global_positions = np.concatenate([np.arange(min(block_size, n)), np.arange(last, n)]) if grid_blocks > 1 \
        else np.arange(n)
    return key_blocks, np.unique(global_positions)


def bigbird_attention(q, k, v, key_mask, random_blocks, *, block_size: int, grid_blocks: int, weights_fn=None):
    """ITC BigBird of the module docstring; random_blocks (h, grid_blocks, r)."""
    key_blocks, global_positions = bigbird_pattern(random_blocks, q.shape[1], block_size, grid_blocks)
    return block_sparse_attention(q, k, v, key_mask, block_size=block_size, key_blocks=key_blocks,
                                  extra_keys=global_positions, global_queries=global_positions, weights_fn=weights_fn)


class BigBirdAttention(nnx.Module):
    """BigBird ITC: ``block_size`` B, ``num_random_blocks`` r, random pattern fixed per layer."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, block_size: int = 64, num_random_blocks: int = 3,
                 legacy_random_first_1024: bool = False, legacy_appended_block: bool = False):
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"attention.block_size must be a positive integer, got {block_size!r}")
        if not isinstance(num_random_blocks, int) or num_random_blocks < 0:
            raise ValueError(f"attention.num_random_blocks must be an integer >= 0, got {num_random_blocks!r}")
        self.block_size, self.max_length = block_size, spec.max_length
        self.legacy_appended_block = bool(legacy_appended_block)
        # The official grid: max_length + B - max_length mod B positions (a whole extra block when B divides it).
        self.grid_blocks = spec.max_length // block_size + 1 if legacy_appended_block \
            else num_blocks(spec.max_length, block_size)
        limit = None
        if legacy_random_first_1024 and spec.max_length > 1024:
            limit = 1024 // block_size
        self.legacy_random_first_1024 = bool(legacy_random_first_1024)
        self.random_blocks = RandomBlocks(draw_random_blocks(
            rngs.attention(), spec.num_heads, self.grid_blocks, num_random_blocks, limit=limit))
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        if q.shape[1] > self.max_length:
            raise ValueError(f"bigbird: input length {q.shape[1]} exceeds the layer's max_length {self.max_length} "
                             "(the random block pattern is drawn over max_length)")
        weights_fn = None
        if self.dropout.rate > 0 and not deterministic:
            weights_fn = lambda w: self.dropout(w, deterministic=False)  # noqa: E731
        if self.legacy_appended_block:
            n, B = q.shape[1], self.block_size
            total = n + B - n % B
            pad = ((0, 0), (0, total - n), (0, 0), (0, 0))
            q, k, v = (jnp.pad(t, pad) for t in (q, k, v))
            key_mask = jnp.pad(key_mask, ((0, 0), (0, total - n)), constant_values=True)
            return bigbird_attention(q, k, v, key_mask, self.random_blocks[...], block_size=B, grid_blocks=total // B,
                                     weights_fn=weights_fn)[:, :n]
        return bigbird_attention(q, k, v, key_mask, self.random_blocks[...], block_size=self.block_size,
                                 grid_blocks=self.grid_blocks, weights_fn=weights_fn)
