"""Nyströmformer attention (Xiong et al., "Nyströmformer: A Nyström-Based Algorithm for
Approximating Self-Attention", AAAI 2021).

Per (example, head), with x̃ = x · d^(-1/4) so that q̃ᵀk̃ = qᵀk / sqrt(d), the paper's
segment-means landmarks and Nyström approximation of softmax(Q Kᵀ / sqrt(d)) V are

    Q_L, K_L = segment means of Q̃, K̃ over m landmark segments
    F1 = softmax(Q̃ K_Lᵀ)          n x m   (softmax over landmarks)
    A  = softmax(Q_L K_Lᵀ)         m x m
    F3 = softmax(Q_L K̃ᵀ + mask)    m x n   (padded keys removed)
    out = F1 · Z · (F3 · V)  +  conv(V ⊙ mask)

where Z ≈ A⁺ is the iterative Moore–Penrose pseudo-inverse of ``attention/pseudo_inverse.py``
(Eq. 16: 6 Newton–Schulz-type steps; per-matrix initialisation by default) and ``conv`` is the
optional depthwise skip of the authors' code: one length-k kernel per head, shared by the head's
d channels, zero padding k//2, no bias, applied along the sequence to V with padded rows zeroed.
The n x n matrix is never formed: time O(n m d + m³), extra memory O(n m) per head.

Landmark segments (the default, ``segment_means: real_tokens``). The authors reshape the padded
length n into m contiguous segments of n/m positions (n must be divisible by m) and average with
the padded (zeroed) rows included, so outputs at real tokens depend on how much padding follows.
Here the segments are formed from each example's REAL tokens only, for any n:

    real token j has rank r_j = (number of real tokens before j);  with L real tokens it goes to
    segment s_j = floor(r_j · m / L).

Segments are thus contiguous in real-token order and hold floor(L/m) or ceil(L/m) tokens each
(exactly L/m, the authors' segments, when there is no padding and m divides L). Landmarks are the
plain means over the tokens of a segment, so padding never changes a real output.

Exact fallback (as the authors do when m equals the sequence length). An example with L <= m real
tokens is given exact softmax attention. With L <= m every real token is its own segment (s_j is
injective), so F1 is exactly the softmax over real keys and the exact output is F1 · V_L, computed
without an n x n tensor; segments left empty are masked out of the softmaxes. If m >= n (the whole
batch is covered, e.g. the registered 64 landmarks on sequences of 48 tokens), the number of
landmarks is clipped to n and exact softmax attention is used directly. The conv skip is added in
every case, as in the authors' code. A fully padded example (L = 0) has no landmark and gets a
finite, meaningless output at its (ignored) positions.

Empty segments (only when L < m, i.e. in examples that take the exact fallback, or in tests that
switch it off): A is completed with identity rows and columns for empty landmarks, so Z is
block-diagonal and equals the iterative pseudo-inverse of the real-landmark block (the Newton–Schulz
products keep the zero blocks exactly zero; the per-matrix initial scale is unchanged since the
identity rows and columns sum to 1, A's rows sum to 1 and its largest column sum is >= 1), while F1
gives those landmarks zero weight.

Quirk flags (off by default; results can depend on them):
  - ``pinv_init: global``: the authors' pinv initial scale is a max over the whole batch and all
    heads (Nyström issue #3; quirk A1), which makes an example's output depend on its batch mates.
    (Their Z_0 = Aᵀ / max column sum equals the shared Aᵀ / (||A||_1 ||A||_inf) since rows sum to 1.)
  - ``segment_means: with_padding``: the authors' landmarks: segments of the padded length (position
    j of n goes to segment floor(j·m/n), i.e. the reshape into n/m positions when m divides n; the
    same rule otherwise), means over all positions with padded rows zeroed, no landmark masked;
    exact softmax only if n <= m. Outputs at real tokens then depend on the amount of padding.

Attention-weight dropout (``spec.dropout_rate``) is not applied: the authors' Nyström module has
none (their dropout sits in the softmax module only), and there are no n x n weights to drop.
Position 0 (a CLS token when ``spec.has_cls``) is an ordinary token for the segments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice
from attention.pseudo_inverse import PINV_INITS, iterative_pinv
from attention.softmax import MASKED_LOGIT, softmax_attention_weights

SEGMENT_MEANS = ("real_tokens", "with_padding")


def segment_assignment(segment_mask: jax.Array, num_landmarks: int) -> jax.Array:
    """One-hot (batch, n, m) matrix S: S[b, j, l] = 1 iff token j is in landmark segment l.

    Tokens with ``segment_mask`` False belong to no segment. The L tokens with ``segment_mask`` True
    are split in order: the one of rank r goes to segment floor(r · m / L).
    """
    rank = jnp.cumsum(segment_mask.astype(jnp.int32), axis=-1) - 1
    count = segment_mask.sum(axis=-1, keepdims=True).astype(jnp.int32)
    segment = (rank * num_landmarks) // jnp.maximum(count, 1)
    one_hot = segment[..., None] == jnp.arange(num_landmarks)
    return one_hot & segment_mask[..., None]


def segment_means_of(x: jax.Array, key_mask: jax.Array, num_landmarks: int,
                     segment_means: str = "real_tokens") -> tuple[jax.Array, jax.Array]:
    """Means of x (batch, n, heads, e) over the landmark segments -> ((batch, heads, m, e), non-empty (batch, m)).

    ``real_tokens``: the segments of ``segment_assignment`` over the real tokens (a one-hot product,
    O(n m e)). ``with_padding``: position j goes to segment floor(j m / n), the same for every example;
    when m divides n that is n/m consecutive positions per segment, summed by a reshape in O(n e).
    """
    batch, n, heads, width = x.shape
    m = num_landmarks
    if segment_means == "with_padding" and n % m == 0:
        sums = x.reshape(batch, m, n // m, heads, width).sum(axis=2)     # (b, m, h, e)
        return jnp.swapaxes(sums, 1, 2) / (n // m), jnp.ones((batch, m), bool)
    segment_mask = key_mask if segment_means == "real_tokens" else jnp.ones_like(key_mask)
    assign = segment_assignment(segment_mask, m).astype(x.dtype)          # (b, n, m)
    counts = assign.sum(axis=1)                                           # (b, m)
    sums = jnp.einsum("bnm,bnhe->bhme", assign, x)
    return sums / jnp.maximum(counts, 1)[:, None, :, None], counts > 0


def _masked_softmax(logits: jax.Array, keep: jax.Array) -> jax.Array:
    return jax.nn.softmax(jnp.where(keep, logits, MASKED_LOGIT), axis=-1)


def depthwise_conv(v: jax.Array, key_mask: jax.Array, kernel: jax.Array) -> jax.Array:
    """Per-head 1-D cross-correlation along the sequence of V ⊙ mask; kernel (heads, k), k odd.

    out[b, i, h, :] = sum_t kernel[h, t] · (m v)[b, i + t - k//2, h, :], zero outside [0, n).

    Computed as k shifted multiply-adds (one fused pass; XLA's grouped convolution with one group per
    channel is many times slower on CPU), with a hand-written backward: the input's gradient is the
    same shift-and-add with the kernel reversed, the kernel's gradient one ungrouped convolution per head.
    """
    if kernel.shape[-1] % 2 == 0:
        raise ValueError(f"depthwise_conv needs an odd kernel size, got {kernel.shape[-1]}")
    return _shift_conv(v * key_mask[:, :, None, None].astype(v.dtype), kernel.astype(v.dtype))


def _shifted_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """sum_t kernel[h, t] · x[b, i + t - k//2, h, :] with zeros outside the sequence."""
    n, size = x.shape[1], kernel.shape[-1]
    padded = jnp.pad(x, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
    out = kernel[:, 0, None] * padded[:, :n]
    for t in range(1, size):
        out = out + kernel[:, t, None] * padded[:, t:t + n]
    return out


@jax.custom_vjp
def _shift_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _shifted_sum(x, kernel)


def _shift_conv_forward(x, kernel):
    return _shifted_sum(x, kernel), (x, kernel)


def _shift_conv_backward(residuals, grad):
    x, kernel = residuals
    batch, n, heads, dim = x.shape
    size = kernel.shape[-1]
    grad_x = _shifted_sum(grad, kernel[:, ::-1])  # out[i] uses x[i + t - c]: x[j] feeds out[j - t + c]
    # grad_kernel[h, t] = sum_{b, i, d} grad[b, i, h, d] · x[b, i + t - c, h, d]: per head, a correlation of
    # the padded x with grad over the (b, d) channels, k outputs.
    padded = jnp.pad(x, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
    lhs = padded.transpose(2, 1, 0, 3).reshape(heads, 1, n + size - 1, batch * dim)   # per head: N=1, W, C
    rhs = grad.transpose(2, 1, 0, 3).reshape(heads, n, batch * dim, 1)               # per head: W, I, O=1
    correlate = lambda l, r: jax.lax.conv_general_dilated(
        l, r, window_strides=(1,), padding="VALID", dimension_numbers=("NWC", "WIO", "NWC"),
        precision=jax.lax.Precision.HIGHEST)
    grad_kernel = jax.vmap(correlate)(lhs, rhs).reshape(heads, size)
    return grad_x, grad_kernel


_shift_conv.defvjp(_shift_conv_forward, _shift_conv_backward)


def nystrom_attention(q, k, v, key_mask, *, num_landmarks: int = 64, pinv_iterations: int = 6,
                      pinv_init: str = "per_matrix", segment_means: str = "real_tokens",
                      exact_fallback: bool = True):
    """Eq. 13 without the conv skip; see the module docstring. Computed in at least fp32.

    ``exact_fallback=False`` (for tests) always runs the Nyström formula, even when m >= L.
    """
    require_choice("attention.segment_means", segment_means, SEGMENT_MEANS)
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    batch, n, heads, dim = q.shape
    m = min(num_landmarks, n)
    key_mask = key_mask.astype(bool)

    if exact_fallback and m == n:  # every example has L <= n <= num_landmarks real tokens
        weights = softmax_attention_weights(q.astype(dtype), k.astype(dtype), key_mask)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(dtype)).astype(q.dtype)

    scale = dim ** -0.25
    real = key_mask[:, :, None, None]
    # Padded rows zeroed, as in the authors' code: with real-token segments they take part in no
    # mean and no softmax; with ``with_padding`` these zeros are averaged into the landmarks.
    q_t = jnp.where(real, q.astype(dtype) * scale, 0)
    k_t = jnp.where(real, k.astype(dtype) * scale, 0)
    v_t = jnp.where(real, v.astype(dtype), 0)

    # Landmarks of Q, K (and V for the exact fallback) in one pass over the tokens.
    fallback = exact_fallback and segment_means == "real_tokens"
    stacked = jnp.concatenate([q_t, k_t, v_t] if fallback else [q_t, k_t], axis=-1)  # (b, n, h, 2d | 3d)
    means, valid = segment_means_of(stacked, key_mask, m, segment_means)  # (b, h, m, .), (b, m)
    q_l, k_l = means[..., :dim], means[..., dim:2 * dim]                 # (b, h, m, d)

    keep_landmark = valid[:, None, None, :]
    f1 = _masked_softmax(jnp.einsum("bnhd,bhmd->bhnm", q_t, k_l), keep_landmark)
    a = _masked_softmax(jnp.einsum("bhld,bhmd->bhlm", q_l, k_l), keep_landmark)
    a = jnp.where(valid[:, None, :, None], a, jnp.eye(m, dtype=dtype))  # identity for empty landmarks
    f3 = _masked_softmax(jnp.einsum("bhmd,bnhd->bhmn", q_l, k_t), key_mask[:, None, None, :])

    z = iterative_pinv(a, pinv_iterations, pinv_init)
    f3v = jnp.einsum("bhmn,bnhd->bhmd", f3, v_t)
    landmark_values = z @ f3v                                            # (b, h, m, d)
    if fallback:
        # L <= m: one real token per non-empty segment, so F1 · V_L is exact softmax attention. Both
        # outputs are F1 times an (m, d) matrix: pick the matrix per example, one product with F1.
        covered = key_mask.sum(axis=-1) <= m
        landmark_values = jnp.where(covered[:, None, None, None], means[..., 2 * dim:], landmark_values)
    return jnp.einsum("bhnm,bhmd->bnhd", f1, landmark_values).astype(q.dtype)


class NystromAttention(nnx.Module):
    """Nyströmformer attention; see the module docstring for the math, segments and quirk flags.

    Knobs: ``num_landmarks`` (m), ``pinv_iterations`` and ``pinv_init`` (``per_matrix`` | ``global``,
    quirk A1), ``conv_kernel_size`` (odd int or None for no conv skip), ``segment_means``
    (``real_tokens`` | ``with_padding``, the authors' pad-including means).
    """

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, num_landmarks: int = 64,
                 pinv_iterations: int = 6, pinv_init: str = "per_matrix",
                 conv_kernel_size: int | None = 35, segment_means: str = "real_tokens"):
        if num_landmarks < 1:
            raise ValueError(f"attention.num_landmarks must be >= 1, got {num_landmarks}")
        require_choice("attention.pinv_init", pinv_init, PINV_INITS)
        require_choice("attention.segment_means", segment_means, SEGMENT_MEANS)
        if conv_kernel_size is not None and (conv_kernel_size < 1 or conv_kernel_size % 2 == 0):
            raise ValueError(f"attention.conv_kernel_size must be a positive odd int or null, got {conv_kernel_size}")
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.pinv_init = pinv_init
        self.segment_means = segment_means
        self.conv_kernel_size = conv_kernel_size
        if conv_kernel_size is not None:
            # PyTorch's Conv2d default (kaiming_uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
            # fan_in = k for a depthwise (k, 1) kernel, as in the authors' code.
            bound = conv_kernel_size ** -0.5
            self.conv_kernel = nnx.Param(jax.random.uniform(
                rngs.params(), (spec.num_heads, conv_kernel_size), jnp.float32, -bound, bound))
        else:
            self.conv_kernel = None

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        del deterministic  # no randomness, no attention dropout (see the module docstring)
        dtype = jnp.promote_types(q.dtype, jnp.float32)
        out = nystrom_attention(q, k, v, key_mask, num_landmarks=self.num_landmarks,
                                pinv_iterations=self.pinv_iterations, pinv_init=self.pinv_init,
                                segment_means=self.segment_means).astype(dtype)
        if self.conv_kernel is not None:
            out = out + depthwise_conv(v.astype(dtype), key_mask, self.conv_kernel[...])
        return out.astype(q.dtype)
