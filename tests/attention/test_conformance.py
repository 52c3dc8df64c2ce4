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


# bfloat16 gradients in training (dropout, resampled randomness; test_finite_bfloat16_gradients above
# covers evaluation with every registered attention's defaults), for the settings that take a family
# down another code path (these cases were bf16 copies in the family test files). Inputs are scaled
# up (x5) so exponentials and normalisers are stressed; the batch holds a long, a short and a fully
# padded example.
BF16_CASES = [
    ("sikf", {}),
    ("kernelized", {}),
    ("informer", {"factor": 1}),                                  # lazy queries (u < L)
    ("linformer", {"k": 4, "share_kv": False}),                   # separate E and F projections
    ("nystromformer", {"num_landmarks": 4, "conv_kernel_size": 5}),  # Nystrom path with the conv
    ("nystromformer", {"num_landmarks": 32}),                     # exact fallback (L <= landmarks)
    ("skyformer", {"num_landmarks": 8}),
]


@pytest.mark.parametrize("name, overrides", BF16_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for n, o in BF16_CASES])
def test_bfloat16_training_gradients_reach_inputs_and_parameters(name, overrides):
    import jax
    import numpy as np
    from flax import nnx

    attention = make_attention(name, SPEC, **overrides)
    q, k, v = (5.0 * t for t in kernel_card.random_qkv(8, 3, 16, SPEC, dtype=jnp.bfloat16))
    mask = jnp.stack([jnp.arange(16) < 13, jnp.arange(16) < 3, jnp.zeros(16, bool)])

    def loss(module, q, k, v):
        out = module(q, k, v, mask, deterministic=False)
        assert out.dtype == jnp.bfloat16, out.dtype
        out = out.astype(jnp.float32)
        return (out * mask[:, :, None, None]).sum() + 1e-3 * (out ** 2).sum()

    param_grads, *input_grads = nnx.grad(loss, argnums=(0, 1, 2, 3))(attention, q, k, v)
    for which, grad in zip("qkv", input_grads):
        assert np.isfinite(np.asarray(grad, np.float32)).all(), f"{name}: non-finite d/d{which}"
    assert float(jnp.abs(input_grads[0][0, :13].astype(jnp.float32)).sum()) > 0, f"{name}: no gradient to the queries"
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(param_grads, nnx.Param)):
        assert np.isfinite(np.asarray(leaf, np.float32)).all(), f"{name}: non-finite gradient of {path}"
