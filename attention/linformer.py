"""Linformer: low-rank attention through learned length projections (Wang, Li, Khabsa, Fang, Ma,
"Linformer: Self-Attention with Linear Complexity", arXiv 2006.04768, 2020).

Keys and values are projected along the length axis to k rows before a softmax over those k rows:

    K~ = E K,   V~ = F V                      E, F: (k x n) learned                    (Sec. 4, Eq. 7)
    out = softmax(Q K~^T / sqrt(d)) V~        (n x k weights: O(n k d) time, O(n k) memory)

Masking: padded keys and values are zeroed before the projection (m = key_mask),

    K~ = E (m . K),   V~ = F (m . V),

so padding contributes nothing to any projected row (as in the PyTorch-lineage code). The k projected
rows always stay in the softmax: a short example's K~ is a mixture of fewer real keys, not a softmax
restricted to its real keys. Outputs at real tokens therefore do not depend on the amount or content
of padding, but Linformer with E = F = identity equals masked softmax only without padding (with
padding, each padded position becomes a zero key with a zero value: logit 0, one extra exp(0) in the
denominator). The tests check both statements.

Sizing by the maximum length: E and F have one row per position up to ``spec.max_length`` (the task's
``task.max_length``, plus 1 when a CLS token is prepended, as the official code's ``max_len += 1``).
A shorter input uses the first n rows (the official code slices ``kernel[:n]``); a longer one is
refused with an error naming ``task.max_length``. Rows of E per task (configs/hparams/): official
protocol ListOps 2001, Text 1001, Image 1025 (CLS pooling), Retrieval 4000 per document (no CLS token,
quirk M1), Pathfinder 1024, Path-X 16384 (mean pooling); PyTorch lineage (mean pooling, no CLS)
ListOps 2000, Text 4096, Retrieval 4096, Image 1024, Pathfinder 1024. E holds heads x rows x k numbers
per layer (e.g. 2 x 4096 x 256 = 2.1 M for PyTorch-lineage Text).

Parameter sharing and defaults, from the three codes this harness follows:

- official LRA (``lra_benchmarks/models/linformer/linformer_attention.py`` at cd31e5c): one kernel
  ``lr_kernel`` of shape (max_len, k) per layer, shared by the heads and by keys and values (E = F),
  Xavier-uniform init (``kernel_init`` of ``LinformerBlock``), attention dropout on the n x k weights,
  ``low_rank_features`` 16. Text's config sets ``config.low_rank_features = 32``, but the train script
  hands only ``config.model`` (and fixed keys) to the model and ``LinformerEncoder`` has no such
  argument, so the released code runs k = 16 on Text too; the official preset uses the config's 32
  and ``k=16`` reproduces the released code. The mask is never used (TODO in the code; quirk
  ``legacy_ignore_mask``).
- Nystromformer / MRA PyTorch harness (``mlpen/Nystromformer LRA/code/attention_linformer.py``):
  E of shape (heads, k, max_seq_len), N(0, 0.02^2), E = F, no dropout, k = 256 for every task, and one
  E shared by every layer (a class attribute). Layer sharing is not reproduced here: each layer owns
  its E (README quirk table).
- Skyformer (``src/models/attention_linformer.py``): as the Nystromformer harness but one E per layer
  and k = 128. On a GPU, ``nn.Parameter(...).to('cuda')`` returns a copy that is a plain tensor, not
  a registered parameter, so E is never trained nor saved (quirk A12): ``trainable: false``
  reproduces the first; the second (a fresh random E after reloading a checkpoint) is not reproduced.

Knobs: ``k``, ``per_head`` (E per head vs one E shared by heads), ``share_kv`` (E = F, as every code;
false gives the paper's separate F), ``init`` (normal / xavier_uniform), ``trainable``,
``attention_dropout`` (``spec.dropout_rate`` on the weights in training), ``legacy_ignore_mask``.
Everything is computed in at least fp32 (bf16 upcast, fp64 kept); the output has the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionSpec, require_choice

INITS = ("normal", "xavier_uniform")
NORMAL_STD = 0.02  # PyTorch lineage: torch.nn.init.normal_(E, std=0.02)


def init_projection(key: jax.Array, heads: int, max_length: int, k: int, init: str) -> jax.Array:
    """A (heads, max_length, k) projection; heads = 1 when it is shared by the heads.

    ``xavier_uniform`` uses fan_in = max_length and fan_out = k, as the official (max_len, k) kernel.
    """
    shape = (heads, max_length, k)
    if init == "normal":
        return NORMAL_STD * jax.random.normal(key, shape)
    return jax.nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))(key, shape)


def check_length(length: int, max_length: int) -> None:
    if length > max_length:
        raise ValueError(
            f"linformer: input length {length} is longer than the {max_length} positions its projection E was "
            f"sized for (task.max_length, plus 1 for a CLS token); E has one row per position, so raise "
            f"task.max_length to at least the longest input")


def project_length(x: jax.Array, projection: jax.Array) -> jax.Array:
    """sum_j P[h, j, r] x[b, j, h, :]: (b, n, h, d), (1 or h, n, k) -> (b, k, h, d)."""
    projection = jnp.broadcast_to(projection, (x.shape[2], *projection.shape[1:]))
    return jnp.einsum("bnhd,hnr->brhd", x, projection)


def linformer_weights(q, k, key_mask, e_proj, *, legacy_ignore_mask: bool = False) -> jax.Array:
    """softmax(Q (E (m K))^T / sqrt(d)) over the k projected rows; (b, h, n, k) in at least fp32."""
    n = q.shape[1]
    check_length(n, e_proj.shape[1])
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    keep = jnp.ones_like(key_mask) if legacy_ignore_mask else key_mask
    keys = jnp.where(keep[:, :, None, None], k.astype(dtype), 0.0)
    projected = project_length(keys, e_proj[:, :n].astype(dtype))
    logits = jnp.einsum("bqhd,brhd->bhqr", q.astype(dtype), projected) * q.shape[-1] ** -0.5
    return jax.nn.softmax(logits, axis=-1)


def linformer_values(v, key_mask, f_proj, *, legacy_ignore_mask: bool = False) -> jax.Array:
    """F (m V): (b, k, h, d_v) in at least fp32."""
    dtype = jnp.promote_types(v.dtype, jnp.float32)
    keep = jnp.ones_like(key_mask) if legacy_ignore_mask else key_mask
    values = jnp.where(keep[:, :, None, None], v.astype(dtype), 0.0)
    return project_length(values, f_proj[:, :v.shape[1]].astype(dtype))


def linformer_attention(q, k, v, key_mask, e_proj, f_proj=None, *, legacy_ignore_mask: bool = False):
    """Eq. 7 with padded keys and values zeroed before the projection (module docstring).

    ``e_proj``, ``f_proj``: (heads or 1, max_length, k); ``f_proj=None`` means F = E. Returns q's dtype.
    """
    f_proj = e_proj if f_proj is None else f_proj
    weights = linformer_weights(q, k, key_mask, e_proj, legacy_ignore_mask=legacy_ignore_mask)
    values = linformer_values(v, key_mask, f_proj, legacy_ignore_mask=legacy_ignore_mask)
    return jnp.einsum("bhqr,brhd->bqhd", weights, values).astype(q.dtype)


class LinformerAttention(nnx.Module):
    """Linformer with E (and F) sized by ``spec.max_length``; see the module docstring for the knobs."""

    def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, k: int = 256, per_head: bool = True,
                 share_kv: bool = True, init: str = "normal", trainable: bool = True,
                 attention_dropout: bool = False, legacy_ignore_mask: bool = False):
        require_choice("attention.init", init, INITS)
        if k < 1:
            raise ValueError(f"attention.k (Linformer's projected length) must be >= 1, got {k}")
        self.k, self.per_head, self.share_kv, self.init = k, bool(per_head), bool(share_kv), init
        self.trainable, self.legacy_ignore_mask = bool(trainable), bool(legacy_ignore_mask)
        self.max_length = spec.max_length
        heads = spec.num_heads if self.per_head else 1
        variable = nnx.Param if self.trainable else nnx.Variable  # optimisers update nnx.Param only
        self.e_proj = variable(init_projection(rngs.params(), heads, spec.max_length, k, init))
        self.f_proj = None if self.share_kv else variable(init_projection(rngs.params(), heads, spec.max_length, k, init))
        self.dropout = nnx.Dropout(spec.dropout_rate if attention_dropout else 0.0, rngs=rngs)

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        e_proj = self.e_proj[...]
        f_proj = e_proj if self.f_proj is None else self.f_proj[...]
        weights = linformer_weights(q, k, key_mask, e_proj, legacy_ignore_mask=self.legacy_ignore_mask)
        if self.dropout.rate > 0 and not deterministic:
            weights = self.dropout(weights, deterministic=False)
        values = linformer_values(v, key_mask, f_proj, legacy_ignore_mask=self.legacy_ignore_mask)
        return jnp.einsum("bhqr,brhd->bqhd", weights, values).astype(q.dtype)
