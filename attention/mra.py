"""MRA-2 and MRA-2-s: multi-resolution attention (Zeng, Pal, Kline, Fung, Singh, "Multi Resolution
Analysis (MRA) for Approximate Self-Attention", ICML 2022), as released in the authors' LRA code:
two resolutions, 32-token blocks (low) and single tokens inside selected blocks (high).

Per (example, head), with the sequence cut into nb blocks B_r of ``block_size`` tokens, m_i the key
mask, c_r = sum_{i in B_r} m_i the real-token count of block r and the usual 1/sqrt(d) temperature:

    q^_r = sum_{i in B_r} m_i q_i / c_r,   k^_c, v^_c likewise          (masked block means)
    L_rc = q^_r . k^_c / sqrt(d)            for non-empty pairs (c_r c_c > 0)   (low-res logits)
    L'_rc = L_rc - max_c' L_rc'                                          (row-normalised scores)
    S = top-k over all nb^2 pairs of  L'_rc + prior_rc,   k = min(bpr * nb, nb^2)   (selection)

``prior_rc`` forces the first ``initial_prior_first_n_blocks`` block rows and columns and the band
|r - c| <= ``initial_prior_diagonal_n_blocks`` // 2 to the front of the ranking; forced blocks count
against the budget k, as in the authors' kernels. The top-k is GLOBAL over the nb^2 pairs of an
(example, head), so a block row may receive more or fewer than ``block_per_row`` blocks. For query
i in block r, with s_ij = q_i . k_j / sqrt(d):

    hi_i  = sum_{c: (r,c) in S} sum_{j in B_c, m_j=1} exp(s_ij) [v_j, 1]           (exact blocks)
    lo_i  = sum_{c: (r,c) not in S, c_c>0} c_c exp(L_rc) [v^_c, 1]                  (block remainder)
    MRA-2   (approx_mode=full):    out_i = (hi_i + lo_i)[:d] / (hi_i + lo_i)[d]
    MRA-2-s (approx_mode=sparse):  out_i = hi_i[:d] / hi_i[d]     (selected blocks only, renormalised)

so every real key is counted exactly once in MRA-2 (exactly in a selected block, through its block
mean otherwise) and, with k = nb^2, both variants are exact softmax attention. The two parts share
one stabiliser per query: m = max(max of the selected logits s_ij, max of the unselected L_rc), each
part is scaled by exp(its own max - m), and nothing is divided when a row has no real key (output 0).
In MRA-2 the low-resolution part carries gradients through q^, k^ and v^; in MRA-2-s the low
resolution only ranks blocks (no gradient), as in the authors' code. All maxima and the selection
are constants for differentiation (``stop_gradient``); the output is exactly invariant to them.

Implementation: ``jax.lax.top_k`` on the (stop-gradient) scores, gathers of the selected
(block_size x d) query/key/value blocks, batched block matmuls and segment reductions (sum, max)
back into block rows. Memory is O(n * block_size * block_per_row) per head for the exact blocks plus
O(nb^2) = O(n^2 / block_size^2) for the low-resolution logits; no n x n tensor is formed.

Budget. ``budget_from: real`` (default): nb counts each example's non-empty blocks, so the budget
is per example (the static top-k is over bpr * nb and only its first bpr * nb_real entries are used)
and outputs at real tokens never depend on how much padding follows. ``budget_from: input`` is the
authors' form: nb counts the blocks of the actual padded input (length rounded up to a block
multiple), as they derive k from the padded length they run at; adding padding blocks then raises k
and the extra budget goes to real pairs once the budget binds (k < (real blocks)^2). Either way k is
clipped to the number of pairs, so an input of at most bpr blocks is exact softmax (the smoke
preset's 257 tokens = 9 blocks: every example with at most 8 non-empty blocks is attended exactly).
The authors round max_seq_len up to a power of two (ListOps 2000 -> 2048: k = 512); here ListOps'
2001 tokens give 63 blocks, k = 504.

Correct forms used by default, with the authors' behaviour where results may depend on it:

- ``row_max_over_empty_blocks`` (off): the authors take the row max of L BEFORE masking empty key
  blocks, whose masked mean is 0, so L = 0 enters the max of every row of a padded sequence. That
  changes L' and hence which blocks the global top-k picks (rows whose real maximum is negative are
  demoted). Default: the max over non-empty blocks only.
- ``selection: per_row`` (variant, not the authors'): top ``block_per_row`` blocks in every block row
  (priors included), a faster and more regular pattern that the reference lists as a named variant.

- ``selection_scores: authors``: the authors' ranking scores, L' + 5e3 for each prior set a pair lies
  in (diagonal band, first rows, first columns: a block in several sets ranks higher, which matters
  when the forced blocks exceed the budget) and empty pairs at L' - 1e4, ranked among the others
  rather than last (a budget larger than the non-empty pairs, as ``budget_from: input`` gives under
  padding, then selects empty pairs). Default ``ranked``: every forced pair lifted once, L' clipped
  to [-1e4, 0], empty pairs last.
- ``authors_stabiliser``: the authors' numerics around their +1e-6. Their high-resolution row max is
  taken over every key slot of the selected blocks, padded keys included (zeroed, so logit 0), and
  their CUDA ``index_max`` truncates it towards zero to a multiple of 1e-3; MRA-2's shared stabiliser
  is max(that, the low-resolution row max); block means divide by (c_r + 1e-6) (plain means when
  nothing in the batch is padded) and the final denominator gets + 1e-6. The 1e-6 is NOT negligible
  under padding: in a padded row whose real logits are all negative the padded keys' 0 sets the max,
  the denominator falls far below 1 and the 1e-6 changes outputs (measured on a right-padded input,
  priors (1, 1), MRA-2-s: up to 3e-4 relative at real logits near -8, 0.7 near -16). Default: the max over real keys only, no 1e-6 (the stabilised denominator
  is then >= 1 whenever a row has a real key), exact means.

With ``budget_from: input, row_max_over_empty_blocks: true, selection: global, selection_scores:
authors, authors_stabiliser: true`` the output equals the authors' ``mra2_attention`` (their
mra2_kernel/attention.py and CUDA kernels) on padded inputs and masks with holes (tested in float64
against a reference written from their code). Left out: their threshold test for "selected" (a tie
with the k-th score drops a block from both parts, measure zero for continuous inputs; equal scores
among empty pairs only move which empty block pairs are picked) is replaced by the exact selected set.
Padded query outputs are set to 0, as the authors multiply the output by the query mask.
Attention dropout is not applied (the authors' MRA has none); ``spec.dropout_rate`` is ignored.

Image-like inputs (``patch_order: true``, authors' ``input_shape``): before attention the H x W grid is
re-ordered so every 32-token block is a 4 x 8 spatial patch (H % 4 == W % 8 == 0), and the output is
put back in the original order. With a CLS token (``spec.has_cls``, position 0) the CLS token gets a
block of its own in front of the patches (1 real token, 31 padding slots), so the block structure
of the grid is the authors' one and ``initial_prior_first_n_blocks = 1`` makes CLS a global token:
its row sees every key exactly and every query sees it exactly. That block costs one extra block row
of budget (bpr blocks). Without ``patch_order`` a CLS token is simply token 0 of block 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.base import AttentionSpec, require_choice

# Finite "minus infinity": masked logits and missing maxima stay finite (no inf - inf, no NaN grads).
NEG = -1e30
# Selection score tiers: non-empty scores are clipped to [-SCORE_FLOOR, 0], forced (prior) blocks are
# lifted by PRIOR_BOOST above every other non-empty pair, empty pairs go below everything.
SCORE_FLOOR = 1e4
PRIOR_BOOST = 2e4
EMPTY_SCORE = -1e9

APPROX_MODES = ("full", "sparse")
SELECTION_SCORES = ("ranked", "authors")
AUTHORS_PRIOR_BOOST = 5e3  # the authors' get_block_idxes: +5e3 per prior set a block belongs to
AUTHORS_EMPTY_PENALTY = 1e4  # their low-resolution logit of an empty block pair: L - 1e4
AUTHORS_EPS = 1e-6  # their guard in the block-mean counts and in the final denominator
SELECTIONS = ("global", "per_row")
BUDGETS = ("input", "real")
PATCH = (4, 8)  # rows x columns of the spatial patch that fills one 32-token block


# ----------------------------------------------------------------------------------------------
# Token layout: internal padding to a block multiple and the optional 4 x 8 patch order.
# ----------------------------------------------------------------------------------------------

def internal_length(length: int, block_size: int, grid_shape=None, has_cls: bool = False) -> int:
    """Length of the internal sequence: padded to a block multiple; with the patch order, the grid
    plus one block for the CLS token (if any)."""
    if grid_shape is None:
        return -(-length // block_size) * block_size
    height, width = grid_shape
    if length != height * width + int(has_cls):
        raise ValueError(f"MRA patch_order: input length {length} != grid {height}x{width}"
                         f"{' + 1 CLS' if has_cls else ''} = {height * width + int(has_cls)}")
    return height * width + block_size * int(has_cls)


def to_internal(x, block_size: int, grid_shape=None, has_cls: bool = False):
    """(B, n, ...) -> (B, internal_length, ...): zero padding appended (1-D), or the H x W grid
    re-ordered into 4 x 8 patches, each filling one 32-token block, after a CLS block [CLS, 0 x 31]."""
    batch, length, *rest = x.shape
    total = internal_length(length, block_size, grid_shape, has_cls)
    if grid_shape is None:
        return jnp.pad(x, [(0, 0), (0, total - length)] + [(0, 0)] * len(rest))
    (height, width), (ph, pw), offset = grid_shape, PATCH, int(has_cls)
    grid = x[:, offset:].reshape(batch, height // ph, ph, width // pw, pw, *rest)
    grid = jnp.swapaxes(grid, 2, 3).reshape(batch, height * width, *rest)  # (H/4, W/8, 4, 8) order
    if not has_cls:
        return grid
    head = jnp.pad(x[:, :1], [(0, 0), (0, block_size - 1)] + [(0, 0)] * len(rest))
    return jnp.concatenate([head, grid], axis=1)


def from_internal(y, length: int, block_size: int, grid_shape=None, has_cls: bool = False):
    """Inverse of ``to_internal``: (B, internal_length, ...) -> (B, n, ...)."""
    if grid_shape is None:
        return y[:, :length]
    batch, _, *rest = y.shape
    (height, width), (ph, pw) = grid_shape, PATCH
    grid = y[:, block_size * int(has_cls):].reshape(batch, height // ph, width // pw, ph, pw, *rest)
    grid = jnp.swapaxes(grid, 2, 3).reshape(batch, height * width, *rest)
    return jnp.concatenate([y[:, :1], grid], axis=1) if has_cls else grid


# ----------------------------------------------------------------------------------------------
# The math, per (batch, head, block, ...) arrays.
# ----------------------------------------------------------------------------------------------

def _per_bh(fn):
    """vmap a per-(example, head) function over the two leading axes."""
    return jax.vmap(jax.vmap(fn))


def low_resolution(qb, kb, vb, mb, *, count_eps: bool = False):
    """Masked block means and low-resolution logits.

    qb, kb, vb: (B, H, nb, bs, d), already zero at padded tokens; mb: (B, nb, bs) bool.
    ``count_eps``: the authors' means sum / (c_r + 1e-6) (plain means when nothing in the batch is
    padded, as their code then takes ``mean``). Returns L (B, H, nb, nb), counts (B, nb), v_hat (B, H, nb, d).
    """
    counts = mb.sum(axis=-1).astype(qb.dtype)
    if count_eps:
        inv = (1.0 / (counts + jnp.where(mb.all(), 0.0, AUTHORS_EPS)))[:, None, :, None]
    else:
        inv = (1.0 / jnp.maximum(counts, 1.0))[:, None, :, None]
    q_hat, k_hat, v_hat = (x.sum(axis=3) * inv for x in (qb, kb, vb))
    logits = jnp.einsum("bhrd,bhcd->bhrc", q_hat, k_hat) / jnp.sqrt(jnp.asarray(qb.shape[-1], qb.dtype))
    return logits, counts, v_hat


def prior_mask(nb: int, first_n: int, diagonal_n: int) -> np.ndarray:
    """(nb, nb) bool: block pairs forced to the front of the selection (authors' initial priors)."""
    r, c = np.arange(nb)[:, None], np.arange(nb)[None, :]
    forced = np.zeros((nb, nb), bool)
    if diagonal_n > 0:
        forced |= np.abs(r - c) <= diagonal_n // 2
    if first_n > 0:
        forced |= (r < first_n) | (c < first_n)
    return forced


def prior_set_count(nb: int, first_n: int, diagonal_n: int) -> np.ndarray:
    """(nb, nb) float: in how many of the authors' prior sets (diagonal band, first rows, first
    columns) each block pair lies."""
    r, c = np.arange(nb)[:, None], np.arange(nb)[None, :]
    count = np.zeros((nb, nb))
    if diagonal_n > 0:
        count += np.abs(r - c) <= diagonal_n // 2
    if first_n > 0:
        count += (r < first_n).astype(float) + (c < first_n)
    return count


def low_resolution_row_max(logits, counts, row_max_over_empty_blocks=False):
    """(B, H, nb, 1): the max of L over the non-empty pairs of a row (0 for a row without any), or
    with ``row_max_over_empty_blocks`` over every key block, the empty ones counting L = 0."""
    nonempty = counts > 0
    if row_max_over_empty_blocks:  # authors: empty key blocks (mean 0, so L = 0) enter the max
        return jnp.where(nonempty[:, None, None, :], logits, 0.0).max(axis=-1, keepdims=True)
    valid = nonempty[:, None, :, None] & nonempty[:, None, None, :]
    row_max = jnp.where(valid, logits, NEG).max(axis=-1, keepdims=True)
    return jnp.where(row_max > NEG, row_max, 0.0)


def selection_scores(logits, counts, *, first_n=0, diagonal_n=0, row_max_over_empty_blocks=False,
                     scores_form: str = "ranked"):
    """Stop-gradient ranking scores (B, H, nb, nb) and the (B, H, nb, nb) bool of non-empty pairs.

    ``ranked``: L' clipped to [-1e4, 0], forced pairs lifted once, empty pairs last. ``authors``: their
    get_block_idxes, L' + 5e3 per prior set the pair lies in, empty pairs at L' - 1e4 (ranked among
    the rest, so a large budget reaches them)."""
    logits = jax.lax.stop_gradient(logits)
    nb = logits.shape[-1]
    nonempty = counts > 0
    valid = nonempty[:, None, :, None] & nonempty[:, None, None, :]
    row_max = low_resolution_row_max(logits, counts, row_max_over_empty_blocks)
    if scores_form == "authors":
        scores = jnp.where(valid, logits, logits - AUTHORS_EMPTY_PENALTY) - row_max
        return scores + AUTHORS_PRIOR_BOOST * prior_set_count(nb, first_n, diagonal_n), valid
    scores = jnp.clip(logits - row_max, -SCORE_FLOOR, 0.0)
    scores = jnp.where(prior_mask(nb, first_n, diagonal_n), scores + PRIOR_BOOST, scores)
    return jnp.where(valid, scores, EMPTY_SCORE), valid


_selection_scores = selection_scores  # mra_attention's keyword of the same name shadows it there


def select_blocks(scores, counts, block_per_row: int, *, selection="global", budget_from="real"):
    """Top-k block pairs. Returns rows, cols (B, H, k) int32 and active (B, H, k) bool."""
    batch, heads, nb, _ = scores.shape
    if selection == "global":
        k = min(block_per_row * nb, nb * nb)
        _, flat = jax.lax.top_k(scores.reshape(batch, heads, nb * nb), k)
        rows, cols = flat // nb, flat % nb
        if budget_from == "real":  # per-example budget from the non-empty blocks (sorted top-k)
            nb_real = (counts > 0).sum(axis=-1)
            k_real = jnp.minimum(block_per_row * nb_real, nb_real * nb_real)
            active = jnp.broadcast_to(jnp.arange(k)[None, None, :] < k_real[:, None, None], (batch, heads, k))
        else:
            active = jnp.ones((batch, heads, k), bool)
    elif selection == "per_row":
        k_row = min(block_per_row, nb)
        _, cols = jax.lax.top_k(scores, k_row)  # (B, H, nb, k_row)
        rows = jnp.broadcast_to(jnp.arange(nb)[:, None], cols.shape)
        rows, cols = rows.reshape(batch, heads, -1), cols.reshape(batch, heads, -1)
        active = jnp.ones(rows.shape, bool)
    else:
        raise ValueError(f"attention.selection must be one of {SELECTIONS}, got {selection!r}")
    return rows.astype(jnp.int32), cols.astype(jnp.int32), active


def high_resolution(qb, kb, vb, mb, rows, cols, active, *, authors_max: bool = False):
    """Exact softmax terms of the selected blocks, reduced into block rows.

    Returns numerator (B, H, nb, bs, d), denominator (B, H, nb, bs), both scaled by exp(-m_hi),
    and m_hi (B, H, nb, bs): per query, the max logit over real keys of its selected blocks (NEG if none).
    ``authors_max``: their CUDA ``index_max``: the max over every key slot of the selected blocks
    (padded keys, zeroed, have logit 0), truncated towards zero to a multiple of 1e-3.
    """
    nb = qb.shape[2]
    take = _per_bh(lambda x, i: x[i])
    q_sel, k_sel, v_sel = take(qb, rows), take(kb, cols), take(vb, cols)  # (B, H, k, bs, d)
    key_real = jax.vmap(jax.vmap(lambda m, i: m[i], in_axes=(None, 0)))(mb, cols)  # (B, H, k, bs)
    key_real = key_real & active[..., None]
    logits = jnp.einsum("bhkqd,bhkjd->bhkqj", q_sel, k_sel) / jnp.sqrt(jnp.asarray(qb.shape[-1], qb.dtype))
    entry = key_real[..., None, :]
    slot_entry = active[..., None, None] if authors_max else entry
    slot_max = jnp.where(slot_entry, logits, NEG).max(axis=-1)  # (B, H, k, bs)
    seg_max = _per_bh(functools.partial(jax.ops.segment_max, num_segments=nb))
    m_hi = jnp.maximum(seg_max(slot_max, rows), NEG)  # empty segment: -inf
    if authors_max:
        m_hi = jnp.where(m_hi > NEG, jnp.trunc(m_hi * 1000.0) / 1000.0, NEG)
    m_hi = jax.lax.stop_gradient(m_hi)
    m_slot = take(m_hi, rows)
    weights = jnp.exp(jnp.where(entry, logits - m_slot[..., None], NEG))  # 0 at masked entries
    seg_sum = _per_bh(functools.partial(jax.ops.segment_sum, num_segments=nb))
    numerator = seg_sum(jnp.einsum("bhkqj,bhkjd->bhkqd", weights, v_sel), rows)
    denominator = seg_sum(weights.sum(axis=-1), rows)
    return numerator, denominator, m_hi


def low_resolution_remainder(logits, counts, v_hat, valid, rows, cols, active, row_max=None):
    """MRA-2's block-mean terms for the non-selected non-empty pairs, scaled by exp(-m_lo).

    Returns numerator (B, H, nb, d), denominator (B, H, nb), m_lo (B, H, nb) (NEG if no such pair).
    ``row_max`` (B, H, nb, 1): use it as m_lo (the authors' stabiliser) instead of the remainder's max.
    """
    nb = logits.shape[-1]
    mark = _per_bh(lambda r, c, a: jnp.zeros((nb, nb), bool).at[r, c].set(a))  # pairs are distinct
    remainder = valid & ~mark(rows, cols, active)
    m_lo = (jnp.where(remainder, logits, NEG).max(axis=-1) if row_max is None else row_max[..., 0])
    m_lo = jax.lax.stop_gradient(m_lo)
    weights = jnp.exp(jnp.where(remainder, logits - m_lo[..., None], NEG)) * counts[:, None, None, :]
    return jnp.einsum("bhrc,bhcd->bhrd", weights, v_hat), weights.sum(axis=-1), m_lo


@functools.partial(jax.jit, static_argnames=(
    "block_per_row", "approx_mode", "block_size", "initial_prior_first_n_blocks",
    "initial_prior_diagonal_n_blocks", "selection", "budget_from", "row_max_over_empty_blocks",
    "selection_scores", "authors_stabiliser", "grid_shape", "has_cls"))
def mra_attention(q, k, v, key_mask, *, block_per_row: int = 8, approx_mode: str = "full",
                  block_size: int = 32, initial_prior_first_n_blocks: int = 0,
                  initial_prior_diagonal_n_blocks: int = 0, selection: str = "global",
                  budget_from: str = "real", row_max_over_empty_blocks: bool = False,
                  selection_scores: str = "ranked", authors_stabiliser: bool = False,
                  grid_shape=None, has_cls: bool = False):
    """MRA-2 (``approx_mode="full"``) or MRA-2-s (``"sparse"``) on (B, n, H, d) inputs; see the
    module docstring. ``grid_shape`` (a tuple) switches on the 4 x 8 patch order. Returns q's dtype.
    Jitted with every option static (they fix shapes: k, nb, the layout)."""
    require_choice("attention.approx_mode", approx_mode, APPROX_MODES)
    require_choice("attention.budget_from", budget_from, BUDGETS)
    require_choice("attention.selection_scores", selection_scores, SELECTION_SCORES)
    batch, length, heads, dim = q.shape
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    layout = dict(block_size=block_size, grid_shape=grid_shape, has_cls=has_cls)
    nb = internal_length(length, **layout) // block_size
    mask = to_internal(key_mask.astype(bool), **layout)
    mb = mask.reshape(batch, nb, block_size)

    def blocks(x):  # (B, n, H, d) -> (B, H, nb, bs, d) in the internal order, zero at padding
        x = jnp.where(mask[:, :, None, None], to_internal(x.astype(dtype), **layout), 0.0)
        return x.transpose(0, 2, 1, 3).reshape(batch, heads, nb, block_size, dim)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    logits, counts, v_hat = low_resolution(qb, kb, vb, mb, count_eps=authors_stabiliser)
    if approx_mode == "sparse":  # the low resolution only ranks blocks
        logits = jax.lax.stop_gradient(logits)
    scores, valid = _selection_scores(
        logits, counts, first_n=initial_prior_first_n_blocks, diagonal_n=initial_prior_diagonal_n_blocks,
        row_max_over_empty_blocks=row_max_over_empty_blocks, scores_form=selection_scores)
    rows, cols, active = select_blocks(scores, counts, block_per_row, selection=selection,
                                       budget_from=budget_from)
    numerator, denominator, m_hi = high_resolution(qb, kb, vb, mb, rows, cols, active,
                                                   authors_max=authors_stabiliser)

    if approx_mode == "full":
        row_max = (low_resolution_row_max(jax.lax.stop_gradient(logits), counts, row_max_over_empty_blocks)
                   if authors_stabiliser else None)
        num_lo, den_lo, m_lo = low_resolution_remainder(logits, counts, v_hat, valid, rows, cols, active,
                                                        row_max)
        m_lo = m_lo[..., None]  # broadcast over the tokens of the query block
        shared = jnp.maximum(m_hi, m_lo)
        scale_hi, scale_lo = jnp.exp(m_hi - shared), jnp.exp(m_lo - shared)
        numerator = numerator * scale_hi[..., None] + num_lo[:, :, :, None, :] * scale_lo[..., None]
        denominator = denominator * scale_hi + den_lo[..., None] * scale_lo

    if authors_stabiliser:  # their + 1e-6, relative to their stabilisers
        out = numerator / (denominator + AUTHORS_EPS)[..., None]
    else:
        out = numerator / jnp.where(denominator > 0, denominator, 1.0)[..., None]  # no real key: 0
    out = out.reshape(batch, heads, nb * block_size, dim).transpose(0, 2, 1, 3)
    out = from_internal(jnp.where(mask[:, :, None, None], out, 0.0), length, **layout)
    return out.astype(q.dtype)


class MRAAttention(nnx.Module):
    """MRA-2 / MRA-2-s; knobs as in ``mra_attention`` (see the module docstring).

    ``patch_order`` re-orders image-like inputs into 4 x 8 patches using ``spec.grid_shape`` (and
    ``spec.has_cls``); it needs ``block_size = 32`` and a grid with H % 4 == W % 8 == 0.
    """

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, approx_mode: str = "full",
                 block_per_row: int = 8, block_size: int = 32, initial_prior_first_n_blocks: int = 1,
                 initial_prior_diagonal_n_blocks: int = 0, patch_order: bool = False,
                 selection: str = "global", budget_from: str = "real",
                 row_max_over_empty_blocks: bool = False, selection_scores: str = "ranked",
                 authors_stabiliser: bool = False):
        del rngs  # no parameters and no randomness
        require_choice("attention.approx_mode", approx_mode, APPROX_MODES)
        require_choice("attention.selection", selection, SELECTIONS)
        require_choice("attention.budget_from", budget_from, BUDGETS)
        require_choice("attention.selection_scores", selection_scores, SELECTION_SCORES)
        if block_per_row < 1 or block_size < 1:
            raise ValueError(f"attention.block_per_row and block_size must be >= 1, "
                             f"got {block_per_row} and {block_size}")
        grid_shape = None
        if patch_order:
            if spec.grid_shape is None:
                raise ValueError("attention.patch_order=true needs an image-like task: the attention spec "
                                 "has no grid_shape (task.grid_shape is unset)")
            height, width = spec.grid_shape
            if block_size != PATCH[0] * PATCH[1] or height % PATCH[0] or width % PATCH[1]:
                raise ValueError(f"attention.patch_order=true needs block_size 32 and a grid with "
                                 f"height % 4 == width % 8 == 0; got block_size {block_size}, "
                                 f"grid {height}x{width}")
            grid_shape = (int(height), int(width))
        self.options = dict(
            approx_mode=approx_mode, block_per_row=int(block_per_row), block_size=int(block_size),
            initial_prior_first_n_blocks=int(initial_prior_first_n_blocks),
            initial_prior_diagonal_n_blocks=int(initial_prior_diagonal_n_blocks), selection=selection,
            budget_from=budget_from, row_max_over_empty_blocks=bool(row_max_over_empty_blocks),
            selection_scores=selection_scores, authors_stabiliser=bool(authors_stabiliser),
            grid_shape=grid_shape, has_cls=bool(spec.has_cls),
        )

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        del deterministic  # deterministic in training and evaluation alike
        return mra_attention(q, k, v, key_mask, **self.options)
