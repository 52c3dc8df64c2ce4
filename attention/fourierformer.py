"""FourierFormer attention (Nguyen, Pham, Nguyen, Nguyen, Osher, Ho, "FourierFormer: Transformer Meets
Generalized Fourier Integral Theorem", NeurIPS 2022, arXiv 2206.00206).

Attention as a Nadaraya–Watson kernel regression of the values on the keys, with the generalised
Fourier integral kernel in place of the dot-product (Gaussian) one. Per (example, head), D = head_dim:

    sinc(x)  = sin(x) / x,   sinc(0) = 1
    K_ij     = prod_{d=1..D} phi( sinc(R_d (q_id - k_jd)) ),   phi(y) = y^4          (kernel as shipped)
    out_i    = sum_j m_j K_ij v_j / sum_j m_j K_ij                          (Nadaraya–Watson estimate)

with m_j = 1 for real keys, 0 for padding. There is no 1/sqrt(D) scaling: the learned bandwidth R
(one scalar per layer shared by all heads and dimensions, or one value per dimension with
``R_shape="per_dim"``) is the only scale. The authors' code multiplies the product by R^D in one
variant; that constant is omitted here. It cancels in the normalisation only with ``eps=0``: with
the authors' eps, K / (sum K + eps) with K scaled by R^D equals the unscaled form with eps / R^D,
so ``eps=1e-6`` reproduces the variant without the R^D factor (the other one would need eps R^-D).

Stable form. The product of D factors in [0, 1], each to the 4th power, underflows fp32 at LRA head
sizes (sinc = 0.64 in every one of 64 dimensions gives ~1e-49), so the kernel is accumulated in log
space and normalised like a softmax:

    L_ij = sum_d 4 log|sinc(R_d (q_id - k_jd))|,      A_ij = m_j exp(L_ij - M_i) / sum_j m_j exp(L_ij - M_i)

where M_i is the maximum of L_ij over real keys (so the best key has weight exp(0) = 1 and a row with
a real key never sums to zero). A_ij equals the Nadaraya–Watson weights exactly.

- The sum over d runs in a ``lax.scan`` whose (checkpointed) body adds one dimension's (n, n) term to
  an (n, n) accumulator, so no (n, n, D) tensor is ever held, in the forward or the backward pass:
  memory is O(n^2) per head like XLA softmax, time O(n^2 D) elementwise transcendental operations.
- Inherent cost: unlike softmax, whose O(n^2 D) work is one matrix multiply, every (i, j, d) triple
  needs a sine, a division and a log that no matmul can do, forward and backward. Measured against XLA
  softmax (one layer, batch 1, 4 heads x 64, float32, 2-core CPU, side by side in one process; ratios
  only, the machine was shared): forward about 10x and forward+backward tens to hundreds of times at n = 1024 (docs/benchmarks.md).
- log|sinc x| is evaluated with a safe branch: for |x| < 0.1 the Taylor series
  -x^2/6 - x^4/180 - x^6/2835 - x^8/37800 (exact to float64 rounding there, and free of the 0/0 and the
  cot x - 1/x cancellation of the direct form); otherwise 1/2 log(max(sinc(x)^2, sinc_floor^2)). The
  direct branch sees a dummy argument where the series is used (the safe-where pattern), so neither
  branch produces a NaN gradient.
- ``sinc_floor`` (default 1e-4) bounds each per-dimension factor |sinc| from below, so the log stays
  finite at the zeros of sin (x = k pi) and its gradient is bounded by about 1 / (pi * sinc_floor) per
  unit R. A floored factor still multiplies the kernel by 1e-16, so a key that sits on a zero of sinc in
  some dimension keeps a negligible weight unless every real key does.
- Fallback: a query row with no real key at all (a fully padded example) gets all-zero weights and
  a zero output.

Quirk flag (off by default):
- ``eps``: the authors' code normalises as K_ij / (sum_j K_ij + 1e-6), computed in fp32 linear space.
  ``eps=1e-6`` reproduces that denominator guard exactly (evaluated stably in log space:
  sum_j exp(L_ij) + eps = exp(M_i) (sum_j exp(L_ij - M_i) + exp(log eps - M_i))). Results depend on it:
  when the total kernel mass of a row is far below eps, which is typical at head_dim 64, the authors'
  weights, and the attention output, shrink towards zero. ``eps=0`` (default) is the plain estimator.

Not reproduced: the released CUDA kernel reads R[d] for every d although the shipped R has one
element (an out-of-bounds read, undefined behaviour); ``R_shape="per_dim"`` is the well-defined form of
what that kernel computes. Attention dropout (0 in the released runs) is applied to A when
``spec.dropout_rate > 0`` in training, after normalisation as in the authors' code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice

R_SHAPES = ("scalar", "per_dim")
# Finite "minus infinity" for masked log-kernels: every real log-kernel is >= 4 D log(sinc_floor).
MASKED_LOG_KERNEL = -1e30
# |x| below which log sinc(x) uses its Taylor series (error < 3e-16 at the threshold).
SERIES_THRESHOLD = 0.1


def log_abs_sinc(x: jax.Array, sinc_floor: float) -> jax.Array:
    """log max(|sin x / x|, sinc_floor), with log sinc(0) = 0, finite value and gradient everywhere."""
    small = jnp.abs(x) < SERIES_THRESHOLD
    x2 = x * x
    series = -x2 * (1.0 / 6.0 + x2 * (1.0 / 180.0 + x2 * (1.0 / 2835.0 + x2 * (1.0 / 37800.0))))
    x_safe = jnp.where(small, jnp.ones_like(x), x)  # the direct branch never sees x = 0
    sinc = jnp.sin(x_safe) / x_safe
    direct = 0.5 * jnp.log(jnp.maximum(sinc * sinc, sinc_floor ** 2))
    return jnp.where(small, series, direct)


def fourier_log_kernel(q: jax.Array, k: jax.Array, R: jax.Array, *, sinc_floor: float = 1e-4) -> jax.Array:
    """L_ij = sum_d 4 log|sinc(R_d (q_id - k_jd))| for q (b, n, h, D), k (b, m, h, D) -> (b, h, n, m).

    R broadcasts to (D,). Accumulated one dimension at a time, so memory is O(b h n m), not O(b h n m D).
    """
    dtype = q.dtype
    head_dim = q.shape[-1]
    R = jnp.broadcast_to(jnp.asarray(R, dtype).reshape(-1), (head_dim,))
    q_by_dim = jnp.transpose(q, (3, 0, 2, 1))  # (D, b, h, n)
    k_by_dim = jnp.transpose(k, (3, 0, 2, 1))  # (D, b, h, m)

    @jax.checkpoint  # the backward pass recomputes each (n, m) term instead of storing D of them
    def add_dimension(total, inputs):
        q_d, k_d, r_d = inputs
        x = r_d * (q_d[..., :, None] - k_d[..., None, :])
        return total + 4.0 * log_abs_sinc(x, sinc_floor), None

    start = jnp.zeros((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), dtype)
    total, _ = jax.lax.scan(add_dimension, start, (q_by_dim, k_by_dim, R))
    return total


def fourier_attention_weights(q, k, key_mask, R, *, sinc_floor: float = 1e-4, eps: float = 0.0):
    """Nadaraya–Watson weights A_ij (b, h, n, m) over real keys; all-zero rows when no key is real.

    ``eps > 0`` gives the authors' K_ij / (sum_j K_ij + eps). Computed in at least fp32.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    log_kernel = fourier_log_kernel(q.astype(dtype), k.astype(dtype), R, sinc_floor=sinc_floor)
    real = key_mask[:, None, None, :]
    log_kernel = jnp.where(real, log_kernel, MASKED_LOG_KERNEL)
    # The weights do not depend on the shift, so it carries no gradient.
    row_max = jax.lax.stop_gradient(jnp.max(log_kernel, axis=-1, keepdims=True))
    shifted = jnp.where(real, jnp.exp(log_kernel - row_max), 0.0)  # best real key -> exactly 1
    total = jnp.sum(shifted, axis=-1, keepdims=True)  # >= 1 if a key is real, else 0
    total = jnp.where(total > 0, total, 1.0)
    if eps <= 0:
        return shifted / total
    # sum_j K_ij + eps = exp(M_i) * (total + exp(log eps - M_i)), without overflow or underflow.
    log_denominator = jnp.logaddexp(jnp.log(total), jnp.log(jnp.asarray(eps, dtype)) - row_max)
    return shifted * jnp.exp(-log_denominator)


def fourier_attention(q, k, v, key_mask, R, *, sinc_floor: float = 1e-4, eps: float = 0.0):
    """out_i = sum_j A_ij v_j; returns q's dtype."""
    weights = fourier_attention_weights(q, k, key_mask, R, sinc_floor=sinc_floor, eps=eps)
    return apply_weights(weights, v).astype(q.dtype)


def apply_weights(weights: jax.Array, v: jax.Array) -> jax.Array:
    """sum_j w_ij v_j for weights (b, h, n, m) and v (b, m, h, d) -> (b, n, h, d), in the weights' dtype."""
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(weights.dtype))


class FourierFormerAttention(nnx.Module):
    """Generalised Fourier integral kernel attention with a learned bandwidth R.

    Knobs: ``R_init`` (initial bandwidth), ``R_shape`` ("scalar": one R per layer shared by heads and
    dimensions, as released; "per_dim": one R per head dimension, shared by heads), ``sinc_floor``
    (lower bound on each |sinc| factor), ``eps`` (authors' denominator guard; 0 = off). See the module
    docstring for the equations.
    """

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, R_init: float = 1.0, R_shape: str = "scalar",
                 sinc_floor: float = 1e-4, eps: float = 0.0):
        require_choice("attention.R_shape", R_shape, R_SHAPES)
        if not 0.0 < sinc_floor < 1.0:
            raise ValueError(f"attention.sinc_floor must be in (0, 1), got {sinc_floor}")
        if eps < 0:
            raise ValueError(f"attention.eps must be >= 0, got {eps}")
        shape = (1,) if R_shape == "scalar" else (spec.head_dim,)
        self.R = nnx.Param(jnp.full(shape, R_init, jnp.float32))
        self.R_shape = R_shape
        self.sinc_floor = float(sinc_floor)
        self.eps = float(eps)
        self.dropout = nnx.Dropout(spec.dropout_rate, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        weights = fourier_attention_weights(q, k, key_mask, self.R[...], sinc_floor=self.sinc_floor, eps=self.eps)
        if self.dropout.rate > 0 and not deterministic:
            weights = self.dropout(weights, deterministic=False)
        return apply_weights(weights, v).astype(q.dtype)
