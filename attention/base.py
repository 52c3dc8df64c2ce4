"""The attention contract: the one interface every attention family implements.

The encoder (``lra/model.py``) owns the Q/K/V/O projections. Between them it calls an attention
module that sees per-head tensors and nothing else, so a new kernel is one class plus one YAML file.

Construction
    A family is a Flax NNX module whose constructor takes the layer's shape as an ``AttentionSpec``
    and an ``nnx.Rngs``, plus its own keyword hyperparameters::

        class MyAttention(nnx.Module):
            def __init__(self, spec: AttentionSpec, *, rngs: nnx.Rngs, my_knob: int = 4): ...

    Its YAML file in ``configs/attention/`` names the class with Hydra's ``_target_`` and
    ``_partial_: true`` and lists the knobs; the encoder completes the call with ``spec`` and
    ``rngs`` once per layer. Three keys of that YAML are read by the harness and not passed on:
    ``name`` (the row label on the leaderboard), ``requires`` (the backends it runs on, e.g.
    ``[gpu]``; sweeps on any other backend skip it and say so) and ``positional_bias`` (the name of an
    add-on in ``configs/positional_bias/`` that this registered combination always uses).

Call
    ``out = attention(q, k, v, key_mask, deterministic=...)``

    - ``q``, ``k``, ``v``: ``(batch, length, heads, head_dim)`` in the compute dtype, exactly as
      projected (no 1/sqrt(d) or d^-1/4 scaling applied: each family scales as its paper says).
    - ``key_mask``: ``(batch, length)`` bool, True = real token. Padded keys must not influence any
      output; outputs at padded query positions are ignored by the encoder but must be finite.
    - ``deterministic``: True at evaluation. Randomness (dropout, random features, landmark
      sampling) is drawn from the ``rngs`` streams given at construction, which live in the model
      state, so a run is reproducible from its seed. Families whose evaluation would otherwise be
      random must be deterministic given the seed when ``deterministic`` is True.
    - Returns ``(batch, length, heads, head_dim)`` in the compute dtype.

Randomness convention: a family that needs random draws keeps ``self.rng = rngs.attention.fork()``
and calls ``self.rng()`` for a fresh key in training; for evaluation it uses a key fixed at
construction (drawn from the same stream), so evaluation is deterministic given the seed.

Layout facts (e.g. the 2-D grid of an image task, whether position 0 is a CLS token) come in the
spec, so families such as MRA or 2-D positional biases can use them without new arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Shape and layout of one attention layer, filled in by the encoder."""

    num_heads: int
    head_dim: int
    max_length: int  # longest sequence the layer will see, CLS token included
    dropout_rate: float = 0.0  # attention-weight dropout (families without explicit weights may ignore it)
    dtype: jnp.dtype = jnp.float32  # compute dtype of q, k, v and of the output
    has_cls: bool = False  # position 0 is a prepended CLS token
    grid_shape: tuple[int, int] | None = None  # (height, width) of image-like inputs, else None


class Attention(Protocol):
    """What the encoder calls. See the module docstring for the full contract."""

    def __call__(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *, deterministic: bool
    ) -> jax.Array: ...


class AttentionFactory(Protocol):
    def __call__(self, spec: AttentionSpec, *, rngs: nnx.Rngs) -> Attention: ...


class PositionalBias(Protocol):
    """An add-on term computed from the values: ``out = attention(q, k, v, mask) + bias(v, mask)``.

    Called with ``v`` (batch, length, heads, head_dim) and ``key_mask`` (batch, length); returns a
    tensor of v's shape that the encoder adds to the attention output of every head before the
    output projection. Padded positions must not contribute to real positions' terms. Built like an
    attention: ``factory(spec, rngs=...)`` from a YAML in ``configs/positional_bias/``, selected with
    ``+positional_bias=<name>`` and composable with every attention.
    """

    def __call__(self, v: jax.Array, key_mask: jax.Array) -> jax.Array: ...


class PositionalBiasFactory(Protocol):
    def __call__(self, spec: AttentionSpec, *, rngs: nnx.Rngs) -> PositionalBias: ...


class ContractError(ValueError):
    """An attention broke the contract above (e.g. returned another shape than q's)."""


def check_output(out, q, who: str, *, dtype: bool = True) -> None:
    """Raise ``ContractError`` naming ``who`` unless ``out`` has q's shape (and dtype)."""
    shape = getattr(out, "shape", None)
    if shape != q.shape or (dtype and getattr(out, "dtype", None) != q.dtype):
        got = f"{type(out).__name__}" if shape is None else f"shape {tuple(shape)} dtype {out.dtype}"
        raise ContractError(f"attention {who} returned {got}; expected q's shape {tuple(q.shape)} "
                            f"dtype {q.dtype} (batch, length, heads, head_dim): see attention/base.py")


def require_choice(key: str, value, choices) -> None:
    """Reject a config value outside ``choices`` with an error naming the config key."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {tuple(choices)}, got {value!r}")


# Keys of an attention YAML that describe it to the harness and are not constructor arguments.
HARNESS_KEYS = ("name", "requires", "positional_bias")
