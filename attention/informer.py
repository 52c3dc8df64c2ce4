"""Informer's ProbSparse self-attention (Zhou, Zhang, Peng, Zhang, Li, Xiong, Zhang, "Informer: Beyond
Efficient Transformer for Long Sequence Time-Series Forecasting", AAAI 2021), as the Skyformer LRA
code runs it (``pkuzengqi/Skyformer src/models/attention_informer.py``, itself from
``zhouhaoyi/Informer2020 models/attn.py``).

Only the u "active" queries with the largest sparsity measurement attend; every other ("lazy") query
outputs the mean of V:

    s_ij   = q_i . k_j / sqrt(d)
    M(q_i) = max_{j in S_i} s_ij - (1/|S_i|) sum_{j in S_i} s_ij                 (Sec. 3.1, Eq. 4)
    S_i    = U keys drawn uniformly with replacement from the real keys, independently per query
    A      = top-u queries by M (real queries only)
    out_i  = softmax_j(s_ij) V   (over real keys)          for i in A
    out_i  = mean of V over real keys                      otherwise

Sizes as in the Skyformer code: with F = ``nb_features`` (128 for every LRA task in Skyformer's
``src/config.py``, ``in_nb_features``) and L = ``spec.max_length``,

    c = ceil(F / ln L)   (``factor``; the Informer paper's constant c when set directly)
    u = U = c ceil(ln L) (clipped to the input length)

e.g. ListOps (L 2000) c = 17, u = 136; Text and Retrieval (L 4096) c = 16, u = 144; Image and
Pathfinder (L 1024) c = 19, u = 133. The authors take ln of the input length, which equals their
max_seq_len because their data is always padded to it; sizing from ``spec.max_length`` gives the same
u there and makes u independent of the amount of padding. When u >= the input length every query is
active and the output is exact softmax attention.

Cost: the sampled scores are (n x U) and the active scores (u x n): O(n U d + u n d) time and
O(n U + u n) memory, linear in n at fixed u = U (n log n when u grows as c ln n). The gather of the
sampled keys holds an (n, U, heads, d) tensor, as in the authors' code.

Randomness: the key draws come from ``rngs.attention``: a fresh key per training call; at evaluation
a key fixed at construction, so evaluation is deterministic given the seed. Query i's draws use the
key folded with the example index and with i, so they do not depend on the batch size or the padded
length. Sample positions are drawn by rank among the example's real keys (as Skyformer's landmarks,
``attention.skyformer.real_positions``), so any mask works and a padded key is never sampled.
There is no attention dropout (the authors' module creates one and never applies it).

Differences from the authors' code, each a named flag (defaults are the corrected forms):

- ``legacy_ignore_mask`` -- the code never reads the mask (``mask_flag`` is False): keys are sampled
  from all n positions, padded queries can be active, the softmax runs over padded keys and the lazy
  output is the mean of V over all n positions, padding included. Not padding invariant.
- ``sparsity_mean: length`` -- the code divides the sum over the U sampled scores by L_K (the key
  length: the padded n, or the number of real keys when the mask is used) instead of by U, so the mean
  term of Eq. 4 is shrunk by U / L_K and M is close to the sampled max.
- ``shared_samples_across_batch`` -- the code draws one (n x U) index table for the whole batch
  (``torch.randint(L_K, (L_Q, sample_k))``), shared by the heads (here too) and by the examples.
- ``eval_samples: resample`` -- the code redraws at every forward, evaluation included.

Everything is computed in at least fp32 (bf16 upcast, fp64 kept); the output has the input dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice
from attention.skyformer import real_positions
from attention.softmax import MASKED_LOGIT

SPARSITY_MEANS = ("samples", "length")
EVAL_SAMPLES = ("fixed", "resample")


def informer_sizes(max_length: int, nb_features: int, factor: int | None = None) -> tuple[int, int]:
    """(c, u): c = factor or ceil(nb_features / ln max_length), u = U = c ceil(ln max_length)."""
    log_length = math.log(max(max_length, 2))
    c = int(factor) if factor is not None else math.ceil(nb_features / log_length)
    return c, c * math.ceil(log_length)


def sample_key_positions(key: jax.Array, key_mask: jax.Array, num_samples: int, *, shared_across_batch: bool = False,
                         ignore_mask: bool = False) -> jax.Array:
    """Positions (batch, n, U) of the keys sampled for each query, uniform with replacement.

    Query i of example b uses uniforms from ``fold_in(fold_in(key, b), i)`` (no ``b`` when shared across
    the batch); index = floor(u L_b) into the example's real positions (all n positions when
    ``ignore_mask``). An example with no real key gets position 0.
    """
    batch, n = key_mask.shape

    def draws(example_key):
        return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(example_key, i), (num_samples,)))(
            jnp.arange(n))

    if shared_across_batch:
        u = jnp.broadcast_to(draws(key), (batch, n, num_samples))
    else:
        u = jax.vmap(lambda b: draws(jax.random.fold_in(key, b)))(jnp.arange(batch))
    if ignore_mask:
        key_mask = jnp.ones_like(key_mask)
    order, count = real_positions(key_mask)
    rank = jnp.floor(u * count[:, None, None].astype(u.dtype)).astype(jnp.int32)
    rank = jnp.clip(rank, 0, jnp.maximum(count - 1, 0)[:, None, None])  # u L_b can round up to L_b
    return jax.vmap(lambda o, r: o[r])(order, rank)


def sparsity_measurement(q, k, key_mask, sample_positions, *, sparsity_mean: str = "samples",
                         ignore_mask: bool = False) -> jax.Array:
    """M (batch, heads, n) of Eq. 4 on the sampled keys (unscaled dot products, as the authors: the
    1/sqrt(d) factor does not change the ranking); -inf at padded queries unless ``ignore_mask``."""
    sampled_keys = jax.vmap(lambda kb, pb: kb[pb])(k, sample_positions)  # (b, n, U, h, d)
    scores = jnp.einsum("bnhd,bnshd->bhns", q, sampled_keys)
    if sparsity_mean == "samples":
        denominator = scores.shape[-1]
    else:  # the authors' L_K: the key length
        denominator = (jnp.full(key_mask.shape[:1], key_mask.shape[1]) if ignore_mask
                       else jnp.maximum(key_mask.sum(axis=-1), 1))[:, None, None].astype(scores.dtype)
    measure = scores.max(axis=-1) - scores.sum(axis=-1) / denominator
    if ignore_mask:
        return measure
    return jnp.where(key_mask[:, None, :], measure, -jnp.inf)


def informer_attention(q, k, v, key_mask, sample_positions, *, num_active: int, sparsity_mean: str = "samples",
                       ignore_mask: bool = False):
    """ProbSparse attention with the given samples (batch, n, U); ``num_active`` = u (clipped to n).

    Returns q's dtype; computed in at least fp32.
    """
    require_choice("attention.sparsity_mean", sparsity_mean, SPARSITY_MEANS)
    batch, n, heads, head_dim = q.shape
    out_dtype, dtype = q.dtype, jnp.promote_types(q.dtype, jnp.float32)
    q, k, v = (t.astype(dtype) for t in (q, k, v))
    keep = jnp.ones_like(key_mask) if ignore_mask else key_mask
    values = jnp.where(keep[:, :, None, None], v, 0.0)
    count = jnp.maximum(keep.sum(axis=-1), 1).astype(dtype)
    lazy = values.sum(axis=1) / count[:, None, None]  # (b, h, d_v): the mean of V over the (real) keys

    u = min(int(num_active), n)
    if u == n:  # every query is active: exact softmax, no sampling needed
        active = jnp.broadcast_to(jnp.arange(n), (batch, heads, n))
    else:
        # Only the ranking is used (integer indices): no gradient flows through M, so none is traced.
        measure = sparsity_measurement(jax.lax.stop_gradient(q), jax.lax.stop_gradient(k), key_mask,
                                       sample_positions, sparsity_mean=sparsity_mean, ignore_mask=ignore_mask)
        active = jax.lax.top_k(measure, u)[1]  # (b, h, u); ties: the lower position first
    q_heads = jnp.swapaxes(q, 1, 2)  # (b, h, n, d)
    q_active = jnp.take_along_axis(q_heads, active[..., None], axis=2)  # (b, h, u, d)
    logits = jnp.einsum("bhud,bkhd->bhuk", q_active, k) * head_dim ** -0.5
    logits = jnp.where(keep[:, None, None, :], logits, MASKED_LOGIT)
    context = jnp.einsum("bhuk,bkhe->bhue", jax.nn.softmax(logits, axis=-1), values)

    out = jnp.broadcast_to(lazy[:, :, None, :], (batch, heads, n, v.shape[-1]))
    out = out.at[jnp.arange(batch)[:, None, None], jnp.arange(heads)[None, :, None], active].set(context)
    return jnp.swapaxes(out, 1, 2).astype(out_dtype)


class InformerAttention(nnx.Module):
    """ProbSparse attention; see the module docstring for the sizes and the flags."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, nb_features: int = 128, factor: int | None = None,
                 sparsity_mean: str = "samples", eval_samples: str = "fixed",
                 shared_samples_across_batch: bool = False, legacy_ignore_mask: bool = False):
        require_choice("attention.sparsity_mean", sparsity_mean, SPARSITY_MEANS)
        require_choice("attention.eval_samples", eval_samples, EVAL_SAMPLES)
        if factor is None and nb_features < 1:
            raise ValueError(f"attention.nb_features must be >= 1, got {nb_features}")
        if factor is not None and factor < 1:
            raise ValueError(f"attention.factor must be >= 1 or null, got {factor}")
        self.nb_features, self.factor_setting = nb_features, factor
        self.factor, self.num_active = informer_sizes(spec.max_length, nb_features, factor)
        self.sparsity_mean, self.eval_samples = sparsity_mean, eval_samples
        self.shared_samples_across_batch = bool(shared_samples_across_batch)
        self.legacy_ignore_mask = bool(legacy_ignore_mask)
        self.rng = rngs.attention.fork()
        self.eval_key = nnx.Variable(self.rng())  # fixed at construction: deterministic evaluation

    def sample_key(self, deterministic: bool) -> jax.Array:
        if deterministic and self.eval_samples == "fixed":
            return self.eval_key[...]
        return self.rng()

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        key = self.sample_key(deterministic)
        if min(self.num_active, q.shape[1]) == q.shape[1]:
            positions = jnp.zeros((q.shape[0], q.shape[1], 1), jnp.int32)  # unused: every query is active
        else:
            positions = sample_key_positions(key, key_mask, self.num_active,
                                             shared_across_batch=self.shared_samples_across_batch,
                                             ignore_mask=self.legacy_ignore_mask)
        return informer_attention(q, k, v, key_mask, positions, num_active=self.num_active,
                                  sparsity_mean=self.sparsity_mean, ignore_mask=self.legacy_ignore_mask)
