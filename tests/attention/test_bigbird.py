"""BigBird ITC: float64 dense-pattern reference built from the drawn random blocks, the rules of the
random draw, a pattern fixed per layer and reproducible from the seed, the official 1024 restriction,
O(n) memory."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from attention.base import AttentionSpec
from attention.bigbird import draw_random_blocks
from lra.build import attention_factory, model_rngs
from lra.registry import ATTENTION_CONFIGS
from tests.attention.references import dense_pattern_reference
from tests.attention.scaling import growth_per_doubling
from tests.attention.sparse_pattern_cases import (assert_matches_pattern, assert_padding_invariant, build,
                                                  padded_inputs, positions, run_float64)


def itc_pattern(n, block, grid_blocks, random_blocks):
    """Per head: window of 3 blocks, blocks 0 and grid_blocks-1 global (rows and columns), random blocks."""
    i, j = positions(n)
    a, b = i // block, j // block
    patterns = []
    for head in np.asarray(random_blocks):
        pattern = (np.abs(a - b) <= 1) | (a == 0) | (b == 0) | (a == grid_blocks - 1) | (b == grid_blocks - 1)
        for row, chosen in enumerate(head):
            for r in chosen[chosen >= 0]:
                pattern |= (a == row) & (b == r)
        patterns.append(pattern)
    return np.stack(patterns)


@pytest.mark.parametrize("length,max_length,block,r", [(30, 30, 3, 2), (29, 40, 4, 1), (25, 25, 2, 3), (12, 60, 5, 2)])
def test_matches_dense_itc_reference(length, max_length, block, r):
    """Including inputs shorter than max_length (the pattern is drawn on the max_length grid)."""
    attention = build("bigbird", max_length, block_size=block, num_random_blocks=r)
    q, k, v, mask = padded_inputs(length, seed=block)
    out = run_float64(attention, q, k, v, mask)
    pattern = itc_pattern(length, block, attention.grid_blocks, attention.random_blocks[...])
    assert_matches_pattern(out, q, k, v, mask, pattern)
    if length == max_length:  # the random blocks are really used: dropping them changes the output
        without = itc_pattern(length, block, attention.grid_blocks, -np.ones_like(attention.random_blocks[...]))
        assert (pattern != without).any()


def test_random_draw_excludes_window_and_global_blocks_and_has_no_repeats():
    chosen = np.asarray(draw_random_blocks(jax.random.key(0), heads=3, blocks=12, r=3))
    assert chosen.shape == (3, 12, 3)
    assert (chosen[:, [0, 11]] == -1).all()  # global query blocks draw nothing
    for head in chosen:
        for a in range(1, 11):
            row = head[a]
            assert (row >= 1).all() and (row <= 10).all() and (np.abs(row - a) > 1).all()
            assert len(set(row.tolist())) == 3
    assert not (chosen[0] == chosen[1]).all()  # heads draw separately
    few = np.asarray(draw_random_blocks(jax.random.key(1), heads=1, blocks=6, r=4))
    assert (few[0, 1] >= 0).sum() == 2  # block 1 of 6: only blocks 3 and 4 qualify; the rest unused


def test_pattern_is_fixed_per_layer_and_reproducible_from_the_seed():
    first, again, other_seed = (build("bigbird", 64, block_size=4, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first.random_blocks[...], again.random_blocks[...])
    assert not np.array_equal(first.random_blocks[...], other_seed.random_blocks[...])
    factory = attention_factory("bigbird", block_size=4)
    rngs = model_rngs(0)
    layers = [factory(AttentionSpec(num_heads=2, head_dim=4, max_length=64), rngs=rngs) for _ in range(2)]
    assert not np.array_equal(layers[0].random_blocks[...], layers[1].random_blocks[...])  # one draw per layer
    q, k, v, mask = padded_inputs(64, seed=5)
    before = layers[0].random_blocks[...].copy()
    run_float64(layers[0], q, k, v, mask)
    np.testing.assert_array_equal(layers[0].random_blocks[...], before)  # calls never redraw


def test_legacy_random_first_1024():
    plain = build("bigbird", 2048, block_size=64)
    legacy = build("bigbird", 2048, block_size=64, legacy_random_first_1024=True)
    used = lambda m: np.asarray(m.random_blocks[...])[:, 1:-1]  # noqa: E731
    assert (used(legacy) < 16).all() and (used(legacy) >= 1).all()
    assert (used(plain) >= 16).any()
    short = build("bigbird", 1024, block_size=64, legacy_random_first_1024=True)
    np.testing.assert_array_equal(short.random_blocks[...], build("bigbird", 1024, block_size=64).random_blocks[...])


def test_defaults_and_longer_input_refused():
    config = OmegaConf.load(ATTENTION_CONFIGS / "bigbird.yaml")
    assert (config.block_size, config.num_random_blocks, config.legacy_random_first_1024) == (64, 3, False)
    q, k, v, mask = padded_inputs(20)
    with pytest.raises(ValueError, match="max_length"):
        run_float64(build("bigbird", 16, block_size=4), q, k, v, mask)


def test_memory_grows_linearly():
    attention = build("bigbird", 4096, heads=2, dim=16, block_size=32)
    for ratio in growth_per_doubling(attention, lengths=(1024, 2048, 4096), backward=True):
        assert ratio < 2.5, ratio  # forward + backward, as trained


def official_appended_block_reference(q, k, v, mask, block, random_blocks):
    """Written from lra_benchmarks/models/bigbird/bigbird_attention.py: pad by B - n % B zero slots whose
    (boolean, -1e9-padded) mask is True, ITC pattern on that padded grid (its last block global), truncate."""
    batch, n, heads, d = q.shape
    total = n + block - n % block
    pad = lambda t: np.concatenate([t, np.zeros((batch, total - n, heads, d))], 1)  # noqa: E731
    m = np.concatenate([mask, np.ones((batch, total - n), bool)], 1)
    grid = total // block
    chosen = np.asarray(random_blocks)[:, :grid]
    chosen = np.where((chosen == 0) | (chosen >= grid - 1), -1, chosen)
    pattern = itc_pattern(total, block, grid, chosen)
    return dense_pattern_reference(pad(q), pad(k), pad(v), m, pattern)[:, :n]


@pytest.mark.parametrize("length,block", [(24, 4), (22, 4)])
def test_legacy_appended_block_matches_the_official_computation(length, block):
    attention = build("bigbird", 24, block_size=block, num_random_blocks=2, legacy_appended_block=True)
    q, k, v, mask = padded_inputs(length, seed=7)
    out = run_float64(attention, q, k, v, mask)
    reference = official_appended_block_reference(q, k, v, mask, block, attention.random_blocks[...])
    real = mask[:, :, None, None]
    np.testing.assert_allclose(out * real, reference * real, rtol=1e-10, atol=1e-10)
    plain = build("bigbird", 24, block_size=block, num_random_blocks=2)
    assert not np.allclose(out * real, run_float64(plain, q, k, v, mask) * real, atol=1e-6)


def test_presets_switch_on_the_official_behaviour():
    hparams = ATTENTION_CONFIGS.parent / "hparams"
    for task in ("listops", "text", "retrieval", "image", "pathfinder", "pathx"):
        overrides = OmegaConf.load(hparams / "lra_official" / f"{task}.yaml").task.attention_overrides
        assert overrides.bigbird.legacy_appended_block and overrides.bigbird.legacy_random_first_1024, task
        assert overrides.local.legacy_strided_blocks, task
    for task in ("text", "retrieval"):  # Skyformer's BigBird at 4096 positions
        overrides = OmegaConf.load(hparams / "pytorch_lineage" / f"{task}.yaml").task.attention_overrides
        assert overrides.bigbird.legacy_random_first_1024, task


def test_padding_invariance_at_small_blocks():
    assert_padding_invariant(build("bigbird", 30, block_size=3, num_random_blocks=2))
