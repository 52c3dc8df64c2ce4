"""KL-Transformer: linear attention over learned random-feature kernels (Chowdhury, Wang, Sinha, Hong,
"Learning the Transformer Kernel", TMLR 2022, arXiv 2110.08323).

Math as in the authors' released code (``cs1160701/OnLearningTheKernel``, a fast-transformers fork;
the paper's own notation was not checked). Per (example, head), with x^ = x * d^(-1/4) for queries
and keys (the softmax temperature 1/sqrt(d) split evenly) and m_j = 1 for real keys:

    out_i = sum_j m_j phi(q^_i)^T phi(k^_j) v_j / (sum_j m_j phi(q^_i)^T phi(k^_j) + eps)     (row-normalised)

computed in the linear order phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps): O(n F d) time and
O(F d) extra memory per head for F features, never an n x n matrix. Padded keys are zeroed (their
inputs before the feature map and their features after it); queries are not masked. No attention
dropout (the authors' linear path has none), so ``spec.dropout_rate`` is ignored.

Variants (each its own registered attention; eps_m ~ N(0, I) is fresh noise, shared by all heads):

- GMM-RKS (``kl_gmm_rks``; authors' ``mix-gauss-fourier``). Per head h a learned mean mu_h in R^d and
  matrix A_h in R^{d x d}; S noise samples eps_m give the mirrored frequencies
  w+-_hm = A_h^T eps_m +- mu_h and
      phi(x) = S^(-1/2) [cos(w+ x), sin(w+ x), cos(w- x), sin(w- x)] ++ [s]
  whose expected kernel is 2 cos(mu_h^T D) exp(-1/2 D^T A_h^T A_h D) + s^2 with D = q^ - k^ (the
  appended smoothing constant s adds s^2, not s as the authors' docstring says). Trigonometric
  estimates can be negative, so the denominator is not guaranteed positive (as in the authors' code).
- GMM-PRF (``kl_gmm_prf``; ``mix-gauss-positive``). Per head a mean mu_h and log-variance sigma_h in
  R^d; w_hm = mu_h + exp(sigma_h / 2) * eps_m and positive features
      phi_m(x) = exp(w_hm^T x - ||x||^2 - 1/2 ln S)
  with expected kernel exp(mu^T u + 1/2 u^T diag(e^sigma) u - ||q^||^2 - ||k^||^2), u = q^ + k^; at
  mu = 0, sigma = 0 this is exp(-||q^ - k^||^2 / 2) = exp(q^.k^) exp(-||q^||^2/2 - ||k^||^2/2).
- FastFood-L (``kl_fastfood``; ``fsgb-fastfood``). Learned S, G, B in R^d shared by the heads of a
  layer (B continuous, not +-1), a random permutation Pi redrawn like the noise, and the unnormalised
  Walsh-Hadamard matrix H (Sylvester order, H H = d I; a butterfly, never a d x d matmul):
      V x = d^(-1/2) S * H(G * Pi(H(B * x))),    phi(x) = d^(-1/2) [cos V x, sin V x] ++ [s]
  i.e. one block of d frequencies, 2d + 1 features; head_dim must be a power of 2.
- Generator-RKS (``kl_generator_rks``; ``generative-fourier``). One generator network per layer,
  shared by its heads: g = [Linear -> BatchNorm over the noise samples -> LeakyReLU(0.01)]* ->
  Linear -> tanh maps S noise vectors to frequencies w_m = g(eps_m) in [-1, 1]^d, and
      phi(x) = S^(-1/2) [cos(w x), sin(w x)] ++ [s].
- Generator-PRF (``kl_generator_prf``; ``generative-positive``). The same generator and positive
  features phi_m(x) = exp(w_m^T x - ||x||^2 - 1/2 ln S).

Numerics (deviations from the authors' numerics, not from their math):
- Positive (PRF) features are computed in log space and stabilised: a per-(example, head) constant
  c_k = max over real keys and features of log phi(k^_j) and a per-row constant c_q(i) = max over
  features of log phi(q^_i) are subtracted before exp, and eps is multiplied by the same factor
  exp(-c_q - c_k), so the output equals the unstabilised formula exactly (the authors' code has no
  stabilisation and can overflow). The rescaled eps is clipped to [e sqrt(tiny), max / e] of the
  compute dtype so the division and its gradient stay finite even for a row with no real key (the
  clip only binds where the unstabilised features would under- or overflow anyway).
  ``stabilize=False`` gives the authors' unstabilised computation.
- Everything is computed in at least fp32 (bf16 inputs upcast; fp64 stays fp64); the output has the
  input dtype.

Randomness. The authors redraw the noise (and the FastFood permutation) at every forward call, in
training and in evaluation (quirk E5). Here training draws from a fresh ``self.rng()`` key per call;
evaluation uses a key fixed at construction (``eval_features="fixed"``), so it is deterministic given
the seed. ``eval_features="resample"`` draws a fresh key in evaluation too (the authors' stochastic
evaluation); the harness's eval step carries the RNG state from one eval batch to the next, so
every batch gets a fresh draw, as in the authors' code (each pass starts from the training stream's
current state and leaves it unchanged).
The generator's BatchNorm normalises with the statistics of the current noise batch in training and
with running statistics in evaluation (PyTorch ``BatchNorm1d`` train/eval behaviour; momentum 0.1).
``running_stats: authors`` (generator variants; evaluation only, training outputs are identical):
the authors run the generator twice per training call, once for the queries and once for the keys
on the same noise, so each BatchNorm's running statistics take two momentum-0.1 updates per call,
r <- 0.81 r + 0.19 s, and PyTorch stores the unbiased batch variance (times S / (S - 1), S noise
samples) in ``running_var``. Default ``single``: one update per call, r <- 0.9 r + 0.1 s, with the
biased variance. From the initial statistics (mean 0, var 1) one call leaves a running mean of
0.1 mu against their 0.19 mu (0.47 relative); both converge to the same mean as training goes on,
while the variance stays lower by the factor (S - 1) / S. Evaluation with ``eval_features: fixed``
normalises with these running statistics, so its outputs differ.

Feature counts. The authors size the features from the head dim d with p = pow2cast(d ln d) (the
power of 2 nearest to d ln d, rounding at 1.5x: d = 64 -> 256, 32 -> 128, 16 -> 32, 8 -> 16), clipped
to the sequence length L (CLS included) as in their ``min(max_len, ...)``:
    GMM-RKS        S = min(L, multiplier * p) // 4   (multiplier 4 ListOps, 2 Retrieval; Text: S = d/2)
    GMM-PRF        S = min(L, p)
    FastFood-L     d frequencies (fixed: one block; not clipped)
    Generator-RKS  S = min(L, 2 p) // 2
    Generator-PRF  S = (min(L, p) - 1) // 2         (the authors' n_dims - 1, e.g. 127 for d = 64)
``num_samples`` overrides the rule. The feature scales use the actual S (the authors' GMM-RKS scale
sqrt(4 / n_dims) and Generator-PRF offset 1/2 ln(n_dims) use the nominal count; the difference is a
constant factor that only interacts with eps).
Initialisation as the authors': A xavier-uniform over the (H, d, d) tensor with PyTorch fans
(bound sqrt(6 / (d^2 + H d))), GMM-RKS mu ~ U(+-1/d); sigma xavier-uniform over (H, d) (bound
sqrt(6 / (d + H))), GMM-PRF mu ~ U(+-1/sqrt(d)); S, G, B ~ N(0, 1/d); generator weights
xavier-uniform, biases U(+-1/sqrt(fan_in)) (PyTorch Linear default).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice

EVAL_FEATURES = ("fixed", "resample")


# ----------------------------------------------------------------------------------------------
# Feature counts
# ----------------------------------------------------------------------------------------------

def pow2cast(x: float) -> int:
    """The authors' power-of-2 rounding: down if the bit after the leading one of int(x) is 0, else up."""
    n = int(x)
    if n < 1:
        return 1
    exponent = n.bit_length() - 1
    second_bit = (n >> (exponent - 1)) & 1 if exponent >= 1 else 0
    return 2 ** (math.ceil(math.log2(x)) if second_bit else math.floor(math.log2(x)))


def authors_num_samples(variant: str, head_dim: int, max_length: int, multiplier: int = 4) -> int:
    """Noise samples S per the authors' LRA model files (module docstring), clipped to the length."""
    p = pow2cast(head_dim * math.log(head_dim)) if head_dim > 1 else 1
    if variant == "gmm_rks":
        return max(min(max_length, multiplier * p) // 4, 1)
    if variant == "gmm_prf":
        return max(min(max_length, p), 1)
    if variant == "generator_rks":
        return max(min(max_length, 2 * p) // 2, 1)
    if variant == "generator_prf":
        return max((min(max_length, p) - 1) // 2, 1)
    raise ValueError(f"unknown variant {variant!r}")


# ----------------------------------------------------------------------------------------------
# Pure functions: scaling, feature maps, normalised linear attention
# ----------------------------------------------------------------------------------------------

def compute_dtype(x: jax.Array):
    return jnp.promote_types(x.dtype, jnp.float32)


def scale_inputs(q: jax.Array, k: jax.Array, key_mask: jax.Array):
    """q^ = q d^(-1/4), k^ = k d^(-1/4) in at least fp32; padded keys zeroed (so no inf/NaN can arise)."""
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.25
    q_hat = q.astype(dtype) * scale
    k_hat = jnp.where(key_mask[:, :, None, None], k.astype(dtype) * scale, 0.0)
    return q_hat, k_hat


def trig_features(u: jax.Array, num_samples: int, smoothing: float | None) -> jax.Array:
    """S^(-1/2) [cos u, sin u] ++ [s] along the last axis (RKS features; s appended when not None)."""
    phi = jnp.concatenate([jnp.cos(u), jnp.sin(u)], axis=-1) * num_samples ** -0.5
    if smoothing is None:
        return phi
    return jnp.concatenate([phi, jnp.full((*u.shape[:-1], 1), smoothing, u.dtype)], axis=-1)


def positive_log_features(x: jax.Array, frequencies: jax.Array) -> jax.Array:
    """log phi_m(x) = w_m^T x - ||x||^2 - 1/2 ln S; frequencies (heads, S, d) or (S, d); (b, n, h, S)."""
    if frequencies.ndim == 2:
        projection = jnp.einsum("bnhd,sd->bnhs", x, frequencies)
    else:
        projection = jnp.einsum("bnhd,hsd->bnhs", x, frequencies)
    num_samples = frequencies.shape[-2]
    return projection - jnp.sum(x * x, axis=-1, keepdims=True) - 0.5 * math.log(num_samples)


def gmm_rks_frequencies(noise: jax.Array, mean: jax.Array, matrix: jax.Array):
    """w+- = A_h^T eps_m +- mu_h: noise (S, d), mean (H, d), matrix (H, d, d) -> two (H, S, d)."""
    gauss = jnp.einsum("sr,hrd->hsd", noise, matrix)
    return gauss + mean[:, None, :], gauss - mean[:, None, :]


def gmm_rks_features(x: jax.Array, noise, mean, matrix, smoothing: float) -> jax.Array:
    """GMM-RKS phi(x) for x (b, n, H, d): (b, n, H, 4 S + 1)."""
    plus, minus = gmm_rks_frequencies(noise, mean.astype(x.dtype), matrix.astype(x.dtype))
    u = jnp.einsum("bnhd,hsd->bnhs", x, jnp.concatenate([plus, minus], axis=1))
    return trig_features(u, noise.shape[0], smoothing)


def gmm_prf_frequencies(noise: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """w_hm = mu_h + exp(sigma_h / 2) * eps_m: noise (S, d), mean and log_var (H, d) -> (H, S, d)."""
    return mean[:, None, :] + jnp.exp(log_var / 2)[:, None, :] * noise[None]


def hadamard_transform(x: jax.Array) -> jax.Array:
    """Unnormalised Walsh-Hadamard transform (Sylvester order) along the last axis; length 2^m."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"the Walsh-Hadamard transform needs a power-of-2 length, got {d}")
    lead = x.shape[:-1]
    half = 1
    while half < d:
        pairs = x.reshape(*lead, d // (2 * half), 2, half)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, d)
        half *= 2
    return x


def fastfood_projection(x: jax.Array, S, G, B, permutation) -> jax.Array:
    """V x = d^(-1/2) S * H(G * Pi(H(B * x))) along the last axis; (Pi y)_i = y_{permutation[i]}."""
    d = x.shape[-1]
    S, G, B = (t.astype(x.dtype) for t in (S, G, B))
    y = hadamard_transform(B * x)
    y = jnp.take(y, permutation, axis=-1)
    y = hadamard_transform(G * y)
    return d ** -0.5 * S * y


def fastfood_features(x: jax.Array, S, G, B, permutation, smoothing: float | None) -> jax.Array:
    """FastFood-L phi(x) = d^(-1/2) [cos V x, sin V x] ++ [s]: (b, n, h, 2 d + 1) (2 d if s is None)."""
    return trig_features(fastfood_projection(x, S, G, B, permutation), x.shape[-1], smoothing)


def masked_features(phi_k: jax.Array, key_mask: jax.Array) -> jax.Array:
    return jnp.where(key_mask[:, :, None, None], phi_k, 0.0)


def normalised_linear_attention(phi_q, phi_k, v, key_mask, *, eps: float = 1e-6):
    """phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps) with padded keys' features zeroed."""
    phi_k = masked_features(phi_k, key_mask)
    values = v.astype(phi_q.dtype)
    kv = jnp.einsum("bkhf,bkhe->bhfe", phi_k, values)
    numerator = jnp.einsum("bqhf,bhfe->bqhe", phi_q, kv)
    denominator = jnp.einsum("bqhf,bhf->bqh", phi_q, phi_k.sum(axis=1))
    return numerator / (denominator[..., None] + eps)


def log_feature_offsets(log_q, log_k, key_mask):
    """c_q (b, n, h, 1): per-row max over features; c_k (b, 1, h, 1): max over real keys and features."""
    log_q, log_k = jax.lax.stop_gradient(log_q), jax.lax.stop_gradient(log_k)
    c_q = jnp.max(log_q, axis=-1, keepdims=True)
    real = jnp.where(key_mask[:, :, None, None], log_k, -jnp.inf)
    c_k = jnp.max(real, axis=(1, 3), keepdims=True)
    return c_q, jnp.where(jnp.isfinite(c_k), c_k, 0.0)  # an example with no real key: 0


def positive_feature_attention(log_q, log_k, v, key_mask, *, eps: float = 1e-6, stabilize: bool = True):
    """Normalised linear attention with phi = exp(log features), stabilised exactly (module docstring)."""
    dtype = log_q.dtype
    if stabilize:
        c_q, c_k = log_feature_offsets(log_q, log_k, key_mask)
    else:
        c_q = jnp.zeros(log_q.shape[:-1] + (1,), dtype)
        c_k = jnp.zeros((log_k.shape[0], 1, log_k.shape[2], 1), dtype)
    phi_q = jnp.exp(log_q - c_q)
    phi_k = masked_features(jnp.exp(log_k - c_k), key_mask)
    kv = jnp.einsum("bkhf,bkhe->bhfe", phi_k, v.astype(dtype))
    numerator = jnp.einsum("bqhf,bhfe->bqhe", phi_q, kv)
    denominator = jnp.einsum("bqhf,bhf->bqh", phi_q, phi_k.sum(axis=1))
    info = jnp.finfo(dtype)
    log_eps = jnp.clip(math.log(eps) - (c_q + c_k)[..., 0], 0.5 * math.log(float(info.tiny)) + 1.0,
                       math.log(float(info.max)) - 1.0)
    return numerator / (denominator + jnp.exp(log_eps))[..., None]


# ----------------------------------------------------------------------------------------------
# Expected kernels: what the random features estimate (O(n^2); targets of lra/bench/approximation.py)
# ----------------------------------------------------------------------------------------------

def kernel_row_normalised(log_kernel: jax.Array, v: jax.Array, key_mask: jax.Array, eps: float) -> jax.Array:
    """sum_j m_j K_ij v_j / (sum_j m_j K_ij + eps) from log K (b, h, q, k), shifted per row exactly."""
    log_kernel = jnp.where(key_mask[:, None, None, :], log_kernel, -jnp.inf)
    shift = jnp.max(log_kernel, axis=-1, keepdims=True)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    weights = jnp.exp(log_kernel - shift)
    numerator = jnp.einsum("bhqk,bkhe->bqhe", weights, v.astype(weights.dtype))
    denominator = weights.sum(-1) + eps * jnp.exp(-shift[..., 0])  # (b, h, q)
    return numerator / jnp.transpose(denominator, (0, 2, 1))[..., None]


def gmm_rks_expected_attention(q, k, v, key_mask, mean, matrix, smoothing: float, eps: float = 1e-6):
    """Row-normalised attention with the GMM-RKS expected kernel (the module's features averaged
    over the noise): K = 2 cos(mu_h^T D) exp(-|A_h D|^2 / 2) + s^2, D = q^ - k^, (A D)_r = sum_d A_rd D_d.
    May be negative, like its estimate. mean (H, d), matrix (H, d, d)."""
    q_hat, k_hat = scale_inputs(q, k, key_mask)
    mean, matrix = mean.astype(q_hat.dtype), matrix.astype(q_hat.dtype)
    aq, ak = (jnp.einsum("bnhd,hrd->bnhr", x, matrix) for x in (q_hat, k_hat))
    squared = (jnp.sum(aq * aq, -1).transpose(0, 2, 1)[..., :, None] + jnp.sum(ak * ak, -1).transpose(0, 2, 1)[..., None, :]
               - 2 * jnp.einsum("bqhr,bkhr->bhqk", aq, ak))
    phase = (jnp.einsum("bnhd,hd->bhn", q_hat, mean)[..., :, None] - jnp.einsum("bnhd,hd->bhn", k_hat, mean)[..., None, :])
    kernel = 2 * jnp.cos(phase) * jnp.exp(-0.5 * jnp.maximum(squared, 0.0)) + smoothing ** 2
    kernel = jnp.where(key_mask[:, None, None, :], kernel, 0.0)
    numerator = jnp.einsum("bhqk,bkhe->bqhe", kernel, v.astype(kernel.dtype))
    return numerator / (kernel.sum(-1).transpose(0, 2, 1)[..., None] + eps)


def gmm_prf_expected_attention(q, k, v, key_mask, mean, log_var, eps: float = 1e-6):
    """Row-normalised attention with the GMM-PRF expected kernel
    K = exp(mu_h^T u + u^T diag(e^sigma_h) u / 2 - |q^|^2 - |k^|^2), u = q^ + k^. mean, log_var (H, d)."""
    q_hat, k_hat = scale_inputs(q, k, key_mask)
    mean, variance = mean.astype(q_hat.dtype), jnp.exp(log_var.astype(q_hat.dtype))
    def per_token(x):  # mu.x + x^T Sigma x / 2 - |x|^2: (b, h, n)
        return (jnp.einsum("bnhd,hd->bhn", x, mean) + 0.5 * jnp.einsum("bnhd,hd->bhn", x * x, variance)
                - jnp.sum(x * x, -1).transpose(0, 2, 1))
    cross = jnp.einsum("bqhd,hd,bkhd->bhqk", q_hat, variance, k_hat)
    log_kernel = per_token(q_hat)[..., :, None] + per_token(k_hat)[..., None, :] + cross
    return kernel_row_normalised(log_kernel, v, key_mask, eps)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------

class EvalKey(nnx.Variable):
    """The PRNG key fixed at construction that evaluation draws its features from."""


def xavier_uniform_torch(key, shape, dtype=jnp.float32):
    """PyTorch xavier_uniform_: fan_in = shape[1] * prod(shape[2:]), fan_out = shape[0] * prod(shape[2:])."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def uniform_init(bound: float):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class _LearnedKernelAttention(nnx.Module):
    """Shared skeleton: scaling, draws (fresh in training, fixed key in evaluation), normalisation."""

    variant = ""
    positive = False  # log-space features (PRF) instead of trigonometric ones (RKS)

    def _init_common(self, spec: AttentionSpec, rngs: nnx.Rngs, eps: float, eval_features: str,
                     stabilize: bool = True):
        require_choice("attention.eval_features", eval_features, EVAL_FEATURES)
        if not eps > 0:
            raise ValueError(f"attention.eps must be > 0, got {eps}")
        self.num_heads, self.head_dim = spec.num_heads, spec.head_dim
        self.eps, self.eval_features, self.stabilize = float(eps), eval_features, bool(stabilize)
        self.rng = rngs.attention.fork()
        self.eval_key = EvalKey(self.rng())  # fixed at construction: deterministic evaluation

    def feature_key(self, deterministic: bool) -> jax.Array:
        if deterministic and self.eval_features == "fixed":
            return self.eval_key[...]
        return self.rng()

    # Subclasses: draw(key, dtype) -> dict of random arrays; features(x_hat, draw, deterministic).
    def draw(self, key: jax.Array, dtype) -> dict:
        raise NotImplementedError

    def features(self, x_hat: jax.Array, draw: dict, *, deterministic: bool) -> jax.Array:
        raise NotImplementedError

    def attend(self, q, k, v, key_mask, draw: dict, *, deterministic: bool) -> jax.Array:
        """The attention for a given draw (used by __call__ and by tests that fix the draw)."""
        q_hat, k_hat = scale_inputs(q, k, key_mask)
        phi_q = self.features(q_hat, draw, deterministic=deterministic)
        phi_k = self.features(k_hat, draw, deterministic=deterministic)
        if self.positive:
            out = positive_feature_attention(phi_q, phi_k, v, key_mask, eps=self.eps, stabilize=self.stabilize)
        else:
            out = normalised_linear_attention(phi_q, phi_k, v, key_mask, eps=self.eps)
        return out.astype(q.dtype)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        draw = self.draw(self.feature_key(deterministic), compute_dtype(q))
        return self.attend(q, k, v, key_mask, draw, deterministic=deterministic)


class GMMRKSAttention(_LearnedKernelAttention):
    """GMM-RKS: per-head learned Gaussian spectral density (mu_h, A_h), mirrored +-mu, cos/sin features."""

    variant = "gmm_rks"

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, num_samples: int | None = None,
                 feature_multiplier: int = 4, smoothing: float = 1.0, eps: float = 1e-6,
                 eval_features: str = "fixed"):
        self._init_common(spec, rngs, eps, eval_features)
        h, d = spec.num_heads, spec.head_dim
        self.num_samples = int(num_samples or authors_num_samples("gmm_rks", d, spec.max_length, feature_multiplier))
        self.smoothing = float(smoothing)
        self.matrix = nnx.Param(xavier_uniform_torch(rngs.params(), (h, d, d)))
        self.mean = nnx.Param(uniform_init(1.0 / d)(rngs.params(), (h, d)))  # 1/sqrt(fan_in), fan_in = d^2

    def draw(self, key, dtype):
        return {"noise": jax.random.normal(key, (self.num_samples, self.head_dim), dtype)}

    def features(self, x_hat, draw, *, deterministic):
        return gmm_rks_features(x_hat, draw["noise"], self.mean[...], self.matrix[...], self.smoothing)


class GMMPRFAttention(_LearnedKernelAttention):
    """GMM-PRF: per-head learned mean and diagonal log-variance, positive exponential features."""

    variant = "gmm_prf"
    positive = True

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, num_samples: int | None = None,
                 eps: float = 1e-6, stabilize: bool = True, eval_features: str = "fixed"):
        self._init_common(spec, rngs, eps, eval_features, stabilize)
        h, d = spec.num_heads, spec.head_dim
        self.num_samples = int(num_samples or authors_num_samples("gmm_prf", d, spec.max_length))
        self.log_var = nnx.Param(xavier_uniform_torch(rngs.params(), (h, d)))
        self.mean = nnx.Param(uniform_init(d ** -0.5)(rngs.params(), (h, d)))

    def draw(self, key, dtype):
        return {"noise": jax.random.normal(key, (self.num_samples, self.head_dim), dtype)}

    def frequencies(self, draw):
        noise = draw["noise"]
        return gmm_prf_frequencies(noise, self.mean[...].astype(noise.dtype), self.log_var[...].astype(noise.dtype))

    def features(self, x_hat, draw, *, deterministic):
        return positive_log_features(x_hat, self.frequencies(draw))


class FastFoodAttention(_LearnedKernelAttention):
    """FastFood-L: learned S, G, B (shared by the heads of a layer), random permutation, 2d + 1 features."""

    variant = "fastfood"

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, smoothing: float = 1.0, eps: float = 1e-6,
                 eval_features: str = "fixed"):
        d = spec.head_dim
        if d < 1 or d & (d - 1):
            raise ValueError(
                f"kl_fastfood needs a power-of-2 head dim for its Walsh-Hadamard transform, got head_dim={d} "
                f"(head_dim = model.qkv_dim / model.num_heads = {d * spec.num_heads} / {spec.num_heads}); "
                "change model.qkv_dim or model.num_heads")
        self._init_common(spec, rngs, eps, eval_features)
        self.smoothing = float(smoothing)
        init = nnx.initializers.normal(d ** -0.5)
        self.S = nnx.Param(init(rngs.params(), (d,)))
        self.G = nnx.Param(init(rngs.params(), (d,)))
        self.B = nnx.Param(init(rngs.params(), (d,)))

    def draw(self, key, dtype):
        return {"permutation": jax.random.permutation(key, self.head_dim)}

    def features(self, x_hat, draw, *, deterministic):
        return fastfood_features(x_hat, self.S[...], self.G[...], self.B[...], draw["permutation"], self.smoothing)


RUNNING_STATS = ("single", "authors")


class AuthorsBatchNorm(nnx.Module):
    """PyTorch ``BatchNorm1d`` over the noise samples as the authors' generator uses it: batch
    statistics (biased variance) normalise in training; the running statistics take ``updates``
    momentum-0.1 updates per call with the unbiased variance; evaluation uses them."""

    def __init__(self, features: int, *, updates: int = 2, epsilon: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((features,)))
        self.bias = nnx.Param(jnp.zeros((features,)))
        self.mean = nnx.BatchStat(jnp.zeros((features,)))
        self.var = nnx.BatchStat(jnp.ones((features,)))
        self.updates, self.epsilon = int(updates), float(epsilon)

    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            samples = x.shape[0]
            mean = x.mean(axis=0)
            var = ((x - mean) ** 2).mean(axis=0)
            unbiased = var * samples / max(samples - 1, 1)
            running_mean, running_var = self.mean[...], self.var[...]
            for _ in range(self.updates):
                running_mean = 0.9 * running_mean + 0.1 * jax.lax.stop_gradient(mean)
                running_var = 0.9 * running_var + 0.1 * jax.lax.stop_gradient(unbiased)
            self.mean[...], self.var[...] = running_mean, running_var
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


class Generator(nnx.Module):
    """[Linear -> BatchNorm over samples -> LeakyReLU(0.01)] per hidden width -> Linear -> tanh."""

    def __init__(self, widths: list[int], out_dim: int, *, rngs: nnx.Rngs, running_stats: str = "single"):
        require_choice("attention.running_stats", running_stats, RUNNING_STATS)
        self.hidden = nnx.List()
        self.norms = nnx.List()
        for fan_in, fan_out in zip(widths, widths[1:]):
            self.hidden.append(self._linear(fan_in, fan_out, rngs))
            if running_stats == "authors":  # their generator runs twice per call (queries, keys)
                self.norms.append(AuthorsBatchNorm(fan_out, updates=2))
            else:
                self.norms.append(nnx.BatchNorm(fan_out, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                                                rngs=rngs))
        self.output = self._linear(widths[-1], out_dim, rngs)

    @staticmethod
    def _linear(fan_in, fan_out, rngs):
        return nnx.Linear(fan_in, fan_out, kernel_init=xavier_uniform_torch_kernel,
                          bias_init=uniform_init(fan_in ** -0.5), rngs=rngs)

    def __call__(self, noise: jax.Array, *, use_running_average: bool) -> jax.Array:
        x = noise
        for linear, norm in zip(self.hidden, self.norms):
            x = jax.nn.leaky_relu(norm(linear(x), use_running_average=use_running_average), 0.01)
        return jnp.tanh(self.output(x))


def xavier_uniform_torch_kernel(key, shape, dtype=jnp.float32):
    """Xavier-uniform for a Flax (in, out) kernel: bound sqrt(6 / (in + out)), as PyTorch's (out, in)."""
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class _GeneratorAttention(_LearnedKernelAttention):
    def _init_generator(self, spec, rngs, generator_widths, running_stats="single"):
        widths = [max(int(round(w * spec.head_dim)), 1) for w in generator_widths]
        if not widths:
            raise ValueError("attention.generator_widths needs at least the noise width")
        self.noise_dim = widths[0]
        self.generator = Generator(widths, spec.head_dim, rngs=rngs, running_stats=running_stats)

    def draw(self, key, dtype):
        return {"noise": jax.random.normal(key, (self.num_samples, self.noise_dim), dtype)}

    def frequencies(self, draw, *, deterministic: bool) -> jax.Array:
        """w_m = g(eps_m): (S, d), each coordinate in [-1, 1]; shared by all heads of the layer."""
        return self.generator(draw["noise"], use_running_average=deterministic).astype(draw["noise"].dtype)

    def attend(self, q, k, v, key_mask, draw, *, deterministic):
        # the generator runs once per call (one BatchNorm update); q and k share its frequencies.
        # A draw that already holds "frequencies" (tests fixing the draw) is used as given.
        if "frequencies" not in draw:
            draw = {**draw, "frequencies": self.frequencies(draw, deterministic=deterministic)}
        return super().attend(q, k, v, key_mask, draw, deterministic=deterministic)


class GeneratorRKSAttention(_GeneratorAttention):
    """Generator-RKS: frequencies from a per-layer generator network, cos/sin features + smoothing."""

    variant = "generator_rks"

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, num_samples: int | None = None,
                 generator_widths: tuple[float, ...] = (1, 4), smoothing: float = 1.0, eps: float = 1e-6,
                 eval_features: str = "fixed", running_stats: str = "single"):
        self._init_common(spec, rngs, eps, eval_features)
        self.num_samples = int(num_samples or authors_num_samples("generator_rks", spec.head_dim, spec.max_length))
        self.smoothing = float(smoothing)
        self._init_generator(spec, rngs, generator_widths, running_stats)

    def features(self, x_hat, draw, *, deterministic):
        u = jnp.einsum("bnhd,sd->bnhs", x_hat, draw["frequencies"].astype(x_hat.dtype))
        return trig_features(u, self.num_samples, self.smoothing)


class GeneratorPRFAttention(_GeneratorAttention):
    """Generator-PRF: frequencies from a per-layer generator network, positive exponential features."""

    variant = "generator_prf"
    positive = True

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, num_samples: int | None = None,
                 generator_widths: tuple[float, ...] = (1, 4), eps: float = 1e-6, stabilize: bool = True,
                 eval_features: str = "fixed", running_stats: str = "single"):
        self._init_common(spec, rngs, eps, eval_features, stabilize)
        self.num_samples = int(num_samples or authors_num_samples("generator_prf", spec.head_dim, spec.max_length))
        self._init_generator(spec, rngs, generator_widths, running_stats)

    def features(self, x_hat, draw, *, deterministic):
        return positive_log_features(x_hat, draw["frequencies"].astype(x_hat.dtype))
