"""lra.cpu_rng: the unrolled Threefry lowering on the CPU gives JAX's Threefry-2x32 bits, without a loop.

The reference is an independent NumPy Threefry-2x32 (Salmon et al., SC 2011, Table 4 rotations,
key schedule with the 0x1BD11BDA parity constant), fed the counters JAX's ``random_bits`` uses.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import lra.training.steps  # noqa: F401  (applies the lowering, as every harness entry point does)
from lra.cpu_rng import use_unrolled_threefry

ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32_reference(key: tuple[int, int], x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """20 rounds of Threefry-2x32 on uint32 counter pairs (x0, x1), in NumPy."""
    with np.errstate(over="ignore"):
        k = [np.uint32(key[0]), np.uint32(key[1])]
        k.append(np.uint32(k[0] ^ k[1] ^ np.uint32(0x1BD11BDA)))
        x = [x0.astype(np.uint32) + k[0], x1.astype(np.uint32) + k[1]]

        def rotl(v, r):
            return (v << np.uint32(r)) | (v >> np.uint32(32 - r))

        for block in range(5):
            for r in ROTATIONS[block % 2]:
                x[0] = x[0] + x[1]
                x[1] = rotl(x[1], r) ^ x[0]
            x[0] = x[0] + k[(block + 1) % 3]
            x[1] = x[1] + k[(block + 2) % 3] + np.uint32(block + 1)
    return x[0], x[1]


def test_lowering_is_registered():
    assert use_unrolled_threefry() is True


def test_hash_matches_numpy_reference():
    from jax._src.random.threefry2x32 import threefry_2x32

    rng = np.random.default_rng(0)
    key = rng.integers(0, 2**32, 2, dtype=np.uint64).astype(np.uint32)
    count = rng.integers(0, 2**32, 1001, dtype=np.uint64).astype(np.uint32)  # odd length: JAX pads one word
    got = np.asarray(jax.jit(threefry_2x32)(jnp.asarray(key), jnp.asarray(count)))
    half = (count.size + 1) // 2
    padded = np.concatenate([count, np.zeros(1, np.uint32)])
    y0, y1 = threefry2x32_reference((int(key[0]), int(key[1])), padded[:half], padded[half:])
    np.testing.assert_array_equal(got, np.concatenate([y0, y1])[: count.size])


def test_known_vector():
    # Salmon et al.'s Random123 known-answer test for threefry2x32_20: key (0, 0), counter (0, 0).
    y0, y1 = threefry2x32_reference((0, 0), np.zeros(1, np.uint32), np.zeros(1, np.uint32))
    assert (int(y0[0]), int(y1[0])) == (0x6B200159, 0x99BA4EFE)


DRAW = """
import jax, numpy as np
key = jax.random.key(11)
a, b = jax.random.split(key)
draws = [np.asarray(jax.random.bits(a, (5, 7))).ravel(), np.asarray(jax.random.bernoulli(b, 0.9, (301,)))]
print(",".join(str(int(v)) for v in np.concatenate(draws)))
"""


def test_compiled_draw_has_no_loop_and_gives_jax_default_bits():
    draw = jax.jit(lambda key: jax.random.bernoulli(key, 0.9, (64, 33)))
    assert "while" not in draw.lower(jax.random.key(3)).compile().as_text()
    # The same draws in a fresh process that never imports the harness (JAX's own CPU lowering).
    plain = subprocess.run([sys.executable, "-c", DRAW], capture_output=True, text=True, check=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout.strip()
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as here:
        exec(DRAW, namespace)
    assert here.getvalue().strip() == plain
