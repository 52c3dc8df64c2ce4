"""Sparse Transformer fixed pattern: float64 dense-pattern reference (with and without CLS, causal or
not), memory well below dense softmax."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from lra.registry import ATTENTION_CONFIGS
from tests.attention.scaling import compiled_temp_bytes
from tests.attention.sparse_pattern_cases import (assert_matches_pattern, assert_padding_invariant, build,
                                                  padded_inputs, positions, run_float64)


def fixed_pattern(n, l, c, causal, has_cls):
    """Child et al. Fixed1 ∪ Fixed2 as the official _build_mask, CLS row/column of ones when present."""
    i, j = positions(n)
    off = int(has_cls)
    t, s = i - off, j - off
    pattern = (t // l == s // l) | (s % l == 0) | (s % l >= l - c)
    if causal:
        pattern &= s <= t
    pattern &= (i >= off) & (j >= off)
    return pattern | (i < off) | (j < off)


@pytest.mark.parametrize("length,l,c,causal,has_cls", [
    (23, 5, 2, True, False), (23, 5, 2, True, True), (24, 6, 1, False, True), (13, 4, 0, False, False),
    (30, 7, 3, True, True)])
def test_matches_dense_fixed_pattern(length, l, c, causal, has_cls):
    q, k, v, mask = padded_inputs(length, seed=length + l)
    attention = build("sparse_transformer", length, block_size=l, summary_size=c, causal=causal, has_cls=has_cls)
    out = run_float64(attention, q, k, v, mask)
    assert_matches_pattern(out, q, k, v, mask, fixed_pattern(length, l, c, causal, has_cls))


def test_defaults_are_the_official_lra_ones():
    config = OmegaConf.load(ATTENTION_CONFIGS / "sparse_transformer.yaml")
    assert (config.block_size, config.summary_size, config.causal) == (50, 10, True)


def test_bad_summary_size_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="attention.summary_size"):
        build("sparse_transformer", 8, block_size=4, summary_size=4)


def test_memory_is_a_fraction_of_dense_softmax():
    """The summary columns make the fixed pattern O(n^2 (c+1)/l): about a quarter of dense at l=50, c=10."""
    sparse = build("sparse_transformer", 4096, heads=2, dim=16)
    dense = build("softmax", 4096, heads=2, dim=16)
    for n in (1024, 4096):
        assert compiled_temp_bytes(sparse, n) < 0.4 * compiled_temp_bytes(dense, n), n


def test_padding_invariance_at_small_blocks():
    assert_padding_invariant(build("sparse_transformer", 30, block_size=4, summary_size=1, has_cls=True))
