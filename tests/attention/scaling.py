"""Compiled-memory scaling: XLA's memory analysis of an attention's forward (or fwd+bwd) pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def compiled_temp_bytes(attention, length: int, heads: int = 2, head_dim: int = 16, backward: bool = False) -> int:
    shape = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, length), jnp.bool_)

    def forward(q, k, v, m):
        return attention(q, k, v, m, deterministic=True)

    fn = jax.grad(lambda *a: forward(*a).sum(), argnums=(0, 1, 2)) if backward else forward
    compiled = jax.jit(fn).lower(shape, shape, shape, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def growth_per_doubling(attention, lengths=(512, 1024, 2048), **kwargs) -> list[float]:
    sizes = [compiled_temp_bytes(attention, n, **kwargs) for n in lengths]
    return [b / a for a, b in zip(sizes, sizes[1:])]
