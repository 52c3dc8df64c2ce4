"""Local attention: float64 dense-pattern reference, the official strided form (quirk "strided local blocks") against a
reference written from the official code, O(n) memory."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from lra.registry import ATTENTION_CONFIGS
from tests.attention.scaling import growth_per_doubling
from tests.attention.sparse_pattern_cases import (assert_matches_pattern, assert_padding_invariant, build,
                                                  padded_inputs, positions, run_float64)


@pytest.mark.parametrize("length,block", [(20, 5), (23, 5), (17, 4), (9, 16)])
def test_matches_dense_block_diagonal_reference(length, block):
    q, k, v, mask = padded_inputs(length, seed=length)
    i, j = positions(length)
    out = run_float64(build("local", length, block_size=block), q, k, v, mask)
    assert_matches_pattern(out, q, k, v, mask, i // block == j // block)


def official_local_reference(q, k, v, mask, block):
    """Written from lra_benchmarks/models/local/local_attention.py: pad n by B - n % B zero slots with a
    True mask, view positions as (B rows, n'/B groups) row-major, attend along the rows of a group, mask
    pair (row i, row j) of group g by mask[g B + i] and mask[g B + j] (the contiguous reading)."""
    batch, n, heads, d = q.shape
    total = n + block - n % block
    groups = total // block
    pad = lambda t: np.concatenate([t, np.zeros((batch, total - n, heads, d))], 1)  # noqa: E731
    q, k, v = pad(q), pad(k), pad(v)
    m = np.concatenate([mask, np.ones((batch, total - n), bool)], 1)
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for g in range(groups):
                rows = [i * groups + g for i in range(block)]
                for i in range(block):
                    ok = np.array([m[b, g * block + i] and m[b, g * block + j] for j in range(block)])
                    scores = np.array([q[b, rows[i], h] @ k[b, r, h] for r in rows]) / np.sqrt(d)
                    scores = np.where(ok, scores, -1e10)
                    w = np.exp(scores - scores.max())
                    out[b, rows[i], h] = (w / w.sum()) @ v[b, rows, h]
    return out[:, :n]


@pytest.mark.parametrize("length,block", [(20, 5), (23, 5)])
def test_legacy_strided_blocks_matches_the_official_computation(length, block):
    q, k, v, mask = padded_inputs(length, seed=3)
    out = run_float64(build("local", length, block_size=block, legacy_strided_blocks=True), q, k, v, mask)
    np.testing.assert_allclose(out, official_local_reference(q, k, v, mask, block), rtol=1e-10, atol=1e-10)


def test_legacy_strided_blocks_is_not_the_block_pattern_and_depends_on_padding():
    q, k, v, mask = padded_inputs(20, seed=4)
    attention = build("local", 30, block_size=5, legacy_strided_blocks=True)
    short = run_float64(attention, q, k, v, mask)
    assert not np.allclose(short, run_float64(build("local", 20, block_size=5), q, k, v, mask))
    longer = [np.concatenate([t, np.zeros((3, 10, *t.shape[2:]))], 1) for t in (q, k, v)]
    padded = run_float64(attention, *longer, np.concatenate([mask, np.zeros((3, 10), bool)], 1))
    assert not np.allclose(padded[2, :20], short[2, :20], atol=1e-6)


def test_defaults_are_the_official_lra_ones():
    config = OmegaConf.load(ATTENTION_CONFIGS / "local.yaml")
    assert config.block_size == 50 and config.legacy_strided_blocks is False
    for task, block in (("listops", 50), ("text", 50), ("retrieval", 50), ("image", 64), ("pathfinder", 64)):
        preset = OmegaConf.load(ATTENTION_CONFIGS.parents[0] / "hparams" / "lra_official" / f"{task}.yaml")
        overrides = (preset.get("task") or {}).get("attention_overrides") or {}
        assert overrides.get("local", {}).get("block_size", config.block_size) == block, task


def test_bad_block_size_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="attention.block_size"):
        build("local", 8, block_size=0)


def test_memory_grows_linearly():
    attention = build("local", 4096, heads=2, dim=16, block_size=64)
    for ratio in growth_per_doubling(attention, lengths=(1024, 2048, 4096), backward=True):
        assert ratio < 2.5, ratio  # forward + backward, as trained


def test_padding_invariance_at_small_blocks():
    assert_padding_invariant(build("local", 30, block_size=3))
