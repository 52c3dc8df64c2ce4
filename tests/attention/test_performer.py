"""Performer FAVOR+: float64 brute force of its own math, convergence to softmax, orthogonal features,
redraw policies, quirk flags, stability and O(n) memory; the QR without LAPACK (no hang on CPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.base import AttentionSpec
from attention.performer import PerformerAttention, draw_random_features, favor_attention, householder_qr
from tests.attention.references import softmax_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


def _inputs(seed=0, batch=2, length=11, heads=2, dim=8, scale=1.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, length, heads, dim)) * s for s in (scale, scale, 1.0)]


def favor_reference(q, k, v, key_mask, w, eps, *, double_scale=False, stabilise=True):
    """FAVOR+ as an explicit quadratic form: A_ij = phi(q_i).phi(k_j) over real keys, row-normalised.

    Features: m^-1/2 (exp(w.x~ - |x~|^2/2 - c) + eps), c = the query's max over features, or the max
    over real keys and features of the (example, head) for keys; c = 0 when ``stabilise`` is False.
    """
    q, k, v, w = (np.asarray(t, np.float64) for t in (q, k, v, w))
    batch, n, heads, d = q.shape
    m = w.shape[0]
    scale = d ** -0.5 if double_scale else d ** -0.25
    out = np.zeros_like(v)
    for b in range(batch):
        real = [j for j in range(n) if key_mask[b][j]]
        for h in range(heads):
            key_exponents = {}
            for j in real:
                x = k[b, j, h] * scale
                key_exponents[j] = np.array([w[f] @ x - x @ x / 2 for f in range(m)])
            c_k = max((e.max() for e in key_exponents.values()), default=0.0) if stabilise else 0.0
            phi_k = {j: (np.exp(e - c_k) + eps) / np.sqrt(m) for j, e in key_exponents.items()}
            for i in range(n):
                x = q[b, i, h] * scale
                e = np.array([w[f] @ x - x @ x / 2 for f in range(m)])
                phi_q = (np.exp(e - (e.max() if stabilise else 0.0)) + eps) / np.sqrt(m)
                numerator, denominator = np.zeros(v.shape[-1]), 0.0
                for j in real:
                    weight = phi_q @ phi_k[j]
                    numerator += weight * v[b, j, h]
                    denominator += weight
                out[b, i, h] = numerator / denominator if denominator > 0 else 0.0
    return out


def _relative_error(out, reference):
    return float(np.linalg.norm(np.asarray(out) - reference) / np.linalg.norm(reference))


def _performer(spec=AttentionSpec(num_heads=2, head_dim=8, max_length=64), seed=0, **knobs):
    return make_attention("performer", spec, seed=seed, **knobs)


# --- exact math ------------------------------------------------------------------------------------

def test_float64_linear_ordering_equals_explicit_quadratic_form():
    q, k, v = _inputs(0)
    mask = np.ones((3, 11), bool)
    q, k, v = (np.concatenate([t, t[:1] * 3.0]) for t in (q, k, v))  # a third, fully padded example
    mask[0, 7:] = False
    mask[1, 3] = False  # a hole: any key mask works, not only right padding
    mask[2] = False
    with jax.enable_x64(True):
        attention = _performer(num_features=20)  # 20 = 2 full blocks of 8 + 4 rows of a third
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v)), jnp.asarray(mask), deterministic=True))
        w = np.asarray(attention.fixed_features[...])
    assert out.dtype == np.float64 and w.shape == (20, 8)
    np.testing.assert_allclose(out, favor_reference(q, k, v, mask, w, eps=1e-6), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(out[2], 0.0)  # no real key: output 0, finite


def test_max_offsets_leave_outputs_unchanged_when_eps_is_zero():
    q, k, v = _inputs(1, scale=2.0)
    mask = np.ones((2, 11), bool)
    mask[1, 6:] = False
    with jax.enable_x64(True):
        attention = _performer(num_features=12, feature_eps=0.0)
        out = np.asarray(attention(*(jnp.asarray(t) for t in (q, k, v)), jnp.asarray(mask), deterministic=True))
        w = np.asarray(attention.fixed_features[...])
    plain = favor_reference(q, k, v, mask, w, eps=0.0, stabilise=False)
    np.testing.assert_allclose(out, plain, rtol=1e-9, atol=1e-12)


def test_stable_in_fp32_where_plain_exponentials_underflow():
    """Logits of a few hundred: every unstabilised feature exp(w.x~ - |x~|^2/2) of some query
    underflows to 0 in fp32 (0/0 attention); with the offsets FAVOR+ matches the float64 reference."""
    q, k, v = _inputs(2, scale=12.0)
    mask = np.ones((2, 11), bool)
    attention = _performer(num_features=16)
    w = np.asarray(attention.fixed_features[...])
    x = (q * 8 ** -0.25).astype(np.float32)
    plain = np.exp(x @ w.T - (x * x).sum(-1, keepdims=True) / 2)
    assert (plain.max(axis=-1) == 0).any()  # the unstabilised form would divide 0 by 0
    out = attention(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)), jnp.asarray(mask), deterministic=True)
    np.testing.assert_allclose(np.asarray(out), favor_reference(q, k, v, mask, w, eps=1e-6), rtol=1e-3, atol=1e-3)


# --- approximation of softmax attention ------------------------------------------------------------

def _favor_error(num_features, seeds, *, double_scale=False, target_scale=None):
    """Mean over draws of |FAVOR+ - softmax attention| / |softmax attention| on small inputs."""
    q, k, v = _inputs(3, batch=1, length=16, scale=0.5)
    mask = np.ones((1, 16), bool)
    d = q.shape[-1]
    s = (d ** -0.25 if double_scale else 1.0) if target_scale is None else target_scale
    reference = softmax_reference(q * s, k * s, v, mask)  # softmax(q.k s^2 / sqrt(d))
    errors = []
    for seed in seeds:
        # The first m rows of a 4096-row draw are an m-feature draw (whole blocks, independent norms).
        w = draw_random_features(jax.random.key(seed), 4096, d)[:num_features]
        out = favor_attention(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)), jnp.asarray(mask), w,
                              double_scale=double_scale)
        errors.append(_relative_error(out, reference))
    return float(np.mean(errors))


def test_converges_to_softmax_attention_as_features_grow():
    budgets = (16, 256, 4096)
    errors = [_favor_error(m, seeds=range(4)) for m in budgets]
    message = f"mean relative errors at m={budgets}: {np.round(errors, 4)}"
    assert all(b < a / 2 for a, b in zip(errors, errors[1:])), message  # ~ m^-1/2: / 4 per 16x expected
    assert errors[-1] < 0.05, message


def test_double_scale_estimates_softmax_with_temperature_d():
    """Quirk A3: logits q.k/d. At m=4096 the estimate is close to softmax(qk/d), far from softmax(qk/sqrt d)."""
    to_d = _favor_error(4096, seeds=range(2), double_scale=True)
    to_sqrt_d = _favor_error(4096, seeds=range(2), double_scale=True, target_scale=1.0)
    assert to_d < 0.05 and to_sqrt_d > 3 * to_d, (to_d, to_sqrt_d)


# --- random features -------------------------------------------------------------------------------

def test_orthogonal_blocks_and_row_norms():
    d, m = 8, 20
    w = np.asarray(draw_random_features(jax.random.key(0), m, d), np.float64)
    directions = w / np.linalg.norm(w, axis=1, keepdims=True)
    for start in range(0, m, d):
        block = directions[start:start + d]
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-5)
    across = directions[:d] @ directions[d:2 * d].T
    assert np.abs(across).max() > 0.1  # independent blocks are not orthogonal to each other
    norms = np.linalg.norm(w, axis=1)
    assert norms.std() > 0.1 and 1.5 < norms.mean() < 4.0  # chi_8 norms: mean ~2.74, not all sqrt(8)
    fixed = np.asarray(draw_random_features(jax.random.key(0), m, d, row_norms="sqrt_d"))
    np.testing.assert_allclose(np.linalg.norm(fixed, axis=1), np.sqrt(d), rtol=1e-5)
    iid = np.asarray(draw_random_features(jax.random.key(0), d, d, orthogonal=False), np.float64)
    assert np.abs(iid @ iid.T - np.diag(np.diag(iid @ iid.T))).max() > 0.5


def _kernel_estimates(x, y, *, orthogonal=True, legacy_qr_signs=False, blocks=4000, d=8):
    """4,000 independent m = d estimates of exp(x.y): mean over a block of phi(x)_f phi(y)_f (m phi's)."""
    w = np.asarray(draw_random_features(jax.random.key(7), blocks * d, d, orthogonal=orthogonal,
                                        legacy_qr_signs=legacy_qr_signs), np.float64).reshape(blocks, d, d)
    return np.mean(np.exp(w @ x - x @ x / 2) * np.exp(w @ y - y @ y / 2), axis=1)


def test_features_are_unbiased_and_legacy_qr_signs_are_not():
    x = np.zeros(8)
    x[0] = 0.5  # along e_1: every legacy block's first row has a negative first coordinate
    exact = np.exp(x @ x)
    estimate = _kernel_estimates(x, x).mean()
    assert abs(estimate / exact - 1) < 0.03, (estimate, exact)
    legacy = _kernel_estimates(x, x, legacy_qr_signs=True).mean()
    assert legacy / exact < 0.95, (legacy, exact)  # ~ -8.5% expected


def test_orthogonal_features_have_lower_kernel_mse_than_iid():
    rng = np.random.default_rng(0)
    x, y = (t * 0.6 / np.linalg.norm(t) for t in rng.normal(size=(2, 8)))
    exact = np.exp(x @ y)
    mse = {o: np.mean((_kernel_estimates(x, y, orthogonal=o) - exact) ** 2) for o in (True, False)}
    assert mse[True] < 0.95 * mse[False], mse  # ~ 0.84 measured


# --- the QR: Householder in jax.numpy, the draws of LAPACK's QR -------------------------------------

def _lapack_draw(key, num_features, dim, *, legacy_qr_signs=False):
    """The former form of ``draw_random_features`` (chi norms), through LAPACK's ``jnp.linalg.qr``."""
    block_key, norm_key = jax.random.split(key)
    blocks = -(-num_features // dim)
    q, r = jnp.linalg.qr(jax.random.normal(block_key, (blocks, dim, dim), jnp.float32))
    if not legacy_qr_signs:
        q = q * jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0)[:, None, :]
    directions = jnp.swapaxes(q, -1, -2).reshape(blocks * dim, dim)[:num_features]
    norms = jnp.linalg.norm(jax.random.normal(norm_key, (num_features, dim), jnp.float32), axis=-1)
    return np.asarray(directions * norms[:, None])


@pytest.mark.parametrize("d", [1, 8, 64])
def test_householder_qr_is_lapacks_qr(d):
    """Q and diag(R), signs included, equal LAPACK's (numpy, float64): in float64 to round-off, in
    float32 to float32 precision. The last column is never reflected, as in LAPACK."""
    a = np.random.default_rng(d).normal(size=(3, d, d))
    q_lapack, r_lapack = np.linalg.qr(a)
    with jax.enable_x64(True):
        q, diagonal = householder_qr(jnp.asarray(a))
        np.testing.assert_allclose(np.asarray(q), q_lapack, atol=1e-12)
        np.testing.assert_allclose(np.asarray(diagonal), np.diagonal(r_lapack, axis1=-2, axis2=-1), rtol=1e-12)
    q32, diagonal32 = householder_qr(jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(np.asarray(q32), q_lapack, atol=2e-5)
    np.testing.assert_allclose(np.asarray(diagonal32), np.diagonal(r_lapack, axis1=-2, axis2=-1), rtol=1e-4)
    assert (np.sign(np.asarray(diagonal32)) == np.sign(np.diagonal(r_lapack, axis1=-2, axis2=-1))).all()


@pytest.mark.parametrize("legacy_qr_signs", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_draws_are_those_of_the_lapack_qr_for_the_same_key(legacy_qr_signs):
    """The same key gives the same W as the former jnp.linalg.qr form (to float32 round-off), so the
    features' distribution is unchanged, with and without the sign correction."""
    for seed, (m, d) in enumerate([(20, 8), (256, 16), (128, 64)]):
        key = jax.random.key(seed)
        w = np.asarray(draw_random_features(key, m, d, legacy_qr_signs=legacy_qr_signs))
        np.testing.assert_allclose(w, _lapack_draw(key, m, d, legacy_qr_signs=legacy_qr_signs), atol=5e-5)


def _custom_calls(compiled) -> set[str]:
    """The custom-call targets of a compiled computation (e.g. ``lapack_sgeqrf_ffi``)."""
    return set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text()))


@pytest.mark.parametrize("redraw", ["every_call", "every_k_steps"])
def test_training_step_holds_no_lapack_call(redraw):
    """A training call that redraws compiles to plain XLA: no LAPACK custom call, the kind that hung."""
    attention = _performer(redraw=redraw, redraw_interval=2, num_features=32)
    graph, state = nnx.split(attention)
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(9, batch=1, length=6))
    mask = jnp.ones((1, 6), bool)

    def step(state, q):
        return nnx.grad(lambda module, q: module(q, k, v, mask, deterministic=False).sum(), argnums=1)(
            nnx.merge(graph, state), q)

    assert _custom_calls(jax.jit(step).lower(state, q).compile()) == set()
    assert any("lapack" in c for c in _custom_calls(jax.jit(jnp.linalg.qr).lower(jnp.ones((2, 4, 4))).compile()))


HANG_CHECK = textwrap.dedent("""
    import sys, time
    import jax
    from lra.bench.efficiency import Point, Settings, encoder_case
    from lra.training.steps import compile_step
    length, batch, calls, setting = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    point = Point("performer", "encoder", "forward_backward", batch, length, "float32")
    function, arguments = encoder_case(point, Settings(encoder_setting=setting))
    compiled = compile_step(function, *arguments)
    print("custom calls:", compiled.as_text().count("custom_call_target="), flush=True)
    for call in range(calls):
        jax.block_until_ready(compiled(*arguments))
        print("call", call, "done", flush=True)
""")
@pytest.mark.slow
def test_text_encoder_forward_backward_at_length_1024_finishes(tmp_path):
    """Where the LAPACK form hung on 2 CPU cores (about one run in three of 3-12 calls): the efficiency
    benchmark's Text encoder (4 layers redrawing at once, 4 heads x 64, 256 features) at length 1024,
    batch 4, twelve forward+backward passes, in a subprocess so that a hang fails the test instead of
    blocking it. The compiled step holds no custom call at all."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "JAX_PLATFORMS": "cpu"}
    setting = repo / "configs" / "bench" / "text_encoder.yaml"
    try:
        done = subprocess.run([sys.executable, "-c", HANG_CHECK, "1024", "4", "12", str(setting)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"Performer forward+backward did not finish in 1200 s: {timeout.stdout!r}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "custom calls: 0" in done.stdout and "call 11 done" in done.stdout, done.stdout


# --- redraw policies -------------------------------------------------------------------------------

def _calls(attention, pattern):
    """Outputs of a sequence of calls, 't' = training, 'e' = evaluation."""
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(4, batch=1, length=6))
    mask = jnp.ones((1, 6), bool)
    return [np.asarray(attention(q, k, v, mask, deterministic=c == "e")) for c in pattern]


def _same(a, b):
    return np.array_equal(a, b)


def test_redraw_never_uses_the_evaluation_draw_in_training():
    outs = _calls(_performer(redraw="never", num_features=16), "etttte")
    assert all(_same(o, outs[0]) for o in outs)


def test_redraw_every_call_changes_training_draws_but_not_evaluation():
    attention = _performer(redraw="every_call", num_features=16)
    e0, t1, t2, t3, e1 = _calls(attention, "ettte")
    assert not _same(t1, t2) and not _same(t2, t3) and not _same(t1, e0)
    assert _same(e0, e1)  # evaluation is fixed however many training calls happened
    assert int(attention.training_calls[...]) == 3


def test_redraw_every_k_steps_changes_exactly_every_k_training_calls():
    attention = _performer(redraw="every_k_steps", redraw_interval=3, num_features=16)
    outs = _calls(attention, "ttettttte")
    train = [o for o, c in zip(outs, "ttettttte") if c == "t"]  # training calls 0..6
    changes = [not _same(a, b) for a, b in zip(train, train[1:])]
    assert changes == [False, False, True, False, False, True], changes  # new draw at calls 3 and 6
    assert _same(outs[2], outs[-1])  # evaluation unaffected
    assert int(attention.training_calls[...]) == 7


def test_call_counter_advances_through_jit_and_grad_like_the_train_step():
    attention = _performer(redraw="every_k_steps", redraw_interval=2, num_features=16)
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(5, batch=1, length=6))
    mask = jnp.ones((1, 6), bool)
    graph, state = nnx.split(attention)

    @jax.jit
    def step(state):
        module = nnx.merge(graph, state)
        loss = nnx.grad(lambda mod, q: mod(q, k, v, mask, deterministic=False).sum(), argnums=1)
        return nnx.state(module), loss(module, q)

    for expected in (1, 2, 3):
        state, grad = step(state)
        assert int(state["training_calls"][...]) == expected
        assert np.isfinite(np.asarray(grad)).all()


def test_evaluation_is_deterministic_given_the_seed():
    a, b, c = (_calls(_performer(seed=s, num_features=16), "e")[0] for s in (0, 0, 1))
    assert _same(a, b) and not _same(a, c)


# --- masking, batch coupling, gradients --------------------------------------------------------------

@pytest.mark.parametrize("knobs", [{}, {"double_scale": True}, {"key_offset": "batch"}])
def test_padding_invariance(knobs):
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(6, length=9))
    attention = _performer(num_features=32, **knobs)
    reference = attention(q, k, v, jnp.ones((2, 9), bool), deterministic=True)
    garbage = [jax.random.normal(key, (2, 7, 2, 8)) * 30.0 for key in jax.random.split(jax.random.key(1), 3)]
    padded = [jnp.concatenate([t, g], axis=1) for t, g in zip((q, k, v), garbage)]
    out = attention(*padded, jnp.arange(16)[None, :].repeat(2, 0) < 9, deterministic=True)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out[:, :9]), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_batch_key_offset_couples_examples_and_the_default_does_not():
    """Quirk A5: with the batch-wide key max, a batch mate with large keys drives this example's key
    features into the eps floor (fp32 underflow), so its output changes; per-example offsets do not."""
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(7, length=9))
    mask = jnp.ones((2, 9), bool)
    for key_offset, coupled in (("per_example", False), ("batch", True)):
        attention = _performer(num_features=32, key_offset=key_offset)
        before = np.asarray(attention(q, k, v, mask, deterministic=True)[0])
        after = np.asarray(attention(q, k.at[1].multiply(40.0), v, mask, deterministic=True)[0])
        assert (np.abs(after - before).max() > 1e-2) == coupled, key_offset


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_gradients_with_a_fully_padded_example_and_large_inputs(dtype):
    q, k, v = (jnp.asarray(t, dtype) for t in _inputs(8, length=12, scale=6.0))
    mask = jnp.stack([jnp.arange(12) < 5, jnp.zeros(12, bool)])
    attention = _performer(num_features=32)

    def loss(q, k, v):
        out = attention(q, k, v, mask, deterministic=True)
        assert out.dtype == dtype
        return (out.astype(jnp.float32) * mask[:, :, None, None]).sum() + 1e-3 * (out.astype(jnp.float32) ** 2).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()
    assert float(jnp.abs(grads[1][0, :5].astype(jnp.float32)).sum()) > 0  # keys get gradients
    assert float(jnp.abs(grads[1][0, 5:].astype(jnp.float32)).sum()) == 0  # padded keys get none


def test_smoke_shape_with_more_features_than_tokens():
    """The smoke preset: head_dim 16, 256 + 1 tokens, the default m = 256 features (16 QR blocks)."""
    attention = make_attention("performer", AttentionSpec(num_heads=2, head_dim=16, max_length=257))
    q, k, v = (jax.random.normal(key, (2, 257, 2, 16)) for key in jax.random.split(jax.random.key(0), 3))
    mask = jnp.arange(257)[None, :] < jnp.array([[257], [40]])
    for deterministic in (True, False):
        out = attention(q, k, v, mask, deterministic=deterministic)
        assert out.shape == q.shape and np.isfinite(np.asarray(out)).all()
    assert attention.fixed_features[...].shape == (256, 16)


def test_memory_grows_linearly():
    attention = _performer(AttentionSpec(num_heads=2, head_dim=16, max_length=2048))
    ratios = growth_per_doubling(attention, backward=True)
    assert all(r < 2.5 for r in ratios), f"fwd+bwd temp bytes per doubling of n (512->1024->2048): {ratios}"


@pytest.mark.parametrize("knob, value", [("redraw", "sometimes"), ("row_norms", "unit"),
                                         ("key_offset", "global"), ("num_features", 0)])
def test_bad_knobs_name_the_key(knob, value):
    with pytest.raises(ValueError, match=f"attention.{knob}"):
        PerformerAttention(AttentionSpec(num_heads=1, head_dim=8, max_length=8), rngs=nnx.Rngs(attention=0),
                           **{knob: value})


# --- the PyTorch LRA harnesses' Performer ----------------------------------------------------------

def pytorch_harness_reference(q, k, v, mask, w, eps=1e-4):
    """The Nystromformer/Skyformer harness's Performer (Skyformer src/models/attention_performer.py:
    a wrapper around the vendored lucidrains FastAttention), written from its steps in float64 numpy.

    The wrapper divides q and k by d^1/4 and zeroes K and V at padded positions; the feature map scales
    by d^-1/4 again, subtracts |x|^2/2 and a stabiliser (queries: the row max of the projection W x
    only; keys: one max of W x over the whole tensor, zeroed keys included) and adds eps inside
    ratio * (exp(.) + eps); the linear attention divides by phi(q) . sum over ALL keys of phi(k)."""
    q, k, v = (np.transpose(np.asarray(t, np.float64), (0, 2, 1, 3)) for t in (q, k, v))  # (b, h, n, d)
    w = np.asarray(w, np.float64)
    d, ratio = q.shape[-1], w.shape[0] ** -0.5
    real = mask[:, None, :, None].astype(np.float64)
    q, k, v = q / d ** 0.25, k / d ** 0.25 * real, v * real
    normalizer = d ** -0.25

    def projected(x):
        return np.einsum("bhid,jd->bhij", normalizer * x, w), (x ** 2).sum(-1, keepdims=True) / 2 * normalizer ** 2

    dash_q, diag_q = projected(q)
    phi_q = ratio * (np.exp(dash_q - diag_q - dash_q.max(-1, keepdims=True)) + eps)
    dash_k, diag_k = projected(k)
    phi_k = ratio * (np.exp(dash_k - diag_k - dash_k.max()) + eps)
    denominator = np.einsum("bhnm,bhm->bhn", phi_q, phi_k.sum(-2))
    out = np.einsum("bhnm,bhme->bhne", phi_q, np.einsum("bhnm,bhne->bhme", phi_k, v)) / denominator[..., None]
    return np.transpose(out, (0, 2, 1, 3))


PYTORCH_HARNESS = dict(redraw="never", double_scale=True, key_offset="batch", legacy_qr_signs=True,
                       feature_eps=1e-4, query_offset="projection", padded_keys="zeroed")


def test_pytorch_harness_flag_set_reproduces_it_on_padding_and_holes():
    """The documented flag set equals the harness in float64 (1e-10) with 8 of 12 keys padded and with
    holes; without query_offset/padded_keys the gap is large (the audit measured 1.49 relative)."""
    q, k, v = _inputs(21, batch=3, length=12, dim=8, scale=1.5)
    mask = np.ones((3, 12), bool)
    mask[0, 4:] = False  # 8 of 12 keys padded
    mask[1, [1, 5, 6, 9]] = False  # holes
    with jax.enable_x64(True):
        attention = _performer(num_features=16, **PYTORCH_HARNESS)
        w = np.asarray(attention.fixed_features[...])
        args = [jnp.asarray(t, jnp.float64) for t in (q, k, v)] + [jnp.asarray(mask)]
        ours = np.asarray(attention(*args, deterministic=True))
        older = np.asarray(_performer(num_features=16, **{**PYTORCH_HARNESS, "query_offset": "exponent",
                                                          "padded_keys": "excluded"})(*args, deterministic=True))
    reference = pytorch_harness_reference(q, k, v, mask, w)
    real = mask[:, :, None, None]
    np.testing.assert_allclose(ours * real, reference * real, rtol=1e-10, atol=1e-12)
    assert _relative_error(older[0] * real[0], reference[0] * real[0]) > 0.1


def test_projection_query_offset_loses_large_queries_dependence_on_the_query():
    """Google's and lucidrains' eps placement: exp(W q~ - |q~|^2/2 - max W q~) + eps. For a large-norm
    query every exp term falls far below eps, phi(q) -> eps (1,..,1), so every such query gets the
    same output (a fixed key-weighted mean of the values); the default (offset by the exponent's max)
    keeps each query's own weights."""
    q, k, v = (jnp.asarray(t, jnp.float32) for t in _inputs(22, batch=1, length=10, scale=1.0))
    mask = jnp.ones((1, 10), bool)
    big = q * 12.0
    for offset, loses in (("projection", True), ("exponent", False)):
        out = np.asarray(_performer(num_features=64, query_offset=offset)(big, k, v, mask, deterministic=True))
        spread = np.abs(out - out[:, :1]).max()  # differences between the query positions' outputs
        assert (spread < 1e-4) == loses, (offset, spread)
