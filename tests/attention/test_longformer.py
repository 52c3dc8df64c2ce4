"""Longformer: float64 dense-pattern reference (odd/even windows, global tokens), official window
sides, presets, O(n) memory at a fixed window."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from attention.longformer import window_sides
from lra.registry import ATTENTION_CONFIGS
from tests.attention.scaling import growth_per_doubling
from tests.attention.sparse_pattern_cases import (assert_matches_pattern, assert_padding_invariant, build,
                                                  padded_inputs, positions, run_float64)


def official_window(n, w):
    """The official _build_sliding_window_mask: sum of eye(k=-i), i < w - w//2, and eye(k=i), 1 <= i <= w//2."""
    right = w // 2
    left = w - right
    return (sum(np.eye(n, k=-i) for i in range(left)) + sum(np.eye(n, k=i) for i in range(1, right + 1))) > 0


@pytest.mark.parametrize("length,window,g", [(23, 6, 0), (23, 7, 2), (17, 4, 1), (30, 9, 3), (9, 40, 1)])
def test_matches_dense_window_plus_global_reference(length, window, g):
    q, k, v, mask = padded_inputs(length, seed=window)
    i, j = positions(length)
    pattern = official_window(length, window) | (i < g) | (j < g)
    out = run_float64(build("longformer", length, sliding_window_size=window, num_global_tokens=g), q, k, v, mask)
    assert_matches_pattern(out, q, k, v, mask, pattern)


def test_window_sides_follow_the_official_mask():
    assert window_sides(512) == (256, 256) and window_sides(7) == (4, 3)
    i, j = positions(12)
    for w in (4, 5):
        left, right = window_sides(w)
        np.testing.assert_array_equal(official_window(12, w), (j - i >= 1 - left) & (j - i <= right))


def test_lra_presets_switch_global_tokens_off():
    assert OmegaConf.load(ATTENTION_CONFIGS / "longformer.yaml").num_global_tokens == 1
    for task in ("listops", "text", "retrieval", "image", "pathfinder", "pathx"):
        preset = OmegaConf.load(ATTENTION_CONFIGS.parent / "hparams" / "lra_official" / f"{task}.yaml")
        assert preset.task.attention_overrides.longformer.num_global_tokens == 0, task


def test_bad_window_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="attention.sliding_window_size"):
        build("longformer", 8, sliding_window_size=0)


def test_memory_grows_linearly_at_a_fixed_window():
    attention = build("longformer", 4096, heads=2, dim=16, sliding_window_size=64)
    for ratio in growth_per_doubling(attention, lengths=(1024, 2048, 4096), backward=True):
        assert ratio < 2.5, ratio  # forward + backward, as trained


def test_padding_invariance_at_a_small_window():
    assert_padding_invariant(build("longformer", 30, sliding_window_size=4, num_global_tokens=1))
