"""Skyformer and exact kernelized attention (Chen, Zeng, Ji, Yang, "Skyformer: Remodel Self-Attention
with Gaussian Kernel and Nystrom Method", NeurIPS 2021).

Both replace softmax by a Gaussian kernel on scaled queries and keys, with no row normalisation:

    q^_i = q_i d^-1/4,  k^_j = k_j d^-1/4          (d = head_dim of the input, not a constant)
    kappa(x, y) = exp(-||x - y||^2 / 2) = exp(x.y - ||x||^2/2 - ||y||^2/2)
    C_ij = kappa(q^_i, k^_j) m_j,   out = C V                                           (Sec. 4.1, Eq. 3)

"Automatic normalisation": C = D_Q^-1/2 exp(Q K^T / sqrt(d)) D_K^-1/2 with (D_Q)_ii = exp(||q_i||^2/sqrt(d)),
i.e. softmax's exponential with a symmetric per-row / per-column normaliser instead of the row sum.

``KernelizedAttention`` (the paper's "Kernelized Attention" row) forms C exactly: O(n^2) time and
memory; attention dropout (``spec.dropout_rate``) is applied to the unnormalised C in training.

``SkyformerAttention`` approximates C by Nystrom on the PSD matrix of the stacked points
X = [Q^; K^] (Sec. 4.2, Eqs. 4-6), of which C is the off-diagonal block. With m landmarks X_S:

    M      = kappa(X_S, X_S)                       (m x m)
    D      = diag(rowsum(M + gamma I))
    M~     = D^-1/2 (M + gamma I) D^-1/2            (eigenvalues in (0, 1]: Lemma 3, Sec. 4.4)
    Z      ~ M~^-1 by the Newton-Schulz iteration of ``attention/pseudo_inverse.py`` (6 steps)
    out    = kappa(Q^, X_S) . [ D^-1/2 Z D^-1/2 . ( (kappa(X_S, K^) m) V ) ]

evaluated right to left, so only n x m and m x m matrices exist (O(n m d + m^3) time, O(n m) memory).
D^-1/2 Z D^-1/2 ~ (M + gamma I)^-1, so this is a ridge-regularised Nystrom approximation; gamma = 0.1
and the D^-1/2 scaling are what make the iteration converge (tasks doc A2).

Landmarks (as in the authors' code): m uniform draws *with replacement* from the
example's real tokens, the first m // 2 taken from the queries and the rest from the keys, shared
by all heads. Draws are by rank among the real tokens (idx = floor(u L_b) into the list of real
positions), so any mask works (holes, left padding) and a padded position is never a landmark;
u does not depend on the padded length, so added padding leaves the landmarks unchanged. More
landmarks than real tokens is fine: duplicates are harmless thanks to gamma I (no clipping, which
would make outputs depend on the padded length). Gradients flow through the landmark vectors.

Randomness: a fresh key per training call from ``rngs.attention``; at evaluation a key fixed at
construction, so evaluation is deterministic given the seed. Differences from the authors' code,
each a named flag where results could depend on it (defaults are the corrected forms):

- ``eval_landmarks: resample`` -- the authors redraw landmarks at every forward, evaluation included
  (tasks doc E5). Here the eval draw then comes from the training stream; the harness's eval step
  carries the RNG state from batch to batch, so every eval batch gets fresh landmarks, as theirs
  (each pass starts from the training stream's current state and leaves it unchanged).
- ``shared_landmarks_across_batch: true`` -- the authors draw a single u for the whole batch, so all
  examples of equal length get the same landmark positions (correlated Nystrom errors across the
  batch; expected effect: a noisier batch gradient). Default: an independent u per example.
- ``pinv_init: global`` -- the authors' pseudo-inverse start exactly: Z_0 = M~^T / max colsum(M~),
  the maximum taken over the whole batch and all heads (tasks doc A1; src/models/attention_skyformer.py
  ``iterative_inv``, ``init_option="original"``). The default ``per_matrix`` is the shared helper's
  start, Z_0 = M~^T / (max colsum x max rowsum) per matrix. M~ is symmetric with spectral norm 1, so
  both converge; after 6 steps they differ by ~1e-3 relative at initialisation-like scales.
- ``landmark_positions: raw`` -- the authors' draw: floor(u L_b) taken as a raw position in [0, L_b)
  (their code assumes right padding). Under a mask with holes (e.g. black pixels masked by
  ``quirks.pixel_zero_is_padding``) such a landmark can be a masked, zeroed vector, and real tokens
  after position L_b are never landmarks. Default ``rank``: the floor(u L_b)-th real token. Equal
  on right-padded inputs. (Their float32 u L_b can round up to L_b with probability ~2^-24 per draw,
  picking position L_b; here the draw stays in [0, L_b).)
- The authors hard-code 32^-1/4 as the q/k scale (A8); here d^-1/4 from the input (identical at d=32).

``inverse: exact`` replaces the iteration by ``jnp.linalg.pinv`` (tests and diagnostics only).
Everything is computed in at least fp32 (bf16 upcast, fp64 kept); the output has the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice
from attention.pseudo_inverse import PINV_INITS, iterative_pinv

EVAL_LANDMARKS = ("fixed", "resample")
LANDMARK_POSITIONS = ("rank", "raw")
INVERSES = ("iterative", "exact")


def compute_dtype(x: jax.Array):
    return jnp.promote_types(x.dtype, jnp.float32)


def scale_and_mask(x: jax.Array, key_mask: jax.Array) -> jax.Array:
    """x d^-1/4 in at least fp32, zero at padded positions; x is (batch, n, heads, d)."""
    x = x.astype(compute_dtype(x)) * x.shape[-1] ** -0.25
    return jnp.where(key_mask[:, :, None, None], x, 0.0)


def gaussian_kernel(x: jax.Array, y: jax.Array) -> jax.Array:
    """kappa(x_i, y_j) = exp(x.y - |x|^2/2 - |y|^2/2): (b, n, h, d), (b, m, h, d) -> (b, h, n, m).

    The exponent is -|x - y|^2 / 2 <= 0; rounding can make the expanded form slightly positive,
    so it is clipped at 0 (kernel values stay in (0, 1]).
    """
    dot = jnp.einsum("bnhd,bmhd->bhnm", x, y)
    x_half = 0.5 * jnp.einsum("bnhd,bnhd->bhn", x, x)
    y_half = 0.5 * jnp.einsum("bmhd,bmhd->bhm", y, y)
    return jnp.exp(jnp.minimum(dot - x_half[..., :, None] - y_half[..., None, :], 0.0))


# ---------------------------------------------------------------------------------------------
# Exact kernelized attention
# ---------------------------------------------------------------------------------------------

def kernelized_attention_weights(q: jax.Array, k: jax.Array, key_mask: jax.Array) -> jax.Array:
    """C_ij = kappa(q^_i, k^_j) for real keys j, 0 for padded ones; (batch, heads, n_q, n_k)."""
    weights = gaussian_kernel(scale_and_mask(q, jnp.ones(q.shape[:2], bool)), scale_and_mask(k, key_mask))
    return jnp.where(key_mask[:, None, None, :], weights, 0.0)


def apply_kernel_weights(weights: jax.Array, v: jax.Array) -> jax.Array:
    """sum_j C_ij v_j: (b, h, q, k), (b, k, h, d) -> (b, q, h, d) in the weights' dtype."""
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(weights.dtype))


def kernelized_attention(q, k, v, key_mask):
    """out = C V, no normalisation (Eq. 3); returns q's dtype."""
    return apply_kernel_weights(kernelized_attention_weights(q, k, key_mask), v).astype(q.dtype)


class KernelizedAttention(nnx.Module):
    """Exact Gaussian-kernel attention, O(n^2); attention dropout on C in training."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        weights = kernelized_attention_weights(q, k, key_mask)
        if self.dropout.rate > 0 and not deterministic:
            weights = self.dropout(weights, deterministic=False)
        return apply_kernel_weights(weights, v).astype(q.dtype)


# ---------------------------------------------------------------------------------------------
# Skyformer
# ---------------------------------------------------------------------------------------------

def real_positions(key_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(positions of the real tokens first, in order; number of real tokens) per example.

    A stable sort of ~mask puts the real positions, in increasing order, in front of the padded
    ones, whatever the mask looks like (right or left padding, holes).
    """
    order = jnp.argsort(~key_mask, axis=-1, stable=True).astype(jnp.int32)
    return order, key_mask.sum(axis=-1).astype(jnp.int32)


def sample_landmarks(key: jax.Array, key_mask: jax.Array, num_landmarks: int,
                     shared_across_batch: bool = False, positions: str = "rank") -> tuple[jax.Array, jax.Array]:
    """Positions (batch, m // 2) of query landmarks and (batch, m - m // 2) of key landmarks.

    u ~ U[0, 1)^m (one per example, or one for the whole batch), index = floor(u L_b) into the
    example's real positions: uniform with replacement over real tokens. An example with no real
    token gets position 0 (its zeroed vectors), which keeps everything finite. ``positions="raw"``:
    floor(u L_b) is the position itself (the authors' draw; a masked position under holes).
    """
    require_choice("attention.landmark_positions", positions, LANDMARK_POSITIONS)
    batch = key_mask.shape[0]
    if shared_across_batch:
        u = jnp.broadcast_to(jax.random.uniform(key, (num_landmarks,)), (batch, num_landmarks))
    else:  # fold in the example index: example b's draw does not depend on the batch size
        u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (num_landmarks,)))(
            jnp.arange(batch))
    order, count = real_positions(key_mask)
    rank = jnp.floor(u * count[:, None].astype(u.dtype)).astype(jnp.int32)
    rank = jnp.clip(rank, 0, jnp.maximum(count - 1, 0)[:, None])  # u L_b can round up to L_b
    picked = rank if positions == "raw" else jnp.take_along_axis(order, rank, axis=1)
    half = num_landmarks // 2
    return picked[:, :half], picked[:, half:]


def gather_rows(x: jax.Array, positions: jax.Array) -> jax.Array:
    """x[b, positions[b]] for x (batch, n, heads, d) and positions (batch, m) -> (batch, m, heads, d)."""
    return jnp.take_along_axis(x, positions[:, :, None, None], axis=1)


def normalized_landmark_kernel(landmarks: jax.Array, gamma: float) -> tuple[jax.Array, jax.Array]:
    """(M~ = D^-1/2 (M + gamma I) D^-1/2, D^-1/2) for M = kappa(X_S, X_S); (b, h, m, m), (b, h, m)."""
    kernel = gaussian_kernel(landmarks, landmarks)
    kernel = kernel + gamma * jnp.eye(kernel.shape[-1], dtype=kernel.dtype)
    inv_sqrt_degree = jax.lax.rsqrt(kernel.sum(axis=-1))
    return inv_sqrt_degree[..., :, None] * kernel * inv_sqrt_degree[..., None, :], inv_sqrt_degree


def skyformer_attention(q, k, v, key_mask, query_landmarks, key_landmarks, *, gamma: float = 0.1,
                        pinv_iterations: int = 6, pinv_init: str = "per_matrix",
                        inverse: str = "iterative"):
    """Ridge Nystrom attention with the landmarks X_S = [Q^[query_landmarks]; K^[key_landmarks]] (positions per example).

    Returns q's dtype; computed in at least fp32. O(n m) memory: C~ is never formed.
    """
    require_choice("attention.inverse", inverse, INVERSES)
    q_hat = scale_and_mask(q, key_mask)
    k_hat = scale_and_mask(k, key_mask)
    values = jnp.where(key_mask[:, :, None, None], v.astype(q_hat.dtype), 0.0)
    landmarks = jnp.concatenate([gather_rows(q_hat, query_landmarks), gather_rows(k_hat, key_landmarks)], axis=1)

    normalized, inv_sqrt_degree = normalized_landmark_kernel(landmarks, gamma)
    if inverse == "exact":
        z = jnp.linalg.pinv(normalized, hermitian=True)
    else:
        # the authors' global start divides by the max column sum only (see the module docstring)
        z = iterative_pinv(normalized, pinv_iterations, pinv_init,
                           scale="column" if pinv_init == "global" else "column_times_row")
    middle = inv_sqrt_degree[..., :, None] * z * inv_sqrt_degree[..., None, :]  # ~ (M + gamma I)^-1

    key_part = gaussian_kernel(k_hat, landmarks) * key_mask[:, None, :, None]  # (b, h, n, m)
    context = jnp.einsum("bhnm,bnhe->bhme", key_part, values)  # kappa(X_S, K^) m V: (b, h, m, d_v)
    context = jnp.einsum("bhlm,bhme->bhle", middle, context)
    query_part = gaussian_kernel(q_hat, landmarks)  # (b, h, n, m)
    return jnp.einsum("bhnm,bhme->bnhe", query_part, context).astype(q.dtype)


class SkyformerAttention(nnx.Module):
    """Skyformer: ridge Nystrom of the Gaussian-kernel attention; see the module docstring."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, num_landmarks: int = 128, gamma: float = 0.1,
                 pinv_iterations: int = 6, pinv_init: str = "per_matrix", eval_landmarks: str = "fixed",
                 shared_landmarks_across_batch: bool = False, landmark_positions: str = "rank",
                 inverse: str = "iterative"):
        del spec  # no parameters; works for any length and head_dim
        if num_landmarks < 2:
            raise ValueError(f"skyformer needs num_landmarks >= 2 (half queries, half keys), got {num_landmarks}")
        require_choice("attention.pinv_init", pinv_init, PINV_INITS)
        require_choice("attention.eval_landmarks", eval_landmarks, EVAL_LANDMARKS)
        require_choice("attention.inverse", inverse, INVERSES)
        require_choice("attention.landmark_positions", landmark_positions, LANDMARK_POSITIONS)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.num_landmarks, self.gamma = num_landmarks, gamma
        self.pinv_iterations, self.pinv_init, self.inverse = pinv_iterations, pinv_init, inverse
        self.eval_landmarks = eval_landmarks
        self.shared_landmarks_across_batch = shared_landmarks_across_batch
        self.landmark_positions = landmark_positions
        self.rng = rngs.attention.fork()
        self.eval_key = nnx.Variable(self.rng())  # fixed at construction: deterministic evaluation

    def landmark_key(self, deterministic: bool) -> jax.Array:
        if deterministic and self.eval_landmarks == "fixed":
            return self.eval_key[...]
        return self.rng()

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        query_landmarks, key_landmarks = sample_landmarks(
            self.landmark_key(deterministic), key_mask, self.num_landmarks, self.shared_landmarks_across_batch,
            self.landmark_positions)
        return skyformer_attention(q, k, v, key_mask, query_landmarks, key_landmarks, gamma=self.gamma,
                                   pinv_iterations=self.pinv_iterations, pinv_init=self.pinv_init,
                                   inverse=self.inverse)
