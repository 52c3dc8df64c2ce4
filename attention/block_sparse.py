"""Blocked softmax attention over a fixed sparsity pattern: the engine of the sparse-pattern families
(attention/local.py, sparse_transformer.py, longformer.py, bigbird.py). Not an attention by itself.

A pattern is given in three disjoint parts; query i attends the real keys j of the union, with one
softmax over all of them:

1. Key blocks: the positions are cut into blocks of ``block_size`` (the input is padded to a whole
   number of blocks with masked keys); query block ``a`` gathers the key blocks ``key_blocks[h, a, :]``
   (-1 = none), and ``block_allowed(query_pos, key_pos)`` restricts the gathered pairs position by
   position (e.g. an exact sliding window, causality). Cost O(n · K · block_size) for K key blocks.
2. Extra key columns: fixed positions ``extra_keys`` (global tokens, Sparse Transformer summary
   positions) that queries attend when ``extra_allowed(query_pos, key_pos)`` holds. Cost O(n · E).
3. Global query rows: positions ``global_queries`` that attend every real key. Cost O(G · n).

The caller keeps the parts disjoint (``block_allowed`` excludes what the extra columns cover), so no
pair is counted twice. Nothing of size n x n is formed; logits are in at least fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention.softmax import MASKED_LOGIT


def num_blocks(length: int, block_size: int) -> int:
    return -(-length // block_size)


def _pad_length(x: jax.Array, total: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, total - x.shape[1])
    return jnp.pad(x, pad)


def _static_offsets(key_blocks) -> list[int] | None:
    """[o_1..o_K] when a NumPy ``key_blocks`` is (1, nb, K) with column c equal to a + o_c, else None."""
    if not isinstance(key_blocks, np.ndarray) or key_blocks.shape[0] != 1:
        return None
    offsets = key_blocks[0] - np.arange(key_blocks.shape[1])[:, None]
    if not (offsets == offsets[:1]).all():
        return None
    return [int(o) for o in offsets[0]]


def block_sparse_attention(q, k, v, key_mask, *, block_size: int, key_blocks, block_allowed=None,
                           extra_keys=None, extra_allowed=None, global_queries=None, weights_fn=None):
    """softmax over the pattern described in the module docstring; q, k, v (b, n, h, d), key_mask (b, n).

    ``key_blocks``: int (H, nb, K) with H = 1 or h and nb = ceil(n / block_size); entries outside
    [0, nb) mark unused slots.
    ``block_allowed(qpos, kpos)``: qpos (1, nb, B, 1), kpos (H, nb, 1, K*B) -> broadcastable bool.
    ``extra_keys``: int (E,) positions < n; ``extra_allowed(qpos (n, 1), kpos (1, E))`` -> bool.
    ``global_queries``: int (G,) positions < n attending every real key.
    ``weights_fn``: applied to the attention weights before they multiply v (attention dropout).
    """
    batch, n, heads, d = q.shape
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    scale = d ** -0.5
    B = block_size
    nb = num_blocks(n, B)
    total = nb * B
    qf, kf, vf = (_pad_length(t.astype(dtype), total) for t in (q, k, v))
    mask = _pad_length(key_mask.astype(bool), total)
    weights_fn = weights_fn or (lambda w: w)

    # 1. gathered key blocks: (b, h, nb, K*B) keys per query block.
    if isinstance(key_blocks, np.ndarray):  # drop slots unused by every query block (short inputs)
        used = ((key_blocks >= 0) & (key_blocks < nb)).any(axis=(0, 1))
        key_blocks = key_blocks[:, :, used] if used.any() else key_blocks[:, :, :1]
    offsets = _static_offsets(key_blocks)
    key_blocks = jnp.asarray(key_blocks, jnp.int32)
    if key_blocks.shape[1] != nb:
        raise ValueError(f"key_blocks has {key_blocks.shape[1]} query blocks; length {n} / block {B} needs {nb}")
    K = key_blocks.shape[2]
    slot_valid = (key_blocks >= 0) & (key_blocks < nb)
    safe_blocks = jnp.where(slot_valid, key_blocks, 0)
    blocks = jnp.broadcast_to(safe_blocks, (heads, nb, K))

    def gather(x):  # (b, total, h, d) -> (b, h, nb, K*B, d)
        xb = x.reshape(batch, nb, B, heads, -1).transpose(0, 3, 1, 2, 4)  # (b, h, nb, B, d)
        if offsets is not None:  # key block a + o for every query block a: shifted slices, no gather
            reach = max(abs(o) for o in offsets)
            padded = jnp.pad(xb, ((0, 0), (0, 0), (reach, reach), (0, 0), (0, 0)))
            g = jnp.stack([padded[:, :, reach + o:reach + o + nb] for o in offsets], axis=3)
        else:
            g = xb[:, jnp.arange(heads)[:, None, None], blocks]  # (b, h, nb, K, B, d)
        return g.reshape(batch, heads, nb, K * B, -1)

    q_blocks = qf.reshape(batch, nb, B, heads, d).transpose(0, 3, 1, 2, 4)  # (b, h, nb, B, d)
    k_gathered, v_gathered = gather(kf), gather(vf)
    key_pos = (safe_blocks[..., None] * B + jnp.arange(B)).reshape(-1, nb, 1, K * B)  # (H, nb, 1, K*B)
    query_pos = jnp.arange(total).reshape(1, nb, B, 1)
    allowed = jnp.repeat(slot_valid, B, axis=-1)[:, :, None, :]  # (H, nb, 1, K*B)
    if block_allowed is not None:
        allowed = allowed & block_allowed(query_pos, key_pos)
    mask_blocks = mask.reshape(batch, nb, B)
    key_real = mask_blocks[:, blocks]  # (b, h, nb, K, B)
    allowed = allowed[None] & key_real.reshape(batch, heads, nb, 1, K * B)
    logits = jnp.einsum("bhaqd,bhakd->bhaqk", q_blocks, k_gathered) * scale
    logits = jnp.where(allowed, logits, MASKED_LOGIT)  # (b, h, nb, B, K*B)

    # 2. extra key columns: (b, h, nb, B, E).
    extra = None
    if extra_keys is not None and len(extra_keys):
        extra_keys = np.asarray(extra_keys)
        k_extra, v_extra = kf[:, extra_keys], vf[:, extra_keys]  # (b, E, h, d)
        extra_logits = jnp.einsum("bhaqd,bkhd->bhaqk", q_blocks, k_extra) * scale
        extra_ok = mask[:, extra_keys][:, None, None, None, :]
        if extra_allowed is not None:
            rule = extra_allowed(jnp.arange(total)[:, None], jnp.asarray(extra_keys)[None, :])
            extra_ok = extra_ok & jnp.broadcast_to(rule, (total, len(extra_keys))).reshape(1, 1, nb, B, -1)
        extra = (jnp.where(extra_ok, extra_logits, MASKED_LOGIT), v_extra)

    all_logits = logits if extra is None else jnp.concatenate([logits, extra[0]], axis=-1)
    weights = weights_fn(jax.nn.softmax(all_logits, axis=-1))
    out = jnp.einsum("bhaqk,bhakd->bhaqd", weights[..., :K * B], v_gathered)
    if extra is not None:
        out = out + jnp.einsum("bhaqk,bkhd->bhaqd", weights[..., K * B:], extra[1])
    out = out.transpose(0, 2, 3, 1, 4).reshape(batch, total, heads, -1)

    # 3. global query rows: dense over every real key.
    if global_queries is not None and len(global_queries):
        global_queries = np.asarray(global_queries)
        g_logits = jnp.einsum("bghd,bkhd->bhgk", qf[:, global_queries], kf) * scale
        g_logits = jnp.where(mask[:, None, None, :], g_logits, MASKED_LOGIT)
        g_weights = weights_fn(jax.nn.softmax(g_logits, axis=-1))
        out = out.at[:, global_queries].set(jnp.einsum("bhgk,bkhd->bghd", g_weights, vf))
    return out[:, :n].astype(q.dtype)

