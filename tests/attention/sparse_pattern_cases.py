"""Shared inputs and checks of the sparse-pattern families' tests (local, sparse_transformer,
longformer, bigbird): float64 inputs with left padding, holes and heavy right padding, and the
comparison of a module against the dense float64 reference of its explicit pattern."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.base import AttentionSpec
from tests.attention.references import dense_pattern_reference
from tests.attention.registry_fixtures import make_attention


def padded_inputs(length: int, seed: int = 0, heads: int = 2, dim: int = 4):
    """q, k, v (3, length, heads, dim) float64 and a mask: example 0 left-padded with holes, example 1
    mostly padding (garbage-valued), example 2 all real."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(3, length, heads, dim)) for _ in range(3))
    mask = np.ones((3, length), bool)
    mask[0, :2] = False
    mask[0, length // 2] = False
    mask[0, length // 3] = False
    real = max(3, length // 4)
    mask[1, real:] = False
    for t in (q, k, v):
        t[1, real:] *= 30.0
    return q, k, v, mask


@nnx.jit(static_argnames="deterministic")
def _call(attention, q, k, v, mask, deterministic=True):
    return attention(q, k, v, mask, deterministic=deterministic)


def run_float64(attention, q, k, v, mask):
    with jax.enable_x64(True):
        out = _call(attention, *(jnp.asarray(t) for t in (q, k, v, mask)))
        return np.asarray(out)


def build(name: str, length: int, heads: int = 2, dim: int = 4, seed: int = 0, **overrides):
    spec = AttentionSpec(num_heads=heads, head_dim=dim, max_length=length, has_cls=overrides.pop("has_cls", False))
    return make_attention(name, spec, seed=seed, **overrides)


def assert_matches_pattern(out, q, k, v, mask, allowed, tol=1e-10):
    """Equal to the dense masked-softmax reference at every real query position."""
    assert out.dtype == np.float64
    reference = dense_pattern_reference(q, k, v, mask, allowed)
    real = mask[:, :, None, None]
    np.testing.assert_allclose(out * real, reference * real, rtol=tol, atol=tol)


def positions(n: int):
    return np.arange(n)[:, None], np.arange(n)[None, :]


def assert_padding_invariant(attention, real: int = 11, totals=(11, 19, 30)):
    """Outputs at real tokens do not change with the amount (or content) of padding, at small blocks
    where the pattern is really sparse (the registry-wide test runs the default, wide blocks)."""
    q, k, v, _ = padded_inputs(real, seed=9)
    outputs = []
    for total in totals:
        rng = np.random.default_rng(total)
        pad = [rng.normal(size=(3, total - real, *q.shape[2:])) * 40.0 for _ in range(3)]
        mask = np.broadcast_to(np.arange(total) < real, (3, total))
        out = run_float64(attention, *(np.concatenate([t, p], 1) for t, p in zip((q, k, v), pad)), mask)
        outputs.append(out[:, :real])
    for out in outputs[1:]:
        np.testing.assert_allclose(out, outputs[0], rtol=1e-12, atol=1e-12)
