"""Compiled-memory scaling: XLA's memory analysis of an attention's forward (or fwd+bwd) pass."""

from __future__ import annotations

from lra.kernel_card import compiled_temp_bytes


def growth_per_doubling(attention, lengths=(512, 1024, 2048), **kwargs) -> list[float]:
    sizes = [compiled_temp_bytes(attention, n, **kwargs) for n in lengths]
    return [b / a for a, b in zip(sizes, sizes[1:])]
