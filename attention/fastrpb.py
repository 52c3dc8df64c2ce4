"""FastRPB: a learned relative-position bias added to any attention through FFTs (Zubkov & Gavrilov,
"FastRPB: a Scalable Relative Positional Encoding for Long Sequence Tasks", arXiv 2202.11364, 2022).

Per head h, a separate, un-normalised term is added to the attention output before the output
projection (``lra/model.py``): head_out_h = Attention(Q, K, V)_h + W_h V_h. No softmax over W and no
contribution to the attention's normaliser (the authors' final code; earlier versions also added W 1
to a linear attention's denominator).

1-D (``FastRPB``): W is Toeplitz in the token positions 0..n-1 (the CLS token excluded)

    W[i, j] = c_h(i - j),    out_i = sum_j W[i, j] m_j v_j
    full:      c_h(r) a free parameter for every offset r = -(S-1)..(S-1)      (2S-1 values per head)
    symmetric: c_h(r) = w_h[|r|]                                                  (S values per head)

with S = spec.max_length minus the CLS token. The product is a linear convolution of v with the
coefficient sequence a_t = c(t - (n-1)), t = 0..2n-2: both are zero-padded to a length L >= 2n-1,
multiplied in the rfft domain, and outputs n-1..2n-2 of the irfft are out_0..out_{n-1}; L >= 2n-1
means no circular wrap-around reaches them. Cost O(d n log n) time and O(n d) memory: W is never
formed. Any length n <= S works (the coefficients are the centred 2n-1 slice), not only batches
padded to the maximum length.

2-D (``FastRPB2D``, image-like inputs with spec.grid_shape = (H, W), tokens in row-major order):

    W2d[(r, c), (r', c')] = c_h(r - r') + c_h(c - c')       (one 1-D vector serves rows and columns)
    out[r, c] = sum_r' c_h(r - r') (sum_c' v[r', c']) + sum_c' c_h(c - c') (sum_r' v[r', c'])

i.e. two 1-D Toeplitz FFT products of the row sums and the column sums, broadcast back to H x W;
S = max(H, W) so one vector covers both axes of a non-square grid.

Masking and special tokens: V is zeroed at padded positions before any sum, so padding never
reaches real outputs. The authors do not mask it (the PAD embedding's value leaks into every
position's bias term, which matters on heavily padded ListOps/Text); ``leak_padding: true``
reproduces that. A CLS token (spec.has_cls, position 0) is removed before the FFT, never enters
the sum, and its bias output is zero, as the authors treat BOS/EOS tokens.

Initialisation (the authors' near-zero, roughly linear-in-distance init): per head,
w_h[r] = r * alpha * e1_h + beta * e2_h for r = 0..S-1, e1_h ~ N(0, 1), e2_h ~ U(0, 1), alpha = 1e-5,
beta = 1e-6; ``full`` starts from the mirrored c(r) = w[|r|]. The keys come from the layer's own
``rngs.params`` stream, so every layer gets its own draw (the authors' JAX code reuses one fixed key,
PRNGKey(9), for both draws and every layer).

Computed in at least fp32 (bf16 upcast, fp64 stays fp64); returns v's dtype. Encoder-only: there is
no causal variant (the authors' causal FFT path is a no-op).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec

BIAS_BASE_TYPES = ("full", "symmetric")


def fast_fft_length(minimum: int) -> int:
    """Smallest 2^a 3^b 5^c >= minimum: sizes every FFT backend handles fast (any L >= 2n-1 is exact)."""
    size = max(int(minimum), 1)
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


def init_distance_weights(key: jax.Array, heads: int, size: int, alpha: float = 1e-5,
                          beta: float = 1e-6) -> jax.Array:
    """w[h, r] = r alpha e1_h + beta e2_h, r = 0..size-1 (independent draws for e1 and e2)."""
    key_slope, key_offset = jax.random.split(key)
    slope = jax.random.normal(key_slope, (heads, 1))
    offset = jax.random.uniform(key_offset, (heads, 1))
    return jnp.arange(size)[None, :] * alpha * slope + beta * offset


def mirror(w: jax.Array) -> jax.Array:
    """(h, S) distance weights -> (h, 2S-1) offset weights c(r) = w[|r|], index r + S - 1."""
    return jnp.concatenate([jnp.flip(w[:, 1:], axis=-1), w], axis=-1)


def toeplitz_coefficients(w: jax.Array, n: int, bias_base_type: str) -> jax.Array:
    """Stored parameters -> a[h, t] = c_h(t - (n-1)) for t = 0..2n-2 (offsets -(n-1)..n-1)."""
    if bias_base_type == "full":
        centre = (w.shape[-1] - 1) // 2  # index of offset 0
        return w[:, centre - (n - 1): centre + n]
    if bias_base_type == "symmetric":
        return mirror(w[:, :n])
    raise ValueError(f"positional_bias.bias_base_type must be one of {BIAS_BASE_TYPES}, got {bias_base_type!r}")


def toeplitz_product_fft(coefficients: jax.Array, v: jax.Array, axis: int) -> jax.Array:
    """out_i = sum_j c_h(i - j) v_j along ``axis`` of v (length n), heads on axis -2 of v.

    ``coefficients``: (h, 2n-1) as returned by ``toeplitz_coefficients``.
    """
    n = v.shape[axis]
    if n == 0:  # nothing but a CLS token
        return v
    length = fast_fft_length(2 * n - 1)
    spectrum = jnp.fft.rfft(coefficients, n=length, axis=-1)  # (h, L//2+1)
    shape = [1] * v.ndim
    shape[axis], shape[-2] = spectrum.shape[1], spectrum.shape[0]
    spectrum = spectrum.T.reshape(shape)
    product = jnp.fft.rfft(v, n=length, axis=axis) * spectrum
    full = jnp.fft.irfft(product, n=length, axis=axis)
    return jax.lax.slice_in_dim(full, n - 1, 2 * n - 1, axis=axis).astype(v.dtype)


def _split_cls(v, key_mask, has_cls: bool, leak_padding: bool):
    """Compute dtype, CLS removed, padded values zeroed unless leaking."""
    dtype = jnp.promote_types(v.dtype, jnp.float32)
    values = v.astype(dtype)
    if not leak_padding:
        values = jnp.where(key_mask[:, :, None, None], values, 0.0)
    return values[:, 1:] if has_cls else values


def _restore_cls(out, has_cls: bool):
    if has_cls:  # the CLS token gets a zero bias term
        out = jnp.pad(out, [(0, 0), (1, 0)] + [(0, 0)] * (out.ndim - 2))
    return out


def fastrpb_1d(w, v, key_mask, *, bias_base_type: str = "full", has_cls: bool = False,
               leak_padding: bool = False):
    """W_h V_h for every head; v (b, n, h, d), key_mask (b, n); returns v's dtype."""
    values = _split_cls(v, key_mask, has_cls, leak_padding)
    n = values.shape[1]
    coefficients = toeplitz_coefficients(w.astype(values.dtype), n, bias_base_type)
    out = toeplitz_product_fft(coefficients, values, axis=1)
    return _restore_cls(out, has_cls).astype(v.dtype)


def fastrpb_2d(w, v, key_mask, grid_shape, *, bias_base_type: str = "full", has_cls: bool = False,
               leak_padding: bool = False):
    """W2d_h V_h for a row-major (H, W) grid of tokens (after the CLS token, if any)."""
    height, width = grid_shape
    values = _split_cls(v, key_mask, has_cls, leak_padding)
    batch, n, heads, dim = values.shape
    if n != height * width:
        raise ValueError(f"positional_bias fastrpb_2d: {n} tokens (CLS excluded) do not fill the "
                         f"{height}x{width} grid")
    grid = values.reshape(batch, height, width, heads, dim)
    w = w.astype(values.dtype)
    rows = toeplitz_product_fft(toeplitz_coefficients(w, height, bias_base_type), grid.sum(axis=2), axis=1)
    cols = toeplitz_product_fft(toeplitz_coefficients(w, width, bias_base_type), grid.sum(axis=1), axis=1)
    out = (rows[:, :, None] + cols[:, None, :]).reshape(batch, n, heads, dim)
    return _restore_cls(out, has_cls).astype(v.dtype)


class FastRPB(nnx.Module):
    """1-D FFT relative positional bias; see the module docstring.

    Knobs: ``bias_base_type`` (full: 2S-1 values per head | symmetric: S values), ``leak_padding``
    (the authors' unmasked PAD values; off by default), ``init_alpha`` / ``init_beta`` (the authors'
    init scales).
    """

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, bias_base_type: str = "full",
                 leak_padding: bool = False, init_alpha: float = 1e-5, init_beta: float = 1e-6):
        if bias_base_type not in BIAS_BASE_TYPES:
            raise ValueError(f"positional_bias.bias_base_type must be one of {BIAS_BASE_TYPES}, "
                             f"got {bias_base_type!r}")
        self.bias_base_type, self.leak_padding, self.has_cls = bias_base_type, leak_padding, spec.has_cls
        self.size = self.positions(spec)
        w = init_distance_weights(rngs.params(), spec.num_heads, self.size, init_alpha, init_beta)
        self.w = nnx.Param(mirror(w) if bias_base_type == "full" else w)

    def positions(self, spec: AttentionSpec) -> int:
        size = spec.max_length - int(spec.has_cls)
        if size < 1:
            raise ValueError(f"positional_bias fastrpb: no positions to bias (max_length={spec.max_length})")
        return size

    def check_length(self, v):
        n = v.shape[1] - int(self.has_cls)
        if n > self.size:
            raise ValueError(f"positional_bias fastrpb: {n} positions exceed the {self.size} it was built for")

    def __call__(self, v, key_mask):
        self.check_length(v)
        return fastrpb_1d(self.w[...], v, key_mask, bias_base_type=self.bias_base_type,
                          has_cls=self.has_cls, leak_padding=self.leak_padding)


class FastRPB2D(FastRPB):
    """2-D FFT relative positional bias on spec.grid_shape (image-like tasks); see the module docstring."""

    def positions(self, spec: AttentionSpec) -> int:
        if spec.grid_shape is None:
            raise ValueError("positional_bias=fastrpb_2d needs a task with a 2-D grid (task.grid_shape), "
                             "but this task has grid_shape=None; use positional_bias=fastrpb for 1-D tasks")
        self.grid_shape = tuple(int(s) for s in spec.grid_shape)
        return max(self.grid_shape)

    def check_length(self, v):
        pass  # fastrpb_2d checks that the tokens fill the grid

    def __call__(self, v, key_mask):
        return fastrpb_2d(self.w[...], v, key_mask, self.grid_shape, bias_base_type=self.bias_base_type,
                          has_cls=self.has_cls, leak_padding=self.leak_padding)
