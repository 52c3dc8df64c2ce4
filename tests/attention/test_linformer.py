"""Linformer: float64 brute-force reference of its own math, the identity-projection limit, padding
(projected away, never leaking), the max-length refusal, the official code's legacy form against a
reference written from that code, the knobs, finite gradients, and linear memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.base import AttentionSpec
from attention.linformer import LinformerAttention, linformer_attention
from tests.attention.references import padded_qkv as _inputs
from tests.attention.references import softmax_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling
from tests.conftest import compose_config


def _projection(seed, heads, length, k):
    return np.random.default_rng(seed).normal(size=(heads, length, k))


def linformer_brute_force(q, k, v, mask, e, f):
    """Per (example, head): K~ = E^T (m K), V~ = F^T (m V) (E stored (n, k)), softmax(q K~^T / sqrt(d)) V~."""
    batch, n, heads, d = q.shape
    out = np.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            eh, fh = e[h % e.shape[0], :n], f[h % f.shape[0], :n]
            keys = eh.T @ (k[b, :, h] * mask[b, :, None])
            values = fh.T @ (v[b, :, h] * mask[b, :, None])
            for i in range(n):
                logits = keys @ q[b, i, h] / np.sqrt(d)
                weights = np.exp(logits - logits.max())
                out[b, i, h] = (weights / weights.sum()) @ values
    return out


def official_lra_reference(q, k, v, kernel):
    """Written from lra_benchmarks/models/linformer/linformer_attention.py: ``kernel[:n]`` projects keys and
    values (no mask anywhere) along the length, then dot-product attention with q / sqrt(d), no bias."""
    n, d = q.shape[1], q.shape[-1]
    kernel = kernel[:n]
    key = np.einsum("bnhd,nr->brhd", k, kernel)
    value = np.einsum("bnhd,nr->brhd", v, kernel)
    logits = np.einsum("bqhd,brhd->bhqr", q / np.sqrt(d), key)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqr,brhd->bqhd", weights, value)


def test_matches_brute_force_with_holes_and_separate_or_shared_projections():
    q, k, v, mask = _inputs()
    e, f = _projection(1, 2, 12, 3), _projection(2, 2, 12, 3)  # sized for 12 positions, input of 10
    with jax.enable_x64(True):
        shared = np.asarray(linformer_attention(*map(jnp.asarray, (q, k, v, mask)), jnp.asarray(e)))
        separate = np.asarray(linformer_attention(*map(jnp.asarray, (q, k, v, mask)), jnp.asarray(e), jnp.asarray(f)))
        one_for_all_heads = np.asarray(linformer_attention(*map(jnp.asarray, (q, k, v, mask)), jnp.asarray(e[:1])))
    assert shared.dtype == np.float64
    np.testing.assert_allclose(shared, linformer_brute_force(q, k, v, mask, e, e), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(separate, linformer_brute_force(q, k, v, mask, e, f), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(one_for_all_heads, linformer_brute_force(q, k, v, mask, e[:1], e[:1]),
                               rtol=1e-10, atol=1e-12)
    assert not np.allclose(shared, separate)


def test_identity_projection_is_softmax_without_padding_and_the_documented_deviation_with_it():
    q, k, v, _ = _inputs(seed=3)
    full = np.ones(q.shape[:2], bool)
    identity = np.broadcast_to(np.eye(10), (2, 10, 10))
    with jax.enable_x64(True):
        out = np.asarray(linformer_attention(*map(jnp.asarray, (q, k, v, full)), jnp.asarray(identity)))
        padded_mask = full.copy()
        padded_mask[:, 6:] = False
        padded = np.asarray(linformer_attention(*map(jnp.asarray, (q, k, v, padded_mask)), jnp.asarray(identity)))
    np.testing.assert_allclose(out, softmax_reference(q, k, v, full), rtol=1e-10, atol=1e-12)
    # With padding each padded position is a zero key with a zero value: one exp(0) per pad in the
    # denominator of every real query, nothing in the numerator.
    d = q.shape[-1]
    for b in range(2):
        for h in range(2):
            logits = q[b, :, h] @ k[b, :6, h].T / np.sqrt(d)
            weights = np.exp(logits)
            expected = weights @ v[b, :6, h] / (weights.sum(-1, keepdims=True) + 4.0)
            np.testing.assert_allclose(padded[b, :, h], expected, rtol=1e-10, atol=1e-12)
    assert not np.allclose(padded[:, :6], softmax_reference(q, k, v, padded_mask)[:, :6])


def test_padding_never_leaks_through_the_projection():
    """Real outputs are unchanged by more padding and by any content at padded positions or holes."""
    q, k, v, mask = _inputs(seed=4, length=12)
    attention = make_attention("linformer", AttentionSpec(num_heads=2, head_dim=4, max_length=20), k=5)
    reference = np.asarray(attention(*map(jnp.asarray, (q, k, v, mask)), deterministic=True))
    garbage = np.random.default_rng(9).normal(size=q.shape) * 100.0
    spoiled = [np.where(mask[:, :, None, None], t, garbage) for t in (q, k, v)]
    out = np.asarray(attention(*map(jnp.asarray, (*spoiled, mask)), deterministic=True))
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-5, atol=1e-6)
    longer = [np.concatenate([t, garbage[:, :8]], axis=1) for t in spoiled]
    longer_mask = np.concatenate([mask, np.zeros((2, 8), bool)], axis=1)
    out = np.asarray(attention(*map(jnp.asarray, (*longer, longer_mask)), deterministic=True))
    np.testing.assert_allclose(out[:, :12][mask], reference[mask], rtol=1e-5, atol=1e-6)


def test_refuses_an_input_longer_than_max_length_naming_task_max_length():
    attention = make_attention("linformer", AttentionSpec(num_heads=2, head_dim=4, max_length=8), k=4)
    q, k, v, mask = map(jnp.asarray, _inputs(dtype=np.float32))  # length 10 > 8
    with pytest.raises(ValueError, match=r"input length 10 .* 8 positions .*task\.max_length"):
        attention(q, k, v, mask, deterministic=True)


def test_projection_shapes_init_and_trainability():
    spec = AttentionSpec(num_heads=3, head_dim=4, max_length=50)
    per_head = make_attention("linformer", spec, k=7)
    assert isinstance(per_head.e_proj, nnx.Param) and per_head.e_proj.shape == (3, 50, 7) and per_head.f_proj is None
    assert abs(float(jnp.std(per_head.e_proj[...])) - 0.02) < 0.004  # N(0, 0.02^2)
    official = make_attention("linformer", spec, k=7, per_head=False, init="xavier_uniform", share_kv=False)
    assert official.e_proj.shape == (1, 50, 7) and official.f_proj.shape == (1, 50, 7)
    limit = np.sqrt(6.0 / (50 + 7))
    values = np.asarray(official.e_proj[...])
    assert np.abs(values).max() <= limit and np.abs(values).max() > 0.8 * limit
    frozen = make_attention("linformer", spec, k=7, trainable=False)
    assert not isinstance(frozen.e_proj, nnx.Param) and not nnx.state(frozen, nnx.Param)
    with pytest.raises(ValueError, match="attention.init"):
        make_attention("linformer", spec, init="orthogonal")
    with pytest.raises(ValueError, match="attention.k"):
        make_attention("linformer", spec, k=0)


def test_legacy_ignore_mask_matches_the_official_code_on_padded_inputs_with_holes():
    q, k, v, mask = _inputs(seed=5)
    attention = make_attention("linformer", AttentionSpec(num_heads=2, head_dim=4, max_length=13), k=6,
                               per_head=False, init="xavier_uniform", legacy_ignore_mask=True)
    with jax.enable_x64(True):
        out = np.asarray(attention(*map(jnp.asarray, (q, k, v, mask)), deterministic=True))
    kernel = np.asarray(attention.e_proj[...], np.float64)[0]  # the (max_len, k) lr_kernel
    np.testing.assert_allclose(out, official_lra_reference(q, k, v, kernel), rtol=1e-10, atol=1e-12)
    corrected = make_attention("linformer", AttentionSpec(num_heads=2, head_dim=4, max_length=13), k=6,
                               per_head=False, init="xavier_uniform")
    assert not np.allclose(np.asarray(corrected(*map(jnp.asarray, (q, k, v, mask)), deterministic=True)), out,
                           atol=1e-4)  # the mask matters in the corrected form


def test_attention_dropout_only_when_asked_and_only_in_training():
    q, k, v, mask = map(jnp.asarray, _inputs(dtype=np.float32))
    spec = AttentionSpec(num_heads=2, head_dim=4, max_length=10, dropout_rate=0.5)
    plain = make_attention("linformer", spec, k=4)
    dropped = make_attention("linformer", spec, k=4, attention_dropout=True)
    evaluation = np.asarray(dropped(q, k, v, mask, deterministic=True))
    np.testing.assert_allclose(np.asarray(plain(q, k, v, mask, deterministic=False)), evaluation, rtol=1e-6)
    assert not np.allclose(np.asarray(dropped(q, k, v, mask, deterministic=False)), evaluation, atol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.float32])  # bfloat16: test_conformance.py BF16_CASES
def test_finite_gradients_to_inputs_and_projection(dtype):
    q, k, v, mask = _inputs(seed=7, batch=3, dtype=np.float32)
    mask[2] = False  # an example with no real token
    q, k, v = (jnp.asarray(t, dtype) for t in (q, k, v))
    mask = jnp.asarray(mask)
    attention = make_attention("linformer", AttentionSpec(num_heads=2, head_dim=4, max_length=10), k=4,
                               share_kv=False)

    def loss(attention, q, k, v):
        out = attention(q, k, v, mask, deterministic=True)
        assert out.dtype == dtype
        out = out.astype(jnp.float32)
        return (out * mask[:, :, None, None]).sum() + 1e-3 * (out ** 2).sum()

    model_grads, *input_grads = nnx.grad(loss, argnums=(0, 1, 2, 3))(attention, q, k, v)
    for g in input_grads:
        assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()
    for g in (model_grads.e_proj[...], model_grads.f_proj[...]):
        assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0
    assert float(jnp.abs(input_grads[0][0, 2:5].astype(jnp.float32)).sum()) > 0


def test_memory_grows_linearly_forward_and_backward():
    attention = make_attention("linformer", AttentionSpec(num_heads=2, head_dim=16, max_length=4096), k=64)
    ratios = growth_per_doubling(attention, lengths=(1024, 2048, 4096), backward=True)
    assert all(r < 2.5 for r in ratios), f"fwd+bwd temp bytes per doubling 1K->2K->4K: {ratios}"


@pytest.mark.parametrize("protocol,task,vocab,shape,dropout", [
    ("lra_official", "text", 257, (1, 1001, 32), 0.1),       # CLS: max_len + 1; Text config k 32
    ("lra_official", "listops", 20, (1, 2001, 16), 0.1),
    ("lra_official", "image", 256, (1, 1025, 16), 0.2),  # CIFAR attention dropout 0.2
    ("pytorch_lineage", "text", 257, (2, 4096, 256), 0.0),   # mean pooling, no CLS; Nystromformer harness k 256
])
def test_protocols_size_the_projection_per_task(protocol, task, vocab, shape, dropout):
    from lra.build import build_attention, build_model, task_attention_config

    cfg = compose_config(f"task={task}", f"protocol={protocol}", "attention=linformer")
    model = nnx.eval_shape(lambda: build_model(cfg, vocab, build_attention(task_attention_config(cfg))[1]))
    attention = model.blocks[0].self_attention.attention
    assert attention.e_proj.shape == shape and attention.dropout.rate == dropout
    assert (attention.init == "xavier_uniform") == (protocol == "lra_official")
    if task == "image":  # the task's own attention overrides survive the protocol's
        assert task_attention_config(compose_config("task=image", f"protocol={protocol}", "attention=mra2")).patch_order
