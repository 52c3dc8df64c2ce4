"""Iterative Moore–Penrose pseudo-inverse shared by Nyströmformer and Skyformer.

Xiong et al. (Nyströmformer, AAAI 2021) approximate A^+ of a small m x m matrix with a
Newton–Schulz-type iteration built only from matrix products (no division-based solver, which
Skyformer Sec. 4.4 found unstable):

    Z_{j+1} = 1/4 Z_j (13 I - A Z_j (15 I - A Z_j (7 I - A Z_j)))

started from Z_0 = A^T / (||A||_1 ||A||_inf) (max column sum times max row sum). The authors'
released code takes both maxima over the whole batch and all heads at once (``init="global"``,
Nyströmformer issue #3); the default here computes them per matrix (``init="per_matrix"``), the
fix the Nyströmformer README recommends, so an example's output never depends on its batch mates.

Skyformer's released code (src/models/attention_skyformer.py, ``iterative_inv``) starts from
Z_0 = A^T / (max column sum) instead, its maximum also over the whole batch and all heads;
``scale="column"`` gives that start (Skyformer's ``pinv_init: global``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PINV_INITS = ("per_matrix", "global")
PINV_SCALES = ("column_times_row", "column")


def pinv_initial(matrix: jax.Array, init: str = "per_matrix", scale: str = "column_times_row") -> jax.Array:
    """Z_0 = A^T / (max column sum of |A| * max row sum of |A|) (``scale="column"``: max column sum
    only), the maxima per matrix or over the whole batch."""
    if init not in PINV_INITS:
        raise ValueError(f"pinv init must be one of {PINV_INITS}, got {init!r}")
    if scale not in PINV_SCALES:
        raise ValueError(f"pinv scale must be one of {PINV_SCALES}, got {scale!r}")
    absolute = jnp.abs(matrix)
    col = absolute.sum(axis=-2)  # column sums: (..., m)
    row = absolute.sum(axis=-1)  # row sums: (..., m)
    if init == "global":
        col_max, row_max = col.max(), row.max()
    else:
        col_max, row_max = col.max(axis=-1)[..., None, None], row.max(axis=-1)[..., None, None]
    divisor = col_max if scale == "column" else col_max * row_max
    return jnp.swapaxes(matrix, -1, -2) / divisor


def iterative_pinv(matrix: jax.Array, iterations: int = 6, init: str = "per_matrix",
                   scale: str = "column_times_row") -> jax.Array:
    """Approximate pseudo-inverse of each (..., m, m) matrix by ``iterations`` Newton–Schulz steps."""
    identity = jnp.eye(matrix.shape[-1], dtype=matrix.dtype)
    z = pinv_initial(matrix, init, scale)
    for _ in range(iterations):
        az = matrix @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z
