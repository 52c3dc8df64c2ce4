"""Tests for lra.training.optimizer: LRA factor schedule, OneCycleLR schedule, beta1 cycle, clipping, AdamW.

Every expected value is computed here from the published formulas (reference §4.2 and §5.3),
independently of the module under test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lra.training.optimizer import (
    build_optimizer,
    build_schedule,
    factor_schedule,
    one_cycle_beta1,
    one_cycle_schedule,
)

# --------------------------------------------------------------------------- #
# Independent reference formulas
# --------------------------------------------------------------------------- #


def ref_factor_lr(step: float, base: float, factors: str, warmup: int, steps_per_cycle: int) -> float:
    """Official LRA ``create_learning_rate_scheduler`` (constant contributes ``base``)."""
    ret = 1.0
    for name in (n.strip() for n in factors.split("*")):
        if name == "constant":
            ret *= base
        elif name == "linear_warmup":
            ret *= min(1.0, step / warmup)
        elif name == "rsqrt_decay":
            ret /= math.sqrt(max(step, warmup))
        elif name == "cosine_decay":
            progress = max(0.0, (step - warmup) / steps_per_cycle)
            ret *= max(0.0, 0.5 * (1.0 + math.cos(math.pi * (progress % 1.0))))
        else:
            raise AssertionError(name)
    return ret


def _torch_one_cycle_phases(total_steps, pct_start, start, peak, end):
    """torch.optim.lr_scheduler.OneCycleLR's two phases: (end_step, start_value, end_value)."""
    return [
        (float(pct_start * total_steps) - 1, start, peak),
        (total_steps - 1, peak, end),
    ]


def _torch_one_cycle_value(step, phases):
    """torch OneCycleLR.get_lr with anneal_strategy='linear' (``_annealing_linear``)."""
    start_step = 0.0
    for i, (end_step, start_value, end_value) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step)
            return (end_value - start_value) * pct + start_value
        start_step = end_step
    raise AssertionError("unreachable")


def ref_one_cycle_lr(step, max_lr, total_steps, pct_start, div_factor=25.0, final_div_factor=1e4):
    initial = max_lr / div_factor
    phases = _torch_one_cycle_phases(total_steps, pct_start, initial, max_lr, initial / final_div_factor)
    return _torch_one_cycle_value(step, phases)


def ref_one_cycle_momentum(step, total_steps, pct_start, base=0.85, high=0.95):
    phases = _torch_one_cycle_phases(total_steps, pct_start, high, base, high)
    return _torch_one_cycle_value(step, phases)


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


# --------------------------------------------------------------------------- #
# Official LRA factor schedule
# --------------------------------------------------------------------------- #

RSQRT = "constant*linear_warmup*rsqrt_decay"
COSINE = "constant*linear_warmup*cosine_decay"


def test_rsqrt_schedule_key_points():
    base, warmup = 0.05, 1000
    sched = factor_schedule(base, RSQRT, warmup, steps_per_cycle=10_000)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(warmup)), base / math.sqrt(warmup), rtol=1e-6)
    np.testing.assert_allclose(float(sched(4 * warmup)), base / (2 * math.sqrt(warmup)), rtol=1e-6)
    np.testing.assert_allclose(float(sched(warmup // 2)), 0.5 * base / math.sqrt(warmup), rtol=1e-6)


def test_rsqrt_schedule_rises_then_falls_and_matches_formula():
    base, warmup = 0.05, 100
    sched = factor_schedule(base, RSQRT, warmup, steps_per_cycle=1)
    steps = np.arange(0, 2_000)
    got = _values(jax.jit(sched), steps)
    want = np.array([ref_factor_lr(s, base, RSQRT, warmup, 1) for s in steps])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-12)
    # strictly increasing during warmup, peak at warmup, strictly decreasing afterwards
    assert np.all(np.diff(got[: warmup + 1]) > 0)
    assert np.all(np.diff(got[warmup:]) < 0)
    assert int(np.argmax(got)) == warmup


def test_rsqrt_schedule_accepts_traced_and_array_steps():
    sched = factor_schedule(1.0, RSQRT, 10, steps_per_cycle=1)
    steps = jnp.arange(0, 50)
    got = np.asarray(jax.vmap(sched)(steps))
    want = np.array([ref_factor_lr(int(s), 1.0, RSQRT, 10, 1) for s in steps])
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_cosine_schedule_matches_formula_over_several_cycles():
    base, warmup, cycle = 0.01, 50, 200
    sched = factor_schedule(base, COSINE, warmup, steps_per_cycle=cycle)
    steps = np.arange(0, warmup + 3 * cycle + 7)
    got = _values(jax.jit(sched), steps)
    want = np.array([ref_factor_lr(s, base, COSINE, warmup, cycle) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert got[0] == 0.0
    np.testing.assert_allclose(got[warmup], base, rtol=1e-6)  # cos(0) = 1 right at the end of warmup
    np.testing.assert_allclose(got[warmup + cycle // 2], base / 2, rtol=1e-5)  # half way: 0.5 (1 + cos(pi/2))
    # warmup rises, the first cycle decays monotonically towards 0, then the cycle restarts at base
    assert np.all(np.diff(got[: warmup + 1]) > 0)
    assert np.all(np.diff(got[warmup : warmup + cycle]) < 0)
    assert got[warmup + cycle - 1] < 1e-3 * base
    np.testing.assert_allclose(got[warmup + cycle], base, rtol=1e-5)


def test_factor_names_may_contain_spaces():
    a = factor_schedule(0.1, "constant * linear_warmup * rsqrt_decay", 20, 1)
    b = factor_schedule(0.1, RSQRT, 20, 1)
    for s in (0, 5, 20, 300):
        assert float(a(s)) == float(b(s))


@pytest.mark.parametrize("factors, bad", [
    ("constant*linear_warmup*rsqrt_decayy", "rsqrt_decayy"),
    ("constant*exponential_decay", "exponential_decay"),
    ("Constant", "Constant"),
])
def test_unknown_factor_raises_naming_it(factors, bad):
    with pytest.raises(ValueError, match=repr(bad)):
        factor_schedule(0.1, factors, 10, 10)


def test_build_schedule_factors_defaults_cycle_to_total_steps():
    cfg = {"kind": "factors", "base_learning_rate": 0.2, "factors": COSINE, "warmup_steps": 10}
    sched = build_schedule(cfg, total_steps=90)
    for s in (0, 5, 10, 40, 55, 99, 100, 150):
        np.testing.assert_allclose(float(sched(s)), ref_factor_lr(s, 0.2, COSINE, 10, 90), rtol=1e-5, atol=1e-9)


def test_build_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="cosine"):
        build_schedule({"kind": "cosine"}, 100)


# --------------------------------------------------------------------------- #
# torch OneCycleLR (linear) and beta1 cycle
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("total_steps, pct_start", [(100, 0.3), (1000, 0.1), (10, 0.25), (7, 0.5)])
def test_one_cycle_matches_torch_formula(total_steps, pct_start):
    max_lr = 3e-3
    sched = one_cycle_schedule(max_lr, total_steps, pct_start)
    steps = np.arange(total_steps)
    got = _values(jax.jit(sched), steps)
    want = np.array([ref_one_cycle_lr(s, max_lr, total_steps, pct_start) for s in steps])
    # float32 arithmetic: errors of a few ulps of max_lr (the last value, max_lr / 250000, is ~1% off)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max_lr)
    # the three anchor points of the reference
    np.testing.assert_allclose(got[0], max_lr / 25, rtol=1e-6)
    np.testing.assert_allclose(got[-1], max_lr / (25 * 1e4), rtol=2e-2)
    assert got[-1] < got[-2] and got[-1] == got.min()
    peak = pct_start * total_steps - 1
    if float(peak).is_integer():
        np.testing.assert_allclose(got[int(peak)], max_lr, rtol=1e-6)
        assert int(np.argmax(got)) == int(peak)


def test_one_cycle_peak_and_end_exact_values():
    sched = one_cycle_schedule(1.0, total_steps=100, pct_start=0.3)
    np.testing.assert_allclose(float(sched(0)), 0.04, rtol=1e-6)
    np.testing.assert_allclose(float(sched(29)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(sched(28)), 0.04 + 0.96 * 28 / 29, rtol=1e-6)
    np.testing.assert_allclose(float(sched(30)), 1.0 + (4e-6 - 1.0) * 1 / 70, rtol=1e-6)
    np.testing.assert_allclose(float(sched(99)), 4e-6, rtol=2e-2)


def test_one_cycle_custom_div_factors():
    sched = one_cycle_schedule(2.0, 50, 0.2, div_factor=10.0, final_div_factor=100.0)
    steps = np.arange(50)
    want = [ref_one_cycle_lr(s, 2.0, 50, 0.2, div_factor=10.0, final_div_factor=100.0) for s in steps]
    np.testing.assert_allclose(_values(sched, steps), want, rtol=1e-5, atol=1e-6 * 2.0)


@pytest.mark.parametrize("total_steps, pct_start", [(100, 0.3), (10, 0.25)])
def test_beta1_cycle_matches_torch_momentum(total_steps, pct_start):
    b1 = one_cycle_beta1(total_steps, pct_start)
    steps = np.arange(total_steps)
    got = _values(jax.jit(b1), steps)
    want = np.array([ref_one_cycle_momentum(s, total_steps, pct_start) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[0], 0.95, rtol=1e-6)
    np.testing.assert_allclose(got[-1], 0.95, rtol=1e-6)
    peak = pct_start * total_steps - 1
    if float(peak).is_integer():
        np.testing.assert_allclose(got[int(peak)], 0.85, rtol=1e-6)
        assert int(np.argmin(got)) == int(peak)


def test_build_schedule_one_cycle_uses_warmup_as_pct_start():
    cfg = {"kind": "one_cycle", "max_learning_rate": 1e-3, "warmup_steps": 80}
    sched = build_schedule(cfg, total_steps=800)
    for s in (0, 40, 79, 80, 400, 799):
        np.testing.assert_allclose(float(sched(s)), ref_one_cycle_lr(s, 1e-3, 800, 0.1), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(float(sched(79)), 1e-3, rtol=1e-6)


# --------------------------------------------------------------------------- #
# build_optimizer: clipping, decoupled weight decay, beta1 cycling
# --------------------------------------------------------------------------- #


def _cfg(schedule, *, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, clip=None, cycle_beta1=False):
    cfg = {"schedule": schedule, "b1": b1, "b2": b2, "eps": eps, "weight_decay": wd, "cycle_beta1": cycle_beta1}
    if clip is not None:
        cfg["grad_clip"] = clip
    return cfg


CONSTANT_LR = {"kind": "factors", "base_learning_rate": 0.1, "factors": "constant", "warmup_steps": 0}


def _first_update(cfg, grads, params):
    tx, _ = build_optimizer(cfg, total_steps=100)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return jax.tree.map(np.asarray, updates), state


def test_global_norm_clipping_bounds_a_huge_gradient():
    # eps = 1 makes Adam's first step g / (|g| + 1): sensitive to the gradient's size, so clipping shows.
    params = {"w": jnp.zeros(2)}
    grads = {"w": jnp.array([3e6, 4e6])}
    clipped = np.array([0.6, 0.8])  # norm 5e6 -> rescaled to norm 1
    upd, state = _first_update(_cfg(CONSTANT_LR, eps=1.0, clip={"kind": "global_norm", "max": 1.0}), grads, params)
    np.testing.assert_allclose(upd["w"], -0.1 * clipped / (clipped + 1.0), rtol=1e-5)
    mu = np.asarray(optax.tree_utils.tree_get(state, "mu")["w"])
    np.testing.assert_allclose(mu, 0.1 * clipped, rtol=1e-5)  # (1 - b1) * clipped gradient
    assert np.linalg.norm(mu) <= 0.1 * 1.0 + 1e-6

    unclipped, _ = _first_update(_cfg(CONSTANT_LR, eps=1.0), grads, params)
    np.testing.assert_allclose(unclipped["w"], [-0.1, -0.1], rtol=1e-5)  # sanity: without clipping it differs


def test_global_norm_clipping_leaves_small_gradients_alone():
    params = {"w": jnp.zeros(2)}
    grads = {"w": jnp.array([0.3, -0.4])}  # norm 0.5 < 1
    upd, _ = _first_update(_cfg(CONSTANT_LR, eps=1.0, clip={"kind": "global_norm", "max": 1.0}), grads, params)
    g = np.array([0.3, -0.4])
    np.testing.assert_allclose(upd["w"], -0.1 * g / (np.abs(g) + 1.0), rtol=1e-5)


def test_value_clipping_clips_each_element():
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.array([5.0, -0.3, -7.0]), "b": jnp.array([[0.5, 2.0], [-1.5, -0.99]])}
    want_clipped = {"a": np.array([1.0, -0.3, -1.0]), "b": np.array([[0.5, 1.0], [-1.0, -0.99]])}
    upd, state = _first_update(_cfg(CONSTANT_LR, eps=1.0, clip={"kind": "value", "max": 1.0}), grads, params)
    mu = optax.tree_utils.tree_get(state, "mu")
    for key, g in want_clipped.items():
        np.testing.assert_allclose(np.asarray(mu[key]), 0.1 * g, rtol=1e-5)
        np.testing.assert_allclose(upd[key], -0.1 * g / (np.abs(g) + 1.0), rtol=1e-5)


def test_clip_kind_none_and_unknown():
    params = {"w": jnp.zeros(1)}
    grads = {"w": jnp.array([1e6])}
    upd_none, _ = _first_update(_cfg(CONSTANT_LR, eps=1.0, clip={"kind": "none"}), grads, params)
    upd_default, _ = _first_update(_cfg(CONSTANT_LR, eps=1.0), grads, params)
    np.testing.assert_allclose(upd_none["w"], upd_default["w"])
    np.testing.assert_allclose(upd_none["w"], [-0.1 * 1e6 / (1e6 + 1.0)], rtol=1e-6)
    with pytest.raises(ValueError, match="norm"):
        build_optimizer(_cfg(CONSTANT_LR, clip={"kind": "norm", "max": 1.0}), 100)


def test_cycle_beta1_requires_one_cycle():
    schedule = {"kind": "factors", "base_learning_rate": 0.1, "factors": RSQRT, "warmup_steps": 10}
    with pytest.raises(ValueError, match="cycle_beta1"):
        build_optimizer(_cfg(schedule, cycle_beta1=True), 100)


def _reference_adamw(params, grads_seq, lrs, b1s, b2, eps, wd):
    """Hand-written AdamW (optax / torch semantics) in float64; returns params after each step."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in p.items()}
    nu = {k: np.zeros_like(v) for k, v in p.items()}
    history = []
    for t, (grads, lr, b1) in enumerate(zip(grads_seq, lrs, b1s), start=1):
        new = {}
        for k in p:
            g = np.asarray(grads[k], np.float64)
            mu[k] = b1 * mu[k] + (1 - b1) * g
            nu[k] = b2 * nu[k] + (1 - b2) * g * g
            m_hat = mu[k] / (1 - b1 ** t)
            v_hat = nu[k] / (1 - b2 ** t)
            adam_dir = m_hat / (np.sqrt(v_hat) + eps)
            new[k] = p[k] - lr * (adam_dir + wd * p[k])
        p = new
        history.append(p)
    return history


def _flat(tree):
    """{'a': x, 'b': {'c': y}} -> {'a': x, 'b/c': y} as numpy."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
    return out


def _run_optimizer(cfg, total_steps, params, grads_seq):
    tx, schedule = build_optimizer(cfg, total_steps)
    state = tx.init(params)
    history = []
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for grads in grads_seq:
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(_flat(params))
    return history, schedule


def _random_tree(rng, scale=1.0):
    return {"a": jnp.asarray(rng.normal(size=(2, 3)) * scale, jnp.float32),
            "b": {"c": jnp.asarray(rng.normal(size=(4,)) * scale, jnp.float32)}}


def test_adamw_factor_schedule_is_decoupled_weight_decay_times_lr():
    rng = np.random.default_rng(0)
    params = _random_tree(rng)
    grads_seq = [_random_tree(rng, scale=0.1) for _ in range(6)]
    base, warmup, wd, b1, b2, eps = 0.5, 4, 0.1, 0.9, 0.98, 1e-9
    schedule = {"kind": "factors", "base_learning_rate": base, "factors": RSQRT, "warmup_steps": warmup}
    history, _ = _run_optimizer(_cfg(schedule, b1=b1, b2=b2, eps=eps, wd=wd), 100, params, grads_seq)

    # lr(0) = 0: the very first step changes nothing at all, weight decay included
    start = _flat(params)
    for key in start:
        np.testing.assert_array_equal(history[0][key], start[key])

    lrs = [ref_factor_lr(t, base, RSQRT, warmup, 1) for t in range(len(grads_seq))]
    assert lrs[0] == 0.0
    want = _reference_adamw(_flat(params), [_flat(g) for g in grads_seq], lrs, [b1] * 6, b2, eps, wd)
    for got_p, want_p in zip(history, want):
        for key in want_p:
            np.testing.assert_allclose(got_p[key], want_p[key], rtol=2e-5, atol=1e-6)
    # the decay acts on every parameter: with zero gradients the params still shrink by (1 - lr * wd)
    tx, _ = build_optimizer(_cfg(schedule, b1=b1, b2=b2, eps=eps, wd=wd), 100)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    p = params
    for _ in range(3):
        u, state = tx.update(zeros, state, p)
        p = optax.apply_updates(p, u)
    p0, p3 = _flat(params), _flat(p)
    shrink = (1 - lrs[1] * wd) * (1 - lrs[2] * wd)
    for key in p0:
        np.testing.assert_allclose(p3[key], p0[key] * shrink, rtol=1e-6)


def test_adamw_one_cycle_with_cycled_beta1_matches_hand_computation():
    rng = np.random.default_rng(1)
    params = _random_tree(rng)
    total, warmup = 10, 3
    grads_seq = [_random_tree(rng, scale=0.5) for _ in range(total)]
    max_lr, b2, eps, wd = 1e-2, 0.999, 1e-6, 0.01
    schedule = {"kind": "one_cycle", "max_learning_rate": max_lr, "warmup_steps": warmup}
    history, _ = _run_optimizer(_cfg(schedule, b1=0.9, b2=b2, eps=eps, wd=wd, cycle_beta1=True), total, params,
                                grads_seq)
    lrs = [ref_one_cycle_lr(t, max_lr, total, warmup / total) for t in range(total)]
    b1s = [ref_one_cycle_momentum(t, total, warmup / total) for t in range(total)]
    assert b1s[0] == pytest.approx(0.95) and min(b1s) == pytest.approx(0.85)
    want = _reference_adamw(_flat(params), [_flat(g) for g in grads_seq], lrs, b1s, b2, eps, wd)
    for got_p, want_p in zip(history, want):
        for key in want_p:
            np.testing.assert_allclose(got_p[key], want_p[key], rtol=2e-5, atol=1e-6)

    # without cycling, the configured b1 is used instead (and the result differs)
    fixed, _ = _run_optimizer(_cfg(schedule, b1=0.9, b2=b2, eps=eps, wd=wd), total, params, grads_seq)
    want_fixed = _reference_adamw(_flat(params), [_flat(g) for g in grads_seq], lrs, [0.9] * total, b2, eps, wd)
    for key in want_fixed[-1]:
        np.testing.assert_allclose(fixed[-1][key], want_fixed[-1][key], rtol=2e-5, atol=1e-6)
    assert not np.allclose(fixed[-1]["a"], history[-1]["a"], rtol=1e-7, atol=0)


def test_build_optimizer_returns_the_schedule_it_uses():
    schedule = {"kind": "one_cycle", "max_learning_rate": 1e-3, "warmup_steps": 20}
    _, sched = build_optimizer(_cfg(schedule), 200)
    np.testing.assert_allclose(float(sched(19)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(sched(0)), 4e-5, rtol=1e-6)
