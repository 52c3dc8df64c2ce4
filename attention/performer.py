"""Performer attention, FAVOR+ (Choromanski et al., "Rethinking Attention with Performers", ICLR 2021).

Per (example, head), with x̃ = x · d^(-1/4) for x in {q, k} (applied exactly once), so that
q̃ᵀk̃ = qᵀk / sqrt(d), and W ∈ R^{m x d} with rows w_1..w_m:

    phi(x) = m^(-1/2) · exp(W x̃ − ‖x̃‖²/2)        positive random features     (Sec. 2.3, Lemma 1)
    E_W[phi(q)ᵀ phi(k)] = exp(q̃ᵀk̃) = exp(qᵀk / sqrt(d))       when every w_f ~ N(0, I_d)
    out_i = phi(q_i)ᵀ (Σ_j m_j phi(k_j) v_jᵀ) / phi(q_i)ᵀ (Σ_j m_j phi(k_j))     (Sec. 2.2, Fig. 1)

computed right to left (S = phi(K)ᵀV is m x d_v, z = phi(K)ᵀ1): time O(n m d), extra memory
O(n m) per head for the features; the n x n matrix is never formed. Padded keys (m_j = 0) have
their features set to exactly zero (the official LRA Performer ignores the mask, quirk A6).

Orthogonal random features (Sec. 2.4). W stacks ceil(m/d) independent d x d blocks with orthonormal
rows, from the QR factorisation of Gaussian blocks; the first m rows are kept. Each block's Q factor is
sign-corrected with sign(diag R) (Mezzadri 2007) so that it is Haar distributed: without it every
block's i-th row has a negative i-th coordinate (the authors' Google JAX code and the lucidrains
code used by the PyTorch LRA harnesses skip it; ``legacy_qr_signs: true`` reproduces that). Measured
effect on the estimate of exp(x.x), mean over 4,000 blocks with m = d: at d = 8, |x| = 0.5, -8.9%
along e_1 and -3.0% along a random direction; at d = 32, -2.6% / +3.7% (|x| = 0.5) and -3.7% /
-7.6% (|x| = 1); the corrected draw stays within 1% in all six cases. The bias depends on the
direction of x, so it is not a constant that cancels in the normalisation.

The QR is ``householder_qr``: Householder reflections in plain ``jax.numpy`` with LAPACK's conventions
(R_jj = -sign(alpha_j) ||x_j||, no reflection of the last column), so Q and R are those of
``jnp.linalg.qr`` up to float rounding and every draw is the same for the same key (tested against
LAPACK in float64). ``jnp.linalg.qr`` is not used: on CPU it is a LAPACK custom call that splits its
batch of blocks over XLA's intra-op thread pool and blocks until that work is done; when as many QRs
as the pool has threads run at once (one per layer in a training step that redraws), each waits for
work that no free thread is left to run, and the step hangs forever at 0 % CPU (seen with jaxlib
0.10 on 2 cores, Text-sized encoder, forward+backward at length 1024; ``--xla_cpu_multi_thread_eigen``
does not change it). The Householder loop costs d small steps per draw (about 1 ms for 4 blocks of
64 x 64 on CPU), a fraction of a percent of a training step. Row norms: ``chi`` (the authors' scaling 0: norms of
independent N(0, I_d) vectors, so each row is marginally N(0, I_d) and the estimate is unbiased) or
``sqrt_d`` (scaling 1). ``orthogonal: false`` draws i.i.d. Gaussian rows instead.

Numerical stabilisation (outputs are unchanged when ``feature_eps`` is 0):
  - queries: the exponent is offset by its max over features, per (example, position, head);
  - keys: offset by the max of the full exponent w_f·k̃_j − ‖k̃_j‖²/2 over the real keys j and all
    features f, per (example, head), so the largest key feature is exactly m^(-1/2). Any constant
    shared by all keys of an (example, head) cancels in the ratio; the offsets are stop-gradient'd.
    (The authors subtract the max of W k̃ only, which can underflow every feature of long keys.)
  - ``feature_eps`` (1e-6, the Google JAX ``numerical_stabilizer``) is added to every real feature
    before the 1/sqrt(m) factor, which keeps the denominator positive (>= eps² · #real keys); an
    example with no real key gets output 0 (numerator and denominator are both 0).
  - the exponent W x̃ is computed at ``Precision.HIGHEST`` (no TF32: its error is amplified by exp);
    all sums run in at least fp32 (bf16 inputs are upcast, fp64 stays fp64).

Random features and their redraw policy (quirk A4). One W per layer is shared by all heads and
examples (as in the authors' code). Evaluation always uses a draw fixed at construction, so it is
deterministic given the seed. Training uses, per ``redraw``:
  - ``never``: that same fixed draw (the PyTorch LRA harnesses: W drawn at init, never redrawn);
  - ``every_call``: a fresh draw from ``rngs.attention`` at every training call (the authors' Google
    JAX ``make_fast_softmax_attention``, redraw_features=True);
  - ``every_k_steps``: draw number floor(c / k) from ``fold_in(base_key, c // k)``, where c counts this
    module's training calls (a ``TrainingCalls`` variable in the model state, advanced by 1 per
    training call; one call per layer per train step) and k = ``redraw_interval`` (lucidrains'
    Performer wrapper: k = 1000).

Quirk flags (off by default; results can depend on them):
  - ``double_scale``: the PyTorch LRA harnesses (Nyström, Skyformer) divide q and k by d^(1/4) before
    calling a kernel that scales by d^(-1/4) again, so the estimated logits are qᵀk / d (quirk A3).
  - ``key_offset: batch``: their key offset is the max of W k̃ over the whole tensor (every example,
    head, key and feature; here over real keys), so through ``feature_eps`` and fp32 underflow an
    example's output depends on its batch mates (quirk A5).
  - ``legacy_qr_signs``: no sign correction of the QR factors (see above).
  - ``query_offset: projection``: the query stabiliser is the row max of W q~ only, so
    exp(-|q~|^2/2) stays inside the feature next to eps (the Google JAX ``softmax_kernel_transformation``
    and the lucidrains copy of it). With eps > 0 this is not a constant shift: for a large-norm query
    every exp term falls far below eps, phi(q) tends to eps (1, ..., 1), and the output loses its
    dependence on the query (all such queries get one fixed mix of the values). Default ``exponent``:
    the max of the whole exponent, so the largest query feature is exactly m^(-1/2) (1 + eps).
  - ``padded_keys: zeroed``: the PyTorch harnesses' wrapper zeroes K and V at padded positions BEFORE
    the feature map, so a padded key keeps the feature m^(-1/2) (exp(-c) + eps) in the denominator
    (c the key stabiliser; its zero projection also enters the batch max), and outputs depend on
    the amount of padding. Default ``excluded``: padded keys' features are exactly 0.

The PyTorch LRA harnesses (Nystromformer, Skyformer, MRA: Skyformer src/models/attention_performer.py
around the vendored lucidrains ``FastAttention``) are reproduced exactly, padding and holes included,
by ``redraw: never, double_scale: true, key_offset: batch, legacy_qr_signs: true, feature_eps: 1e-4,
query_offset: projection, padded_keys: zeroed`` (tested against a float64 reference of their code).

Attention-weight dropout (``spec.dropout_rate``) is not applied: no n x n weights are formed.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice

REDRAW_POLICIES = ("never", "every_call", "every_k_steps")
ROW_NORMS = ("chi", "sqrt_d")
KEY_OFFSETS = ("per_example", "batch")
QUERY_OFFSETS = ("exponent", "projection")
PADDED_KEYS = ("excluded", "zeroed")


class FeatureDraw(nnx.Variable):
    """A fixed random-feature matrix (a buffer: saved with the model, never trained)."""


class TrainingCalls(nnx.Variable):
    """How many training calls this module has seen (drives ``redraw: every_k_steps``)."""


def householder_qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Q and diag(R) of A = QR for a batch of square matrices A (..., d, d), without LAPACK.

    Householder reflections H_j = I - tau_j v_j v_jᵀ (v_j[j] = 1, zero above j) applied in a
    ``fori_loop`` over the d columns, with LAPACK's geqr2 conventions: R_jj = beta_j =
    -sign(alpha_j) sqrt(alpha_j² + ||x_j||²) for the column's diagonal entry alpha_j and the entries x_j
    below it, tau_j = (beta_j - alpha_j) / beta_j, and no reflection (tau_j = 0, R_jj = alpha_j) when
    x_j = 0 (always for the last column). Q = H_0 H_1 ... H_{d-1} is accumulated alongside, as org2r
    forms it. Products run at ``Precision.HIGHEST`` (no TF32 on GPUs).
    """
    d = a.shape[-1]
    rows = jnp.arange(d)
    highest = jax.lax.Precision.HIGHEST

    def reflect(j, carry):
        r, q, diagonal = carry
        column = jax.lax.dynamic_index_in_dim(r, j, axis=-1, keepdims=False)  # (..., d)
        alpha = jax.lax.dynamic_index_in_dim(column, j, axis=-1, keepdims=False)
        below = jnp.where(rows > j, column, 0.0)
        below_norm = jnp.sqrt(jnp.sum(below * below, axis=-1))
        reflects = below_norm > 0
        beta = jnp.where(reflects, jnp.where(alpha >= 0, -1.0, 1.0) * jnp.hypot(alpha, below_norm), alpha)
        tau = jnp.where(reflects, (beta - alpha) / jnp.where(reflects, beta, 1.0), 0.0)
        v = below / jnp.where(reflects, alpha - beta, 1.0)[..., None] + (rows == j)
        v_r = jnp.einsum("...i,...ij->...j", v, r, precision=highest)  # H r = r - tau v (vᵀ r)
        q_v = jnp.einsum("...ij,...j->...i", q, v, precision=highest)  # q H = q - tau (q v) vᵀ
        r = r - (tau[..., None] * v)[..., :, None] * v_r[..., None, :]
        q = q - (tau[..., None] * q_v)[..., :, None] * v[..., None, :]
        return r, q, diagonal + jnp.where(rows == j, beta[..., None], 0.0)

    identity = jnp.broadcast_to(jnp.eye(d, dtype=a.dtype), a.shape)
    _, q, diagonal = jax.lax.fori_loop(0, d, reflect, (a, identity, jnp.zeros(a.shape[:-1], a.dtype)))
    return q, diagonal


@functools.partial(jax.jit, static_argnames=("num_features", "dim", "orthogonal", "row_norms", "legacy_qr_signs"))
def draw_random_features(key: jax.Array, num_features: int, dim: int, *, orthogonal: bool = True,
                         row_norms: str = "chi", legacy_qr_signs: bool = False) -> jax.Array:
    """W (num_features, dim) in float32: Gaussian orthogonal (or i.i.d.) random features."""
    block_key, norm_key = jax.random.split(key)
    if not orthogonal:
        return jax.random.normal(block_key, (num_features, dim), jnp.float32)
    num_blocks = -(-num_features // dim)
    gaussian = jax.random.normal(block_key, (num_blocks, dim, dim), jnp.float32)
    q, r_diagonal = householder_qr(gaussian)  # not jnp.linalg.qr: see the module docstring
    if not legacy_qr_signs:  # Haar-distributed Q: flip each column by the sign of R's diagonal
        q = q * jnp.where(r_diagonal < 0, -1.0, 1.0)[:, None, :]
    directions = jnp.swapaxes(q, -1, -2).reshape(num_blocks * dim, dim)[:num_features]  # rows = Q's columns
    if row_norms == "chi":
        norms = jnp.linalg.norm(jax.random.normal(norm_key, (num_features, dim), jnp.float32), axis=-1)
    elif row_norms == "sqrt_d":
        norms = jnp.full((num_features,), math.sqrt(dim), jnp.float32)
    else:
        raise ValueError(f"attention.row_norms must be one of {ROW_NORMS}, got {row_norms!r}")
    return directions * norms[:, None]


def positive_features(x: jax.Array, w: jax.Array, key_mask: jax.Array | None = None, *,
                      feature_eps: float = 1e-6, key_offset: str = "per_example",
                      query_offset: str = "exponent") -> jax.Array:
    """phi(x) (batch, heads, n, m) for already-scaled x (batch, heads, n, d) and W (m, d).

    Queries (``key_mask`` None): offset per (example, head, position), the max of the exponent
    (``query_offset: projection``: of W x only). Keys: offset per (example, head) over real keys,
    padded keys' features exactly 0 (``key_offset: batch``: see the module doc).
    Head-major layout: the (n, m) feature matrices of a head are contiguous, so the products that
    follow need no transposes of these, the largest tensors of the layer.
    """
    m = w.shape[0]
    projection = jnp.einsum("bhnd,md->bhnm", x, w.astype(x.dtype), precision=jax.lax.Precision.HIGHEST)
    exponent = projection - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    if key_mask is None:
        offset = jnp.max(exponent if query_offset == "exponent" else projection, axis=-1, keepdims=True)
        return (jnp.exp(exponent - jax.lax.stop_gradient(offset)) + feature_eps) * m ** -0.5
    real = key_mask[:, None, :, None]
    if key_offset == "per_example":
        offset = jnp.max(jnp.where(real, exponent, -jnp.inf), axis=(2, 3), keepdims=True)
    elif key_offset == "batch":
        offset = jnp.max(jnp.where(real, projection, -jnp.inf), keepdims=True)
    else:
        raise ValueError(f"attention.key_offset must be one of {KEY_OFFSETS}, got {key_offset!r}")
    offset = jax.lax.stop_gradient(jnp.where(jnp.isfinite(offset), offset, 0.0))  # no real key: any value
    shifted = jnp.where(real, exponent - offset, 0.0)  # padded entries never reach exp with a large value
    return jnp.where(real, (jnp.exp(shifted) + feature_eps) * m ** -0.5, 0.0)


@functools.partial(jax.jit, static_argnames=("feature_eps", "double_scale", "key_offset", "query_offset",
                                             "padded_keys"))
def favor_attention(q, k, v, key_mask, w, *, feature_eps: float = 1e-6, double_scale: bool = False,
                    key_offset: str = "per_example", query_offset: str = "exponent",
                    padded_keys: str = "excluded"):
    """FAVOR+ (module doc): q, k, v (batch, n, heads, d), W (m, d); returns v's shape in q's dtype."""
    require_choice("attention.query_offset", query_offset, QUERY_OFFSETS)
    require_choice("attention.padded_keys", padded_keys, PADDED_KEYS)
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    d = q.shape[-1]
    scale = d ** -0.5 if double_scale else d ** -0.25
    k, v = k.astype(dtype), v.astype(dtype)
    if padded_keys == "zeroed":  # the PyTorch harnesses: K and V zeroed, every key then gets features
        real = key_mask[:, :, None, None]
        k, v = jnp.where(real, k, 0.0), jnp.where(real, v, 0.0)
        key_mask = jnp.ones_like(key_mask)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # (b, n, h, .) <-> (b, h, n, .)
    phi_q = positive_features(heads_first(q.astype(dtype) * scale), w, feature_eps=feature_eps,
                              query_offset=query_offset)
    phi_k = positive_features(heads_first(k * scale), w, key_mask, feature_eps=feature_eps, key_offset=key_offset)
    kv = jnp.einsum("bhkm,bhke->bhme", phi_k, heads_first(v))
    numerator = jnp.einsum("bhqm,bhme->bhqe", phi_q, kv)
    denominator = jnp.einsum("bhqm,bhm->bhq", phi_q, phi_k.sum(axis=2))[..., None]
    safe = jnp.where(denominator > 0, denominator, 1.0)  # 0 only without real keys; numerator is 0 then
    return heads_first(numerator / safe).astype(q.dtype)


class PerformerAttention(nnx.Module):
    """FAVOR+ with positive orthogonal random features; knobs and quirks in the module docstring."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, num_features: int = 256,
                 redraw: str = "every_call", redraw_interval: int = 1000, orthogonal: bool = True,
                 row_norms: str = "chi", feature_eps: float = 1e-6, double_scale: bool = False,
                 key_offset: str = "per_example", legacy_qr_signs: bool = False,
                 query_offset: str = "exponent", padded_keys: str = "excluded"):
        require_choice("attention.redraw", redraw, REDRAW_POLICIES)
        require_choice("attention.query_offset", query_offset, QUERY_OFFSETS)
        require_choice("attention.padded_keys", padded_keys, PADDED_KEYS)
        if redraw == "every_k_steps" and int(redraw_interval) < 1:
            raise ValueError(f"attention.redraw_interval must be >= 1, got {redraw_interval}")
        require_choice("attention.row_norms", row_norms, ROW_NORMS)
        require_choice("attention.key_offset", key_offset, KEY_OFFSETS)
        if int(num_features) < 1:
            raise ValueError(f"attention.num_features must be >= 1, got {num_features}")
        self.num_features = int(num_features)
        self.head_dim = spec.head_dim
        self.redraw = redraw
        self.redraw_interval = int(redraw_interval)
        self.orthogonal = bool(orthogonal)
        self.row_norms = row_norms
        self.feature_eps = float(feature_eps)
        self.double_scale = bool(double_scale)
        self.key_offset = key_offset
        self.legacy_qr_signs = bool(legacy_qr_signs)
        self.query_offset, self.padded_keys = query_offset, padded_keys
        self.rng = rngs.attention.fork()
        self.fixed_features = FeatureDraw(self.draw(self.rng()))  # evaluation (and redraw: never)
        self.base_key = nnx.Variable(self.rng())  # every_k_steps: draw p uses fold_in(base_key, p)
        self.training_calls = TrainingCalls(jnp.zeros((), jnp.int32))

    def draw(self, key: jax.Array) -> jax.Array:
        return draw_random_features(key, self.num_features, self.head_dim, orthogonal=self.orthogonal,
                                    row_norms=self.row_norms, legacy_qr_signs=self.legacy_qr_signs)

    def features(self, deterministic: bool) -> jax.Array:
        """W for this call; a training call advances ``training_calls``."""
        if deterministic or self.redraw == "never":
            w = self.fixed_features[...]
        elif self.redraw == "every_call":
            w = self.draw(self.rng())
        else:
            period = self.training_calls[...] // self.redraw_interval
            w = self.draw(jax.random.fold_in(self.base_key[...], period))
        if not deterministic:
            self.training_calls[...] = self.training_calls[...] + 1
        return w

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        return favor_attention(q, k, v, key_mask, self.features(deterministic), feature_eps=self.feature_eps,
                               double_scale=self.double_scale, key_offset=self.key_offset,
                               query_offset=self.query_offset, padded_keys=self.padded_keys)
