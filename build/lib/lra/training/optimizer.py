"""Optimisers and learning-rate schedules of the two LRA training protocols.

Official LRA (``google-research/long-range-arena``, ``utils/train_utils.py``):
    lr(t) = prod(factors),  factors from {constant (= base), linear_warmup, rsqrt_decay, cosine_decay}
        linear_warmup = min(1, t / warmup)
        rsqrt_decay   = 1 / sqrt(max(t, warmup))
        cosine_decay  = max(0, 0.5 (1 + cos(pi * ((max(0, t - warmup) / steps_per_cycle) mod 1))))
    so lr(0) = 0. The optimiser is Adam(0.9, 0.98, eps 1e-9) with decoupled weight decay multiplied
    by the learning rate on every parameter, which is ``optax.adamw`` without a mask.

PyTorch lineage (Nystromformer / Skyformer / MRA ``run_tasks.py``): AdamW(0.9, 0.999, eps 1e-6, wd 0)
with torch's ``OneCycleLR(anneal_strategy='linear')``: the LR rises linearly from max/25 to max at
step pct_start * T - 1, then falls linearly to max / (25 * 1e4) at step T - 1. Torch cycles Adam's
beta1 by default (0.95 -> 0.85 at the peak -> 0.95); the ``cycle_beta1`` option reproduces that
(quirk O3 in the reference).

Gradient clipping: none, by global norm (official Path-X), or by value (Skyformer, quirk O4).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import optax

FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "cosine_decay")


def factor_schedule(base_learning_rate: float, factors: str, warmup_steps: int,
                    steps_per_cycle: int) -> optax.Schedule:
    """The official LRA schedule: the product of the '*'-separated factors ('constant' = base)."""
    names = [name.strip() for name in factors.split("*")]
    for name in names:
        if name not in FACTORS:
            raise ValueError(f"optimizer.schedule.factors: unknown factor {name!r}; known: {FACTORS}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        lr = jnp.asarray(1.0, jnp.float32)  # as in the official code, only 'constant' brings in the base
        for name in names:
            if name == "constant":
                lr = lr * base_learning_rate
            elif name == "linear_warmup":
                lr = lr * jnp.minimum(1.0, step / max(warmup_steps, 1))
            elif name == "rsqrt_decay":
                lr = lr / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))
            elif name == "cosine_decay":
                progress = jnp.maximum(0.0, (step - warmup_steps) / steps_per_cycle)
                lr = lr * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
        return lr

    return schedule


def one_cycle_points(total_steps: int, pct_start: float) -> tuple[float, float]:
    """torch OneCycleLR phase ends: (peak step, last step)."""
    return float(pct_start * total_steps) - 1.0, float(total_steps) - 1.0


def _two_phase_linear(start, peak, end, peak_step, last_step):
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        # (1 - f) a + f b rather than a + f (b - a): exact at both ends in float32
        up = jnp.clip(step / max(peak_step, 1e-9), 0.0, 1.0)
        down = jnp.clip((step - peak_step) / max(last_step - peak_step, 1e-9), 0.0, 1.0)
        rising = (1.0 - up) * start + up * peak
        falling = (1.0 - down) * peak + down * end
        return jnp.where(step <= peak_step, rising, falling)

    return schedule


def one_cycle_schedule(max_learning_rate: float, total_steps: int, pct_start: float,
                       div_factor: float = 25.0, final_div_factor: float = 1e4) -> optax.Schedule:
    """torch ``OneCycleLR(anneal_strategy='linear')`` as an optax schedule."""
    initial = max_learning_rate / div_factor
    peak_step, last_step = one_cycle_points(total_steps, pct_start)
    return _two_phase_linear(initial, max_learning_rate, initial / final_div_factor, peak_step, last_step)


def one_cycle_beta1(total_steps: int, pct_start: float, base: float = 0.85, high: float = 0.95):
    """torch OneCycleLR's default momentum cycle applied to Adam's beta1: high -> base -> high."""
    peak_step, last_step = one_cycle_points(total_steps, pct_start)
    return _two_phase_linear(high, base, high, peak_step, last_step)


def build_schedule(cfg: Mapping, total_steps: int) -> optax.Schedule:
    kind = cfg["kind"]
    if kind == "factors":
        return factor_schedule(cfg["base_learning_rate"], cfg["factors"], cfg["warmup_steps"],
                               cfg.get("steps_per_cycle") or total_steps)
    if kind == "one_cycle":
        return one_cycle_schedule(cfg["max_learning_rate"], total_steps, cfg["warmup_steps"] / total_steps)
    raise ValueError(f"optimizer.schedule.kind must be 'factors' or 'one_cycle', got {kind!r}")


def build_optimizer(cfg: Mapping, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with the configured schedule and clipping; returns (transformation, lr schedule)."""
    schedule = build_schedule(cfg["schedule"], total_steps)
    b1 = cfg["b1"]
    if cfg.get("cycle_beta1", False):
        if cfg["schedule"]["kind"] != "one_cycle":
            raise ValueError("optimizer.cycle_beta1 only makes sense with optimizer.schedule.kind=one_cycle")
        b1 = one_cycle_beta1(total_steps, cfg["schedule"]["warmup_steps"] / total_steps)
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=schedule, b1=b1, b2=cfg["b2"], eps=cfg["eps"], weight_decay=cfg["weight_decay"]
    )
    clip = cfg.get("grad_clip") or {"kind": "none"}
    if clip["kind"] == "none":
        return adamw, schedule
    if clip["kind"] == "global_norm":
        return optax.chain(optax.clip_by_global_norm(clip["max"]), adamw), schedule
    if clip["kind"] == "value":
        return optax.chain(optax.clip(clip["max"]), adamw), schedule
    raise ValueError(f"optimizer.grad_clip.kind must be none, global_norm or value, got {clip['kind']!r}")
