"""Reformer LSH attention (Kitaev, Kaiser, Levskaya, "Reformer: The Efficient Transformer", ICLR 2020).

Shared query-key attention restricted by locality-sensitive hashing (Sec. 2 and 3):

    keys        k_j = q_j / ||q_j||  (shared QK: the encoder's K projection is not used)     (Sec. 2)
    hash        h(x) = argmax([x R ; -x R]),  R in R^{d x b/2} Gaussian, one per round r     (Eq. 2)
    sort        positions ordered by (h_r(q_i), i) within each round; chunks of c slots
    attend      query i attends the real keys of its chunk and of the previous chunk, itself
                excluded unless it is the only key there; logits q_i . k_j            (Eq. 3, Fig. 2)
    rounds      o_i = sum_r exp(z_r(i) - logsumexp_r' z_r'(i)) o_r(i),
                z_r(i) = log sum_{j in window_r(i)} exp(q_i . k_j)                         (Eq. 4-6)

The logit q_i . q_j / ||q_j|| is the trax / HuggingFace form (keys normalised to unit length,
queries unscaled). A key seen in several rounds counts once per round (no duplicate correction, as
in both codes). Cost per round: O(n log n) for the sort, O(n c d) for the chunked products, O(n c)
memory: linear in n at fixed chunk length c.

Padding. Padded positions are hashed into an extra bucket past the last one, so in every round they
sort after all real tokens; each round is chunked from its own start and the first chunk has no
previous chunk (no wrap-around). Real tokens therefore see exactly the same chunks however much
padding follows, and holes in the mask are handled the same way. (trax, the LRA code and the
HuggingFace layer of the PyTorch lineage hash padded positions with the rest and let the look-back
wrap around from the first chunk to the last, so their real outputs move with the padding.)

Randomness. Rotations are drawn per head and round from the attention RNG stream: a fresh draw at
every training call (``redraw: every_call``; the authors' trax and the HuggingFace layer), a draw
fixed at construction at evaluation, so evaluation is deterministic given the seed. ``redraw: never``
uses the construction draw in training too (the LRA code's fixed rotations). No attention-weight
dropout (neither the LRA code nor the HuggingFace layer as configured by the PyTorch harness has any).

Defaults per protocol (task overrides in ``configs/hparams/<protocol>/<task>.yaml``):
  - official LRA (``lra_benchmarks/models/reformer/reformer_attention.py``): 1 round, 10 buckets;
    its chunk length is the padded length / 10 (its ``chunk_len=10`` only pads the input to a
    multiple of 10), which ``chunk_len: null`` reproduces as ceil(max_length / n_buckets).
  - PyTorch lineage (Skyformer ``src/models/attention_reformer.py`` = HuggingFace ``LSHSelfAttention``
    with its defaults; ``src/config.py`` ``num_hash: 2``): 2 rounds, chunk length 64, one chunk
    before, none after, buckets = 2^(bit_length(2 n / 64) - 1) for the padded length n (32 at 1K,
    64 at 2K, 128 at 4K).

The LRA code departs from the method (README quirk table); ``legacy_lra: true`` reproduces it
exactly (``lra_lsh_attention``), the correct form is the default:
  - logits q_i . q_j * sqrt(d): it multiplies by d^0.5 where 1/sqrt(d) was meant, and never normalises
    the keys (its ``length_norm`` is off);
  - every query attends to itself, and no padding mask is applied: padded positions are hashed,
    sorted and attended like real tokens;
  - the input is first padded with 10 - (n mod 10) zero positions (its ``chunk_len=10``; 10 more when
    n is a multiple of 10), and the rounds' sorted sequences, concatenated, are cut into
    n_hashes x n_buckets chunks of (padded n) / n_buckets slots: the chunk grows with n (quadratic memory);
  - the look-back wraps around: the first chunk of all rounds looks back to the last chunk of the last;
  - one rotation draw for all heads, and the same in training and evaluation (its fixed
    ``PRNGKey(0)`` also repeats the draw across layers; here each layer keeps its own draw).
``self_mask: false`` alone keeps the padding-invariant form but lets a query attend to itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice
from attention.softmax import MASKED_LOGIT

SELF_LOGIT = -1e5  # a query's logit to itself: only wins when every other key in its window is padding
REDRAWS = ("every_call", "never")


def draw_rotations(key, heads: int, head_dim: int, n_hashes: int, n_buckets: int) -> jax.Array:
    """Gaussian rotations R (heads, head_dim, n_hashes, n_buckets // 2) of Eq. 2, in fp32."""
    return jax.random.normal(key, (heads, head_dim, n_hashes, n_buckets // 2), jnp.float32)


def hash_buckets(q, key_mask, rotations):
    """Bucket of every position in every round: (batch, heads, rounds, n) int32.

    argmax over [x R ; -x R] in [0, n_buckets); padded positions get the extra bucket n_buckets.
    """
    rotated = jnp.einsum("bnhd,hdri->bhrni", q, rotations.astype(q.dtype))
    buckets = jnp.argmax(jnp.concatenate([rotated, -rotated], axis=-1), axis=-1).astype(jnp.int32)
    n_buckets = 2 * rotations.shape[-1]
    return jnp.where(key_mask[:, None, None, :], buckets, n_buckets)


def _chunks_with_previous(x, chunk_len: int, fill):
    """(..., C*c, f) -> (..., C, 2c, f): each chunk followed by the previous one (``fill`` before the first)."""
    chunks = x.reshape(*x.shape[:-2], -1, chunk_len, x.shape[-1])
    first = jnp.full_like(chunks[..., :1, :, :], fill)
    previous = jnp.concatenate([first, chunks[..., :-1, :, :]], axis=-3)
    return chunks, jnp.concatenate([chunks, previous], axis=-2)


@functools.partial(jax.jit, static_argnames=("chunk_len", "self_mask"))  # one compile, not op-by-op dispatch
def lsh_attention(q, v, key_mask, rotations, *, chunk_len: int, self_mask: bool = True):
    """Eqs. 2-6 of the module docstring; q, v (batch, n, heads, d), rotations of ``draw_rotations``.

    Computed in at least fp32 (bf16 upcast, fp64 kept); returns v's shape in q's dtype.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    batch, n, heads, d = q.shape
    rounds = rotations.shape[2]
    qf, vf = q.astype(dtype), v.astype(dtype)
    buckets = hash_buckets(qf, key_mask, rotations)
    positions = jnp.arange(n, dtype=jnp.int32)
    order = jnp.argsort(buckets * n + positions, axis=-1)  # unique keys: (bucket, position) order
    undo = jnp.argsort(order, axis=-1)

    def gather(x):  # (b, n, h, f) -> (b, h, r, n, f) in sorted order
        x = jnp.broadcast_to(jnp.moveaxis(x, 2, 1)[:, :, None], (batch, heads, rounds, n, x.shape[-1]))
        return jnp.take_along_axis(x, order[..., None], axis=-2)

    n_chunks = -(-n // chunk_len)
    pad = [(0, 0)] * 3 + [(0, n_chunks * chunk_len - n), (0, 0)]
    info = jnp.stack([jnp.broadcast_to(positions, (batch, n)), key_mask.astype(jnp.int32)], axis=-1)
    sq = jnp.pad(gather(qf), pad)
    sv = jnp.pad(gather(vf), pad)
    sinfo = jnp.pad(gather(info[:, :, None, :].repeat(heads, axis=2)), pad, constant_values=-1)
    sk = sq / jnp.sqrt(jnp.maximum(jnp.sum(sq * sq, axis=-1, keepdims=True), jnp.finfo(dtype).tiny))
    bq, bk = _chunks_with_previous(sq, chunk_len, 0)[0], _chunks_with_previous(sk, chunk_len, 0)[1]
    bv = _chunks_with_previous(sv, chunk_len, 0)[1]
    qinfo, kinfo = _chunks_with_previous(sinfo, chunk_len, -1)
    logits = jnp.einsum("...qd,...kd->...qk", bq, bk)
    if self_mask:
        same = qinfo[..., :, None, 0] == kinfo[..., None, :, 0]
        logits = jnp.where(same, SELF_LOGIT, logits)
    logits = jnp.where(kinfo[..., None, :, 1] == 1, logits, MASKED_LOGIT)
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    out = jnp.einsum("...qk,...kd->...qd", jnp.exp(logits - lse), bv)
    out = out.reshape(batch, heads, rounds, n_chunks * chunk_len, -1)[..., :n, :]
    lse = lse.reshape(batch, heads, rounds, n_chunks * chunk_len, 1)[..., :n, :]
    out = jnp.take_along_axis(out, undo[..., None], axis=-2)  # back to position order
    lse = jnp.take_along_axis(lse, undo[..., None], axis=-2)
    combined = jnp.sum(out * jax.nn.softmax(lse, axis=2), axis=2)  # (b, h, n, d): Eq. 4-6
    return jnp.moveaxis(combined, 1, 2).astype(q.dtype)


LRA_PAD_MULTIPLE = 10  # the official ReformerAttention's chunk_len default (no LRA config changes it)


@functools.partial(jax.jit, static_argnames=("n_buckets",))
def lra_lsh_attention(q, v, rotations, *, n_buckets: int):
    """The official LRA ``lsh_attention_single_head`` (``legacy_lra``), vmapped over batch and heads.

    q, v (batch, n, heads, d); rotations (d, n_hashes, n_buckets // 2), shared by every head. No mask.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    batch, n, heads, d = q.shape
    extra = LRA_PAD_MULTIPLE - n % LRA_PAD_MULTIPLE
    length = n + extra
    if length % n_buckets:
        raise ValueError(f"attention.legacy_lra: the padded length {length} must be a multiple of "
                         f"attention.n_buckets={n_buckets} (the official code reshapes it into n_buckets chunks)")
    rounds = rotations.shape[1]
    pad = [(0, 0), (0, extra), (0, 0), (0, 0)]
    qf, vf = jnp.pad(q.astype(dtype), pad), jnp.pad(v.astype(dtype), pad)
    rotations = rotations.astype(dtype)

    def single_head(x, values):  # (length, d) each
        rotated = jnp.einsum("tf,fhi->hti", x, rotations)
        buckets = jnp.argmax(jnp.concatenate([rotated, -rotated], axis=-1), axis=-1)
        buckets = (buckets + n_buckets * jnp.arange(rounds)[:, None]).reshape(-1)
        ticker = jnp.arange(rounds * length)
        sticker = jnp.argsort(length * buckets + ticker % length)
        undo = jnp.argsort(sticker)
        st = sticker % length
        chunks = x[st].reshape(rounds * n_buckets, -1, d)
        keys = jnp.concatenate([chunks, jnp.roll(chunks, 1, axis=0)], axis=1)  # look one back, wrapping
        value_chunks = values[st].reshape(rounds * n_buckets, -1, values.shape[-1])
        vals = jnp.concatenate([value_chunks, jnp.roll(value_chunks, 1, axis=0)], axis=1)
        dots = jnp.einsum("cie,cje->cij", chunks, keys) * d ** 0.5
        lse = jax.nn.logsumexp(dots, axis=-1, keepdims=True)
        out = jnp.einsum("cij,cje->cie", jnp.exp(dots - lse), vals).reshape(-1, values.shape[-1])[undo]
        weights = jax.nn.softmax(lse.reshape(-1)[undo].reshape(rounds, length, 1), axis=0)
        return jnp.sum(out.reshape(rounds, length, -1) * weights, axis=0)

    per_head = jax.vmap(single_head, in_axes=(1, 1), out_axes=1)
    return jax.vmap(per_head)(qf, vf)[:, :n].astype(q.dtype)


def shared_qk_attention(q, v, key_mask, *, self_mask: bool = True):
    """What LSH attention approximates: every real key in one window (O(n^2)); (batch, n, heads, d).

    softmax_j(q_i . q_j / ||q_j||) over real j, j != i unless i is the only real key.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    qf = q.astype(dtype)
    keys = qf / jnp.sqrt(jnp.maximum(jnp.sum(qf * qf, axis=-1, keepdims=True), jnp.finfo(dtype).tiny))
    logits = jnp.einsum("bqhd,bkhd->bhqk", qf, keys)
    if self_mask:
        logits = jnp.where(jnp.eye(q.shape[1], dtype=bool), SELF_LOGIT, logits)
    logits = jnp.where(key_mask[:, None, None, :], logits, MASKED_LOGIT)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v.astype(dtype)).astype(q.dtype)


class RotationDraw(nnx.Variable):
    """The rotations drawn at construction: used at evaluation (and in training with redraw: never)."""


class ReformerAttention(nnx.Module):
    """LSH attention with shared QK; knobs and defaults in the module docstring."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, n_hashes: int = 1, n_buckets: int = 10,
                 chunk_len: int | None = None, self_mask: bool = True, redraw: str = "every_call",
                 legacy_lra: bool = False):
        if n_buckets < 2 or n_buckets % 2:
            raise ValueError(f"attention.n_buckets must be an even number >= 2, got {n_buckets}")
        if n_hashes < 1:
            raise ValueError(f"attention.n_hashes must be >= 1, got {n_hashes}")
        if chunk_len is None:
            chunk_len = -(-spec.max_length // n_buckets)  # the LRA code's chunk: its padded length / n_buckets
        if chunk_len < 1:
            raise ValueError(f"attention.chunk_len must be >= 1 (or null), got {chunk_len}")
        require_choice("attention.redraw", redraw, REDRAWS)
        self.shape = (spec.num_heads, spec.head_dim, n_hashes, n_buckets)
        self.chunk_len, self.self_mask, self.redraw = chunk_len, bool(self_mask), redraw
        self.legacy_lra = bool(legacy_lra)
        self.n_buckets = n_buckets
        self.rng = rngs.attention.fork()
        self.fixed_rotations = RotationDraw(draw_rotations(self.rng(), *self.shape))

    def rotations(self, deterministic: bool) -> jax.Array:
        if deterministic or self.redraw == "never":
            return self.fixed_rotations[...]
        return draw_rotations(self.rng(), *self.shape)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        del k  # shared QK (Sec. 2): keys are the normalised queries
        if self.legacy_lra:  # one fixed draw, head 0's, for every head, in training too
            return lra_lsh_attention(q, v, self.fixed_rotations[...][0], n_buckets=self.n_buckets)
        return lsh_attention(q, v, key_mask, self.rotations(deterministic), chunk_len=self.chunk_len,
                             self_mask=self.self_mask)
