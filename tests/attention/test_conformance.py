"""Contract tests every registered attention must pass (parametrised over configs/attention/)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from attention.base import AttentionSpec
from lra import kernel_card
from tests.attention.registry_fixtures import CPU_ATTENTIONS, make_attention

SPEC = AttentionSpec(num_heads=2, head_dim=8, max_length=48)


def test_registry_lists_the_baselines():
    assert {"softmax", "linear"} <= set(CPU_ATTENTIONS)
    assert "softmax_flash" not in CPU_ATTENTIONS  # GPU-only: skipped on a CPU


# The contract checks live in lra/kernel_card.py, so `make check-kernel` runs exactly these on a
# user's kernel; here they run on every registered attention.
@pytest.mark.parametrize("check", [kernel_card.check_output_shape, kernel_card.check_padding_invariance,
                                   kernel_card.check_finite_gradients, kernel_card.check_deterministic_evaluation,
                                   kernel_card.check_batch_independence], ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", CPU_ATTENTIONS)
def test_contract(name, check):
    result = check(make_attention(name, SPEC))
    assert result.ok, f"{name}: {result.name}: {result.detail}"


@pytest.mark.parametrize("name", CPU_ATTENTIONS)
def test_finite_bfloat16_gradients(name):
    result = kernel_card.check_finite_gradients(make_attention(name, SPEC), jnp.bfloat16)
    assert result.ok, f"{name}: {result.detail}"
