"""Informer ProbSparse attention: float64 brute-force reference of its own math, the u = n softmax
limit, sampling from real keys only, padding invariance, randomness, the authors' legacy form against
a reference written from their code, finite gradients, and linear memory at fixed u."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.base import AttentionSpec
from attention.informer import informer_attention, informer_sizes, sample_key_positions
from tests.attention.references import padded_qkv as _inputs
from tests.attention.references import masked_input_grads
from tests.attention.references import softmax_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


_sample = jax.jit(sample_key_positions, static_argnums=2, static_argnames=("shared_across_batch", "ignore_mask"))
_informer = jax.jit(informer_attention, static_argnames=("num_active", "sparsity_mean", "ignore_mask"))


@nnx.jit(static_argnames="deterministic")
def _call(attention, q, k, v, mask, deterministic=True):
    return attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), deterministic=deterministic)


def informer_brute_force(q, k, v, mask, positions, u):
    """Loops: M_i = max - mean of q_i.k_j over the sampled j; the u real queries of largest M (ties: lower
    position) get softmax over real keys, every other query the mean of V over real keys."""
    batch, n, heads, d = q.shape
    out = np.zeros_like(v)
    for b in range(batch):
        real = np.flatnonzero(mask[b])
        for h in range(heads):
            measure = np.full(n, -np.inf)
            for i in real:
                scores = np.array([q[b, i, h] @ k[b, j, h] for j in positions[b, i]])
                measure[i] = scores.max() - scores.mean()
            active = np.argsort(-measure, kind="stable")[:u]
            for i in range(n):
                if i in active:
                    logits = np.array([q[b, i, h] @ k[b, j, h] for j in real]) / np.sqrt(d)
                    weights = np.exp(logits - logits.max())
                    out[b, i, h] = (weights / weights.sum()) @ v[b, real, h]
                else:
                    out[b, i, h] = v[b, real, h].mean(axis=0)
    return out


def skyformer_informer_reference(queries, keys, values, index_sample, factor):
    """Written from pkuzengqi/Skyformer src/models/attention_informer.py (ProbAttention.forward, mask
    unused): (B, H, L, D) tensors; U_part = u = factor ceil(ln L) clipped to L; one (L, U) index table
    for the batch; M = max - sum / L_K; top-u queries get softmax(Q K^T / sqrt(D)) V over all keys, the
    rest V.mean over all positions."""
    B, H, L, D = queries.shape
    u = min(factor * int(np.ceil(np.log(L))), L)
    q_k_sample = np.einsum("bhld,bhlsd->bhls", queries, keys[:, :, index_sample, :])
    m = q_k_sample.max(-1) - q_k_sample.sum(-1) / L
    m_top = np.argsort(-m, axis=-1)[..., :u]
    context = np.broadcast_to(values.mean(axis=-2, keepdims=True), values.shape).copy()
    for b in range(B):
        for h in range(H):
            q_reduce = queries[b, h, m_top[b, h]]
            scores = q_reduce @ keys[b, h].T / np.sqrt(D)
            attn = np.exp(scores - scores.max(-1, keepdims=True))
            attn /= attn.sum(-1, keepdims=True)
            context[b, h, m_top[b, h]] = attn @ values[b, h]
    return context


def test_sizes_follow_the_skyformer_rule():
    # c = ceil(128 / ln L), u = c ceil(ln L): ListOps 2000, Image 1024, Text/Retrieval 4096
    assert informer_sizes(2000, 128) == (17, 136)
    assert informer_sizes(1024, 128) == (19, 133)
    assert informer_sizes(4096, 128) == (16, 144)
    assert informer_sizes(1024, 128, factor=5) == (5, 35)
    attention = make_attention("informer", AttentionSpec(num_heads=2, head_dim=4, max_length=1024))
    assert (attention.factor, attention.num_active) == (19, 133)


def test_matches_brute_force_with_holes():
    q, k, v, mask = _inputs()
    with jax.enable_x64(True):
        positions = _sample(jax.random.key(1), jnp.asarray(mask), 4)
        out = np.asarray(_informer(*map(jnp.asarray, (q, k, v, mask)), positions, num_active=3))
    assert out.dtype == np.float64
    reference = informer_brute_force(q, k, v, mask, np.asarray(positions), 3)
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-10, atol=1e-12)
    lazy = ~np.isclose(out[mask], softmax_reference(q, k, v, mask)[mask]).all(axis=-1)
    assert lazy.any() and not lazy.all()  # some queries are lazy, some active


def test_every_query_active_is_softmax():
    q, k, v, mask = _inputs(seed=2)
    spec = AttentionSpec(num_heads=2, head_dim=4, max_length=10)
    with jax.enable_x64(True):
        attention = make_attention("informer", spec, factor=20)  # u = 60 >= n = 10
        out = np.asarray(_call(attention, q, k, v, mask))
        positions = _sample(jax.random.key(0), jnp.asarray(mask), 5)
        # u = number of real tokens of each example (8 and 7) with padding still present: exact as well
        exact_for_real = np.asarray(_informer(*map(jnp.asarray, (q, k, v, mask)), positions, num_active=8))
    reference = softmax_reference(q, k, v, mask)
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(exact_for_real[mask], reference[mask], rtol=1e-10, atol=1e-12)


def test_samples_come_only_from_real_keys_and_do_not_depend_on_padded_length_or_batch():
    mask = np.ones((3, 12), bool)
    mask[0, :3] = False
    mask[0, 6] = False
    mask[1, 4:] = False
    mask[2] = False
    positions = np.asarray(_sample(jax.random.key(0), jnp.asarray(mask), 50))
    assert positions.shape == (3, 12, 50)
    for b in range(2):
        assert mask[b][positions[b]].all()
        assert set(positions[b].ravel()) == set(np.flatnonzero(mask[b]))  # 600 draws hit every real key
    assert (positions[2] == 0).all()  # no real key: position 0, harmless
    longer = np.concatenate([mask, np.zeros((3, 7), bool)], axis=1)
    np.testing.assert_array_equal(np.asarray(_sample(jax.random.key(0), jnp.asarray(longer), 50))[:, :12], positions)
    alone = np.asarray(_sample(jax.random.key(0), jnp.asarray(mask[:2]), 50))
    np.testing.assert_array_equal(alone, positions[:2])
    shared = np.asarray(_sample(jax.random.key(0), jnp.ones((3, 12), bool), 50, shared_across_batch=True))
    assert (shared == shared[0]).all()
    independent = np.asarray(_sample(jax.random.key(0), jnp.ones((3, 12), bool), 50))
    assert not (independent == independent[0]).all()


def test_padding_invariance_with_lazy_queries():
    """More padding, and garbage at padded positions and holes, leave real outputs unchanged even when
    only some queries are active (the conformance test's sizes make every query active)."""
    q, k, v, mask = _inputs(seed=4, length=14)
    attention = make_attention("informer", AttentionSpec(num_heads=2, head_dim=4, max_length=32), factor=1)
    assert attention.num_active == 4  # 1 * ceil(ln 32)
    reference = np.asarray(_call(attention, q, k, v, mask))
    garbage = np.random.default_rng(9).normal(size=(2, 32, 2, 4)) * 100.0
    longer = [np.where(np.pad(mask, ((0, 0), (0, 18)))[:, :, None, None], np.pad(t, ((0, 0), (0, 18), (0, 0), (0, 0))),
                       garbage) for t in (q, k, v)]
    out = np.asarray(_call(attention, *longer, np.pad(mask, ((0, 0), (0, 18)))))
    np.testing.assert_allclose(out[:, :14][mask], reference[mask], rtol=1e-5, atol=1e-6)


def test_evaluation_is_fixed_by_the_seed_and_training_resamples():
    q, k, v, mask = map(jnp.asarray, _inputs(seed=5, length=30, dtype=np.float32))
    spec = AttentionSpec(num_heads=2, head_dim=4, max_length=30)
    attention = make_attention("informer", spec, factor=1)
    first = np.asarray(_call(attention, q, k, v, mask))
    np.testing.assert_array_equal(np.asarray(_call(attention, q, k, v, mask)), first)
    np.testing.assert_array_equal(
        np.asarray(_call(make_attention("informer", spec, factor=1), q, k, v, mask)), first)
    trained = [np.asarray(_call(attention, q, k, v, mask, deterministic=False)) for _ in range(3)]
    assert any(not np.allclose(t, first) for t in trained)
    other_seed = np.asarray(_call(make_attention("informer", spec, seed=3, factor=1), q, k, v, mask))
    assert not np.allclose(other_seed, first)
    resample = make_attention("informer", spec, factor=1, eval_samples="resample")
    evals = [np.asarray(_call(resample, q, k, v, mask)) for _ in range(3)]
    assert any(not np.allclose(e, evals[0]) for e in evals[1:])


def test_legacy_form_matches_the_authors_code_on_padded_inputs_with_holes():
    q, k, v, mask = _inputs(seed=6, length=30)
    factor = 2  # u = U = 2 ceil(ln 30) = 8 < 30
    attention = make_attention("informer", AttentionSpec(num_heads=2, head_dim=4, max_length=30), factor=factor,
                               legacy_ignore_mask=True, sparsity_mean="length", shared_samples_across_batch=True)
    key = attention.eval_key[...]
    with jax.enable_x64(True):
        out = np.asarray(_call(attention, q, k, v, mask))
        positions = np.asarray(_sample(key, jnp.asarray(mask), attention.num_active, shared_across_batch=True,
                                       ignore_mask=True))
    assert (positions == positions[0]).all()  # one (L, U) table for the batch, from all positions
    to_bhld = lambda t: np.transpose(t, (0, 2, 1, 3))
    reference = skyformer_informer_reference(to_bhld(q), to_bhld(k), to_bhld(v), positions[0], factor)
    np.testing.assert_allclose(out, to_bhld(reference), rtol=1e-10, atol=1e-12)
    corrected = make_attention("informer", AttentionSpec(num_heads=2, head_dim=4, max_length=30), factor=factor)
    assert not np.allclose(np.asarray(_call(corrected, q, k, v, mask))[mask],
                           out[mask], atol=1e-4)


def test_invalid_knobs_name_the_key():
    spec = AttentionSpec(num_heads=2, head_dim=4, max_length=10)
    for knobs, key in (({"sparsity_mean": "median"}, "sparsity_mean"), ({"eval_samples": "never"}, "eval_samples"),
                       ({"factor": 0}, "factor"), ({"nb_features": 0}, "nb_features")):
        with pytest.raises(ValueError, match=f"attention.{key}"):
            make_attention("informer", spec, **knobs)


@pytest.mark.parametrize("dtype", [jnp.float32])  # bfloat16: test_conformance.py BF16_CASES
def test_finite_gradients_with_lazy_queries(dtype):
    q, k, v, mask = _inputs(seed=7, batch=3, length=20, dtype=np.float32)
    mask[2] = False  # an example with no real token
    q, k, v = (jnp.asarray(t, dtype) for t in (q, k, v))
    mask = jnp.asarray(mask)
    attention = make_attention("informer", AttentionSpec(num_heads=2, head_dim=4, max_length=20), factor=1)

    for deterministic in (True, False):
        result = masked_input_grads(attention, q, k, v, mask, deterministic)
        for g in result:
            assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()
        assert float(jnp.abs(result[0][:2].astype(jnp.float32)).sum()) > 0  # active queries get gradients
        assert float(jnp.abs(result[2][:2].astype(jnp.float32)).sum()) > 0


def test_memory_grows_linearly_at_fixed_u():
    attention = make_attention("informer", AttentionSpec(num_heads=2, head_dim=16, max_length=4096), nb_features=32)
    ratios = growth_per_doubling(attention, lengths=(1024, 2048, 4096), backward=True)
    assert all(r < 2.5 for r in ratios), f"fwd+bwd temp bytes per doubling 1K->2K->4K: {ratios}"


def test_approximation_benchmark_exact_at_full_budget_and_error_shrinks_with_it():
    from lra.bench import approximation

    plan = approximation.load_plan()
    entry = plan["families"]["informer"]
    inputs = approximation.random_inputs(1, 64, 2, 8, seed=1)
    rows = [approximation.measure("informer", entry, plan, inputs, budget=b, draws=1) for b in (8, 32, 64)]
    assert all(r["status"] == "ok" for r in rows), rows
    errors = [r["rel_error_mean"] for r in rows]
    assert errors[2] < 1e-5 and errors[1] > 1e-3, errors  # 64 features: u = 80 >= 64 queries, exact softmax
    assert errors[1] < errors[0], errors  # u = 40 active queries beat u = 10
