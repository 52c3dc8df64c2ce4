"""Sinkhorn attention: float64 brute-force reference of its own math, the identity-sort limit
(block-local attention), Sinkhorn normalisation, the length refusal, memory scaling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.base import AttentionSpec
import attention.sinkhorn as sinkhorn_module
from attention.sinkhorn import sinkhorn_attention, sort_matrix
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


def _inputs(seed=0, batch=2, length=11, heads=2, dim=4):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, length, heads, dim)) for _ in range(3))
    mask = np.ones((batch, length), bool)
    mask[0, 7:] = False  # right padding: the last blocks hold padding only
    mask[1, [1, 5]] = False  # holes
    return q, k, v, mask


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def sinkhorn_brute_force(q, k, v, mask, kernel, block, sort="softmax", iterations=1, temperature=1.0):
    """Loops over blocks: sort matrix over real blocks, sorted keys as P-mixtures of real keys, two softmaxes."""
    batch, n, heads, d = q.shape
    out = np.zeros_like(v)
    nb = -(-n // block)
    members = [list(range(i * block, min(n, (i + 1) * block))) for i in range(nb)]
    for b in range(batch):
        real_blocks = [i for i in range(nb) if mask[b, members[i]].any()]
        for h in range(heads):
            summary = {i: sum(k[b, t, h] for t in members[i] if mask[b, t]) for i in real_blocks}
            logits = np.array([[summary[i] @ kernel[:, j] for j in real_blocks] for i in real_blocks])
            if sort == "softmax":
                p = np.array([_softmax(row) for row in logits])
            else:
                p = np.exp(logits / temperature)
                for _ in range(iterations):
                    p /= p.sum(axis=1, keepdims=True)
                    p /= p.sum(axis=0, keepdims=True)
            for a, i in enumerate(real_blocks):
                for s, t in enumerate(members[i]):
                    keys = [u for u in members[i] if mask[b, u]]
                    w = _softmax(np.array([q[b, t, h] @ k[b, u, h] for u in keys]) / np.sqrt(d))
                    local = w @ v[b, keys, h]
                    sk, sv, slots = [], [], []
                    for slot in range(block):
                        parts = [(p[a, c], j) for c, j in enumerate(real_blocks)
                                 if slot < len(members[j]) and mask[b, members[j][slot]]]
                        if parts:
                            sk.append(sum(pw * k[b, members[j][slot], h] for pw, j in parts))
                            sv.append(sum(pw * v[b, members[j][slot], h] for pw, j in parts))
                    w = _softmax(np.array([q[b, t, h] @ x for x in sk]) / np.sqrt(d))
                    out[b, t, h] = local + w @ np.array(sv)
    return out


@pytest.mark.parametrize("overrides", [{"block_size": 3},
                                       {"block_size": 2, "sort_activation": "sinkhorn", "sinkhorn_iterations": 4,
                                        "temperature": 0.7}])
def test_float64_matches_brute_force(overrides):
    q, k, v, mask = _inputs()
    with jax.enable_x64(True):
        attention = make_attention("sinkhorn", AttentionSpec(num_heads=2, head_dim=4, max_length=12), **overrides)
        kernel = np.asarray(attention.sort_kernel[...]) * np.float32(3.0)  # sharper sorts than the init
        attention.sort_kernel[...] = jnp.asarray(kernel, jnp.float32)
        kernel = kernel.astype(np.float64)
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v, mask)), deterministic=True))
    reference = sinkhorn_brute_force(q, k, v, mask, kernel, overrides["block_size"],
                                     overrides.get("sort_activation", "softmax"),
                                     overrides.get("sinkhorn_iterations", 1), overrides.get("temperature", 1.0))
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-10, atol=1e-12)


def test_identity_sort_is_twice_block_local_attention(monkeypatch):
    """A sort matrix that keeps every block in place: both terms are block-local softmax attention."""
    q, k, v, mask = _inputs(seed=1, length=12)
    identity_sort = lambda logits, real, **_: jnp.eye(logits.shape[-1]) * (real[:, None, :, None] &
                                                                           real[:, None, None, :])
    monkeypatch.setattr(sinkhorn_module, "sort_matrix", identity_sort)
    with jax.enable_x64(True):
        out = np.asarray(sinkhorn_attention(*(jnp.asarray(t) for t in (q, k, v, mask)), jnp.zeros((4, 4)),
                                            block_size=3))
    reference = np.zeros_like(v)
    for b in range(2):
        for h in range(2):
            for t in range(12):
                if not mask[b, t]:
                    continue
                keys = [u for u in range(t // 3 * 3, t // 3 * 3 + 3) if mask[b, u]]
                w = _softmax(np.array([q[b, t, h] @ k[b, u, h] for u in keys]) / 2.0)
                reference[b, t, h] = 2 * w @ v[b, keys, h]
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-10, atol=1e-12)


def test_sinkhorn_iterations_approach_a_doubly_stochastic_matrix():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(1, 1, 5, 5)) * 2)
    real = jnp.asarray([[True, True, True, True, False]])
    p = np.asarray(sort_matrix(logits, real, sort_activation="sinkhorn", iterations=50))
    np.testing.assert_allclose(p[0, 0, :4, :4].sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(p[0, 0, :4, :4].sum(axis=1), 1.0, atol=1e-4)
    assert np.all(p[0, 0, 4] == 0) and np.all(p[0, 0, :, 4] == 0)  # the padding-only block is left out


def test_longer_input_is_refused_naming_the_config_key():
    attention = make_attention("sinkhorn", AttentionSpec(num_heads=2, head_dim=4, max_length=8), block_size=4)
    q = jnp.ones((1, 9, 2, 4))
    with pytest.raises(ValueError, match="task.max_length"):
        attention(q, q, q, jnp.ones((1, 9), bool), deterministic=True)


def test_memory_grows_linearly_at_fixed_block_size():
    attention = make_attention("sinkhorn", AttentionSpec(num_heads=2, head_dim=16, max_length=1024), block_size=32)
    for ratio in growth_per_doubling(attention, lengths=(256, 512, 1024), backward=True):
        assert ratio < 2.5, ratio


# --- the official LRA code's form (legacy_lra) ------------------------------------------------------

def lra_code_reference(q, k, v, mask, kernel, block):
    """NumPy transcription of the official sinkhorn_attention.py tensor steps (softmax sort, no dropout):
    reshape (b, n, h, d) -> (b, block, N_B, h, d), contiguous-chunk padding mask, the sorting einsums as
    written, additive -1e10 biases, attention along the block axis, reshape back."""
    b, n, h, d = q.shape
    nb = n // block
    bq, bk, bv = (x.reshape(b, block, nb, h, d) for x in (q, k, v))
    sort_out = np.einsum("bnhd,dl->bnhl", bk.sum(axis=1), kernel)[..., :nb]
    perm = np.exp(sort_out - sort_out.max(-1, keepdims=True))
    perm /= perm.sum(-1, keepdims=True)
    sorted_k = np.einsum("bskhd,bnhl->bsnhd", bk, perm)
    sorted_v = np.einsum("bskhd,bnhl->bsnhd", bv, perm)
    pm = mask.reshape(b * nb, block, 1).astype(float)
    padding = (pm[:, :, None, 0] * pm[:, None, :, 0]).reshape(b, nb, block, block)
    sorted_padding = np.einsum("bksj,bnhl->bnsj", padding, perm)
    bias = np.where(padding > 0, 0.0, -1e10)
    sorted_bias = np.where(sorted_padding > 0, 0.0, -1e10)

    def attend(keys, values, bias):
        qt, kt = bq.transpose(0, 2, 3, 1, 4) / np.sqrt(d), keys.transpose(0, 2, 3, 1, 4)  # (b, nb, h, s, d)
        w = np.einsum("bnhsd,bnhtd->bnhst", qt, kt) + bias[:, :, None]
        w = np.exp(w - w.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        return np.einsum("bnhst,bnhtd->bnhsd", w, values.transpose(0, 2, 3, 1, 4)).transpose(0, 3, 1, 2, 4)

    return (attend(bk, bv, bias) + attend(sorted_k, sorted_v, sorted_bias)).reshape(b, n, h, d)


def test_legacy_lra_matches_the_official_code_on_padding_and_holes():
    q, k, v, mask = _inputs(seed=5, length=12)  # padding from 7 in example 0, holes at 1, 5 in example 1
    with jax.enable_x64(True):
        attention = make_attention("sinkhorn", AttentionSpec(num_heads=2, head_dim=4, max_length=12), block_size=3,
                                   legacy_lra=True)
        kernel = np.asarray(attention.sort_kernel[...], np.float64)
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v, mask)), deterministic=True))
    reference = lra_code_reference(q, k, v, mask, kernel, 3)
    np.testing.assert_allclose(out, reference, rtol=1e-10, atol=1e-12)
    corrected = sinkhorn_brute_force(q, k, v, mask, kernel, 3)
    assert np.abs(out[mask] - corrected[mask]).max() > 1e-2


def test_legacy_lra_sort_network_has_no_effect_and_padding_leaks():
    q, k, v, mask = _inputs(seed=6, length=12)
    q, k, v, mask = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), jnp.asarray(mask)
    attention = make_attention("sinkhorn", AttentionSpec(num_heads=2, head_dim=4, max_length=12), block_size=3,
                               legacy_lra=True)
    out = np.asarray(attention(q, k, v, mask, deterministic=True))
    attention.sort_kernel[...] = attention.sort_kernel[...] * 5.0 + 1.0
    np.testing.assert_allclose(np.asarray(attention(q, k, v, mask, deterministic=True)), out, rtol=1e-5, atol=1e-6)
    garbage = k.at[0, 7:].multiply(30.0)  # padded keys of example 0
    leaked = np.asarray(attention(q, garbage, v, mask, deterministic=True))
    assert np.abs(leaked[0, :7] - out[0, :7]).max() > 1e-3
