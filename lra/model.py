"""The common encoder every attention plugs into (Tay et al., LRA, ICLR 2021, Sec. 3 and App. A).

    x = Embed(tokens) [; CLS prepended] + PositionalEmbedding
    for each of num_layers pre-LN blocks:
        x = x + Dropout(OutProj(Attention(LN(x) W_q, LN(x) W_k, LN(x) W_v, key_mask)))
        x = x + Dropout(W_2 Dropout(GELU(W_1 LN(x))))
    x = LN(x);  pooled = Pool(x);  logits = W_c2 ReLU(W_c1 pooled)

The Q/K/V/O projections live here; the attention in the middle is any module that follows the
contract in ``attention/base.py``. An optional positional-bias add-on (e.g. FastRPB) adds its own
per-head term to the attention output before the output projection, whatever the attention. Every choice that differs between the official LRA code and the
PyTorch (Nystromformer/Skyformer) lineage is a keyword argument set by the protocol config:
bias on the projections, embedding init, sinusoidal or learned positions, CLS or mean pooling.

``remat="attention"`` rematerialises the attention call of every layer (``nnx.remat``, i.e.
``jax.checkpoint``, around the pluggable module only): its intermediates (for softmax the
(heads, n, n) logits and weights) are not kept for the backward pass but recomputed there from q, k,
v, as the PyTorch harnesses' checkpointed attention does. The outputs and gradients are those of
``remat="none"`` (random draws included); it trades the attention's activation memory for one more
attention forward per step. ``remat="block"`` does the same for each whole encoder block (about one
more forward pass). Neither changes a number, so ``model.remat`` is an operational key of the run
identity.

Pooling ``mean`` averages real tokens only. Older harnesses divide the sum by the full padded length
(quirk M3 in the reference, ``mean_pool_includes_padding``); that is available as a named option.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.base import AttentionFactory, AttentionSpec, PositionalBiasFactory, check_output

xavier_uniform = nnx.initializers.xavier_uniform()
REMAT_CHOICES = ("none", "attention", "block")  # model.remat: what the backward pass recomputes instead of storing


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
    """Fixed positions: pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i), w_i = 10000^(-2i/dim)."""
    position = np.arange(length)[:, None]
    frequency = np.exp(-math.log(10000.0) * np.arange(0, dim, 2) / dim)
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency[: dim // 2])
    return table


class MultiHeadSelfAttention(nnx.Module):
    """Q/K/V projections -> per-head attention (the pluggable part) -> output projection."""

    def __init__(self, emb_dim: int, qkv_dim: int, spec: AttentionSpec, attention: AttentionFactory,
                 *, use_bias: bool, positional_bias: PositionalBiasFactory | None = None, remat: bool = False,
                 rngs: nnx.Rngs):
        def projection(d_in, d_out):
            return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=spec.dtype,
                              kernel_init=xavier_uniform, rngs=rngs)

        self.num_heads, self.head_dim = spec.num_heads, spec.head_dim
        self.query, self.key, self.value = (projection(emb_dim, qkv_dim) for _ in range(3))
        self.attention = attention(spec, rngs=rngs)
        self.positional_bias = positional_bias(spec, rngs=rngs) if positional_bias is not None else None
        self.out = projection(qkv_dim, emb_dim)
        self.remat = bool(remat)

    def __call__(self, x, key_mask, *, deterministic: bool):
        batch, length, _ = x.shape
        heads = lambda t: t.reshape(batch, length, self.num_heads, self.head_dim)
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if self.remat:  # model.remat=attention: the backward pass recomputes the attention's intermediates
            call = lambda attention, q, k, v, mask: attention(q, k, v, mask, deterministic=deterministic)
            y = nnx.remat(call)(self.attention, q, k, v, key_mask)
        else:
            y = self.attention(q, k, v, key_mask, deterministic=deterministic)
        check_output(y, q, type(self.attention).__name__, dtype=False)  # at trace time: costs nothing per step
        if self.positional_bias is not None:  # e.g. FastRPB: + W_h V_h per head, before W_o
            y = y + self.positional_bias(v, key_mask).astype(y.dtype)
        return self.out(y.reshape(batch, length, self.num_heads * self.head_dim))


class EncoderBlock(nnx.Module):
    """One pre-LN Transformer block."""

    def __init__(self, emb_dim, qkv_dim, mlp_dim, dropout_rate, spec, attention, *, qkv_bias,
                 positional_bias=None, remat=False, rngs):
        self.attention_norm = nnx.LayerNorm(emb_dim, dtype=spec.dtype, rngs=rngs)
        self.self_attention = MultiHeadSelfAttention(emb_dim, qkv_dim, spec, attention, use_bias=qkv_bias,
                                                     positional_bias=positional_bias, remat=remat, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(emb_dim, dtype=spec.dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(emb_dim, mlp_dim, dtype=spec.dtype, kernel_init=xavier_uniform, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_dim, emb_dim, dtype=spec.dtype, kernel_init=xavier_uniform, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(self, x, key_mask, *, deterministic: bool):
        drop = lambda t: self.dropout(t, deterministic=deterministic)
        x = x + drop(self.self_attention(self.attention_norm(x), key_mask, deterministic=deterministic))
        h = drop(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))
        return x + drop(self.mlp_out(h))


class Encoder(nnx.Module):
    """Token classifier: embeddings, pre-LN blocks, final LN, pooling, 2-layer head.

    ``pad_id`` is the token id that marks padding (0 in every LRA task); ``None`` means every
    position is real (pixel tasks, where 0 is a black pixel, not padding).
    ``prepend_cls=False`` with ``pooling="cls"`` pools position 0 without prepending a CLS token
    (the official retrieval encoder, quirk M1); ``cls_mask_copies_first_token`` gives the CLS token
    the first token's mask, as the official encoder does (it matters only where token 0 can be
    masked: pixel tasks under quirk D1). ``num_classes=None`` builds a tower without a head.
    ``remat``: ``none`` | ``attention`` | ``block`` (module docstring): what the backward pass
    recomputes instead of storing; outputs and gradients are the same (``model.remat``, docs/scaling.md).
    """

    def __init__(self, *, vocab_size: int, num_classes: int | None, max_length: int,
                 attention: AttentionFactory, emb_dim: int, num_heads: int, qkv_dim: int,
                 mlp_dim: int, num_layers: int, dropout_rate: float = 0.1,
                 attention_dropout_rate: float = 0.1, pos_emb: str = "sinusoidal",
                 pooling: str = "cls", qkv_bias: bool = False, embedding_init_std: float = 1.0,
                 dtype: str = "float32", pad_id: int | None = 0,
                 mean_pool_includes_padding: bool = False, grid_shape: tuple[int, int] | None = None,
                 positional_bias: PositionalBiasFactory | None = None, prepend_cls: bool = True,
                 cls_mask_copies_first_token: bool = False, remat: str = "none", rngs: nnx.Rngs):
        if pos_emb not in ("sinusoidal", "learned"):
            raise ValueError(f"model.pos_emb must be 'sinusoidal' or 'learned', got {pos_emb!r}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.pooling must be 'cls' or 'mean', got {pooling!r}")
        if remat not in REMAT_CHOICES:
            raise ValueError(f"model.remat must be one of {REMAT_CHOICES}, got {remat!r}")
        if qkv_dim % num_heads:
            raise ValueError(f"model.qkv_dim={qkv_dim} is not divisible by model.num_heads={num_heads}")
        compute_dtype = jnp.dtype(dtype)
        self.pooling, self.pad_id = pooling, pad_id
        self.mean_pool_includes_padding = mean_pool_includes_padding
        self.use_cls = pooling == "cls" and prepend_cls  # else "cls" pooling reads token 0 (quirk M1)
        self.cls_mask_copies_first_token = cls_mask_copies_first_token
        self.remat_blocks = remat == "block"
        total_length = max_length + int(self.use_cls)

        self.token_embed = nnx.Embed(vocab_size, emb_dim, dtype=compute_dtype, rngs=rngs,
                                     embedding_init=nnx.initializers.normal(embedding_init_std))
        if self.use_cls:  # zero-initialised learned CLS vector, as in the official LRA encoder
            self.cls = nnx.Param(jnp.zeros((1, 1, emb_dim)))
        if pos_emb == "learned":
            self.positions = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (total_length, emb_dim)))
        else:
            self.positions = nnx.Variable(jnp.asarray(sinusoidal_table(total_length, emb_dim)))
        self.embed_dropout = nnx.Dropout(dropout_rate, rngs=rngs)

        spec = AttentionSpec(num_heads=num_heads, head_dim=qkv_dim // num_heads, max_length=total_length,
                             dropout_rate=attention_dropout_rate, dtype=compute_dtype,
                             has_cls=self.use_cls, grid_shape=tuple(grid_shape) if grid_shape else None)
        self.blocks = nnx.List([
            EncoderBlock(emb_dim, qkv_dim, mlp_dim, dropout_rate, spec, attention, qkv_bias=qkv_bias,
                         positional_bias=positional_bias, remat=remat == "attention", rngs=rngs)
            for _ in range(num_layers)
        ])
        self.final_norm = nnx.LayerNorm(emb_dim, dtype=compute_dtype, rngs=rngs)
        if num_classes is not None:  # None: a tower without a head (DualEncoder)
            self.head_hidden = nnx.Linear(emb_dim, mlp_dim, dtype=compute_dtype, kernel_init=xavier_uniform,
                                          rngs=rngs)
            self.head_out = nnx.Linear(mlp_dim, num_classes, dtype=compute_dtype, kernel_init=xavier_uniform,
                                       rngs=rngs)

    def token_mask(self, tokens: jax.Array) -> jax.Array:
        if self.pad_id is None:
            return jnp.ones(tokens.shape, bool)
        return tokens != self.pad_id

    def encode(self, tokens: jax.Array, *, deterministic: bool) -> tuple[jax.Array, jax.Array]:
        """Token ids (batch, n) -> final-LN hidden states and their mask (CLS included if any)."""
        mask = self.token_mask(tokens)
        x = self.token_embed(tokens)
        if self.use_cls:
            cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
            # The official encoder copies the first token's mask to CLS: with black pixels masked
            # (quirk D1) an image whose first pixel is 0 has its CLS masked too.
            cls_mask = mask[:, :1] if self.cls_mask_copies_first_token else jnp.ones((mask.shape[0], 1), bool)
            mask = jnp.concatenate([cls_mask, mask], axis=1)
        x = x + self.positions[...][: x.shape[1]].astype(x.dtype)
        x = self.embed_dropout(x, deterministic=deterministic)
        for block in self.blocks:
            if self.remat_blocks:  # model.remat=block: each block's activations are recomputed
                x = nnx.remat(lambda block, x, mask: block(x, mask, deterministic=deterministic))(block, x, mask)
            else:
                x = block(x, mask, deterministic=deterministic)
        return self.final_norm(x), mask

    def pool(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        if self.pooling == "cls":
            return x[:, 0]
        weights = mask[..., None].astype(x.dtype)
        total = (x * weights).sum(axis=1)
        if self.mean_pool_includes_padding:
            return total / x.shape[1]
        return total / jnp.maximum(weights.sum(axis=1), 1.0)

    def __call__(self, tokens: jax.Array, *, deterministic: bool) -> jax.Array:
        x, mask = self.encode(tokens, deterministic=deterministic)
        hidden = jax.nn.relu(self.head_hidden(self.pool(x, mask)))
        return self.head_out(hidden).astype(jnp.float32)


class DualEncoder(nnx.Module):
    """Two documents through one shared Encoder tower, no cross-attention (LRA Retrieval, App. A.1.3).

    Input rows hold document 1 in positions ``[0, L)`` and document 2 in ``[L, 2L)``; each half is
    encoded separately (positions restart at 0) by the same tower and pooled to ``u`` and ``v``:

        concat:  h = [u, v]                      (official code, ``classifier_head_dual``)
        nli:     h = [u, v, u * v, u - v]        (paper Eq. 1, PyTorch lineage, S4)
        logits = Dense(num_classes)(ReLU(Dense(mlp_dim // 2)(ReLU(Dense(mlp_dim)(h)))))  head_layers=2 (official)
        logits = Dense(num_classes)(ReLU(Dense(mlp_dim)(h)))                           head_layers=1 (Nystromformer)
    """

    def __init__(self, *, num_classes: int, max_length: int, interaction: str = "nli", head_layers: int = 2,
                 rngs: nnx.Rngs, **encoder_kwargs):
        if interaction not in ("concat", "nli"):
            raise ValueError(f"model.interaction must be 'concat' or 'nli', got {interaction!r}")
        if head_layers not in (1, 2):
            raise ValueError(f"model.head_layers must be 1 or 2, got {head_layers!r}")
        self.interaction, self.document_length = interaction, max_length
        self.tower = Encoder(num_classes=None, max_length=max_length, rngs=rngs, **encoder_kwargs)
        emb_dim, mlp_dim = encoder_kwargs["emb_dim"], encoder_kwargs["mlp_dim"]
        dtype = jnp.dtype(encoder_kwargs.get("dtype", "float32"))
        widths = [emb_dim * (2 if interaction == "concat" else 4), mlp_dim, mlp_dim // 2][: head_layers + 1]
        self.head_hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, kernel_init=xavier_uniform, rngs=rngs)
                                     for a, b in zip(widths[:-1], widths[1:])])
        self.head_out = nnx.Linear(widths[-1], num_classes, dtype=dtype, kernel_init=xavier_uniform, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, deterministic: bool) -> jax.Array:
        batch, length = tokens.shape
        if length != 2 * self.document_length:
            raise ValueError(f"DualEncoder expects rows of 2 x {self.document_length} tokens, got {length}")
        documents = tokens.reshape(batch * 2, self.document_length)  # rows: doc 1, doc 2 of each pair
        x, mask = self.tower.encode(documents, deterministic=deterministic)
        u, v = jnp.moveaxis(self.tower.pool(x, mask).reshape(batch, 2, -1), 1, 0)
        h = jnp.concatenate([u, v] if self.interaction == "concat" else [u, v, u * v, u - v], axis=-1)
        for layer in self.head_hidden:
            h = jax.nn.relu(layer(h))
        return self.head_out(h).astype(jnp.float32)


def count_parameters(model: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
