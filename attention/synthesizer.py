"""Random Synthesizer attention (Tay, Bahri, Metzler, Juan, Zhao, Zheng, "Synthesizer: Rethinking
Self-Attention for Transformer Models", ICML 2021), in the form the Long Range Arena ran it.

A learned, input-independent n x n logit matrix per head replaces (or is added to) the dot product:

    R   in R^{heads x N x N}, a trainable parameter, N = the layer's maximum length      (Sec. 3.2, Eq. 3)
    R   = R1 R2 with R1 in R^{N x k}, R2 in R^{k x N} ("factorized random")               (Sec. 3.3)
    A   = softmax( [Q K^T / sqrt(d)] + R[:n, :n] + mask )                          (Sec. 3.4, mixtures)
    out = A V

with the bracketed dot product present when ``dot_product`` is true (the paper's "R + V" mixture)
and padded keys removed from every row. R is indexed by absolute position, so padding appended to
the right leaves real outputs unchanged; an input longer than N cannot be served and is refused
(the error names ``task.max_length``). Cost O(n^2) time and memory, plus N^2 parameters per head
and layer, as in the official code: at the official sizes 16 M (Text: 4 heads x 1001^2 x 4 layers),
128 M (ListOps, 8 heads x 2001^2 x 4) and 256 M (Retrieval, 4 heads x 4001^2 x 4) in R alone.

Which variant LRA ran (``lra_benchmarks/models/synthesizer/`` at the official repository's HEAD):
the encoder defaults are ``synthesizer_mode='random'`` and ``ignore_dot_product=False``, and every
task's config either keeps them (ListOps, Retrieval) or sets ``model.synthesizer_mode='random'``
(CIFAR-10, Pathfinder-32). The Text config sets ``synthesizer_mode='factorized_random'``, ``k=32`` and
``ignore_dot_product=True`` at the top level of the config, but the Text trainer only forwards
``config.model`` to the model, so those three keys never reach it: the published Text number is
also the random + dot-product mixture. Hence the default here, for every task: ``mode: random``,
``dot_product: true`` (dense random R, trainable, plus Q K^T / sqrt(d)). The variant the Text
config meant is ``attention.mode=factorized_random attention.k=32 attention.dot_product=false``.
(The encoder block's ``k`` argument is not passed down either; the attention's own default is 32.)

Initialisation as the official code: R (and R1, R2) drawn with Glorot-uniform on the
(heads, rows, cols) parameter, i.e. bound sqrt(6 / (heads (rows + cols))).

The "dense" Synthesizer (logits from a two-layer MLP of each token's input) is not provided: it
needs the layer input, not the per-head projections of the attention contract, and LRA never ran it.
Attention dropout (``spec.dropout_rate``) is applied to A in training, as in the official code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice
from attention.softmax import MASKED_LOGIT, apply_weights

MODES = ("random", "factorized_random")


def check_length(n: int, max_length: int, who: str) -> None:
    """Refuse an input longer than the position-indexed parameters cover."""
    if n > max_length:
        raise ValueError(f"{who}: input length {n} exceeds the length its parameters were built for "
                         f"({max_length}, from task.max_length plus any CLS token); raise task.max_length")


def synthesizer_attention_weights(q, k, synthetic, key_mask, *, dot_product: bool = True):
    """softmax(q k^T / sqrt(d) [if dot_product] + synthetic) over real keys: (batch, heads, n, n).

    ``synthetic``: (heads, n, n) logits shared by the batch. Computed in at least fp32.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    logits = jnp.broadcast_to(synthetic.astype(dtype)[None], (q.shape[0], *synthetic.shape))
    if dot_product:
        scale = q.shape[-1] ** -0.5
        logits = logits + jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=dtype) * scale
    logits = jnp.where(key_mask[:, None, None, :], logits, MASKED_LOGIT)
    return jax.nn.softmax(logits, axis=-1)


class SynthesizerAttention(nnx.Module):
    """Random / factorised-random Synthesizer, optionally mixed with the dot product (module docstring)."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, mode: str = "random", k: int = 32,
                 dot_product: bool = True):
        require_choice("attention.mode", mode, MODES)
        self.mode = mode
        self.dot_product = bool(dot_product)
        self.max_length = spec.max_length
        init = jax.nn.initializers.xavier_uniform()
        heads, length = spec.num_heads, spec.max_length
        if mode == "random":
            self.random = nnx.Param(init(rngs.params(), (heads, length, length), jnp.float32))
        else:
            if k < 1:
                raise ValueError(f"attention.k must be a positive rank, got {k}")
            self.random1 = nnx.Param(init(rngs.params(), (heads, length, k), jnp.float32))
            self.random2 = nnx.Param(init(rngs.params(), (heads, k, length), jnp.float32))
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def synthetic_logits(self, n: int, dtype=jnp.float32) -> jax.Array:
        """R[:, :n, :n] (heads, n, n) for an input of length n, in ``dtype``."""
        check_length(n, self.max_length, "attention synthesizer")
        if self.mode == "random":
            return self.random[...][:, :n, :n].astype(dtype)
        r1, r2 = self.random1[...][:, :n].astype(dtype), self.random2[...][:, :, :n].astype(dtype)
        return jnp.einsum("hlk,hkm->hlm", r1, r2)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        synthetic = self.synthetic_logits(q.shape[1], jnp.promote_types(q.dtype, jnp.float32))
        weights = synthesizer_attention_weights(q, k, synthetic, key_mask,
                                                dot_product=self.dot_product)
        if self.dropout.rate > 0 and not deterministic:
            weights = self.dropout(weights, deterministic=False)
        return apply_weights(weights, v).astype(q.dtype)
