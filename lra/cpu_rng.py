"""Threefry on the CPU as one fused pass: the same random bits, about three times faster.

Every random draw of a training step (dropout masks above all: at the ``pytorch_lineage`` ListOps
shape, batch 32 x 2,048 tokens, the encoder draws about 40 million 32-bit words per step) goes
through JAX's Threefry-2x32 hash (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011: 20 rounds of add / rotate / xor on pairs of 32-bit words, a key injection every 4 rounds).
JAX lowers the hash in two ways that compute the same function: the five groups of four rounds as
a rolled ``while`` loop (its lowering on the CPU, kept small for compile time) or unrolled (its
lowering on every other platform). On the CPU the rolled loop cannot be fused, so XLA writes and
reads the whole (words, 2) state between groups: at that ListOps shape, the masks of one step took
about 0.2 s of the step's 1.0 s outside the attention (measured with ``jax.profiler`` on 2 cores).

``use_unrolled_threefry()`` registers JAX's own unrolled lowering for the CPU as well. The bits do
not change (tests/test_cpu_rng.py checks them against an independent NumPy Threefry-2x32 and the
compiled HLO for the absence of the loop), so no result, record or fingerprint changes. It touches a
private JAX module; where a JAX version no longer has it, nothing is changed and the rolled
lowering stays (slower, same numbers). The harness calls it where steps are compiled
(``lra.training.steps``), before anything is lowered.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_applied: bool | None = None


def use_unrolled_threefry() -> bool:
    """Register JAX's unrolled Threefry-2x32 lowering for the CPU; True when it is in effect."""
    global _applied
    if _applied is None:
        try:
            from jax._src.interpreters import mlir
            from jax._src.random import threefry2x32 as threefry

            mlir.register_lowering(threefry.threefry2x32_p, threefry._threefry2x32_lowering_rule, platform="cpu")
            _applied = True
        except (ImportError, AttributeError) as error:  # another JAX layout: keep its own lowering
            log.debug("unrolled Threefry lowering not available (%s); the CPU keeps the rolled loop", error)
            _applied = False
    return _applied
