"""A kernel's report card: the contract checks of the test suite, on one attention, in a minute.

    make check-kernel ATTENTION=my_kernel KERNEL_DIR=my_kernels
    LRA_KERNEL_DIR=$PWD/my_kernels PYTHONPATH=$PWD/my_kernels python -m lra.kernel_card my_kernel

The checks are the ones ``tests/attention/test_conformance.py`` runs on every registered attention
(it calls these functions), on small random inputs:

    output shape and dtype       q's shape and dtype; in bfloat16 a float32 output is a warning
    padding invariance           outputs at real tokens do not depend on how much padding follows
                                 (13 real tokens padded to 13, 29 and 48 with large random values)
    finite gradients             float32 and bfloat16, with a fully padded example in the batch;
                                 gradients reach the real queries
    deterministic evaluation     two evaluation calls give identical outputs
    batch independence           changing one example leaves the others' outputs unchanged

and two measurements that are reported, not judged:

    compiled memory              XLA's temporaries of forward + backward at three lengths, with the
                                 fitted exponent of length (about 1: linear, about 2: quadratic)
    error vs softmax             ||out - softmax|| / ||softmax|| at real tokens (lra.bench.approximation's
                                 measure): how far the kernel is from exact attention on random inputs

A failed check exits with status 1 and says what was wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from attention.base import AttentionSpec
from lra.build import make_attention

SPEC = AttentionSpec(num_heads=2, head_dim=8, max_length=48)
MEMORY_LENGTHS = (256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None      # None: a measurement, not a pass/fail check
    detail: str
    warning: bool = False  # a measurement that departs from the contract without breaking a run


def random_qkv(seed: int, batch: int, length: int, spec: AttentionSpec = SPEC, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(key, (batch, length, spec.num_heads, spec.head_dim)).astype(dtype) for key in keys]


def _max_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def check_output_shape(attention) -> Check:
    q, k, v = random_qkv(0, 3, 20)
    out = attention(q, k, v, jnp.ones((3, 20), bool), deterministic=True)
    ok = out.shape == q.shape and out.dtype == q.dtype
    return Check("output shape and dtype", ok, f"q's shape and dtype {q.shape} {q.dtype}" if ok else
                 f"float32 input {q.shape} -> {out.dtype} {out.shape}")


def check_bfloat16_output(attention) -> Check:
    """The contract asks for the compute dtype; the encoder tolerates another one (it casts), so a
    float32 output under a bfloat16 model is a warning: that attention computes in float32."""
    q, k, v = random_qkv(0, 3, 20, dtype=jnp.bfloat16)
    out = attention(q, k, v, jnp.ones((3, 20), bool), deterministic=True)
    if out.shape != q.shape:
        return Check("bfloat16 output", False, f"bfloat16 input {q.shape} -> {out.shape}")
    if out.dtype != q.dtype:
        return Check("bfloat16 output", None, f"bfloat16 input -> {out.dtype} output: the contract asks for the "
                     "compute dtype (attention/base.py); cast the result, e.g. .astype(q.dtype)", warning=True)
    return Check("bfloat16 output", True, "bfloat16 in, bfloat16 out")


def check_padding_invariance(attention, real: int = 13, tolerance: float = 1e-5) -> Check:
    q, k, v = random_qkv(1, 2, real)
    outputs = []
    for total, garbage_seed in ((real, 0), (29, 5), (48, 7)):
        pad = [jax.random.normal(key, (2, total - real, *q.shape[2:])) * 50.0
               for key in jax.random.split(jax.random.key(garbage_seed), 3)]
        padded = [jnp.concatenate([t, p], axis=1) for t, p in zip((q, k, v), pad)]
        mask = jnp.broadcast_to(jnp.arange(total)[None, :] < real, (2, total))
        out = attention(*padded, mask, deterministic=True)
        if not np.isfinite(np.asarray(out)).all():
            return Check("padding invariance", False, f"non-finite outputs with {total - real} padded tokens")
        outputs.append(np.asarray(out[:, :real]))
    worst = max(_max_difference(out, outputs[0]) / max(1.0, float(np.max(np.abs(outputs[0])))) for out in outputs[1:])
    return Check("padding invariance", worst <= tolerance,
                 f"largest change at real tokens {worst:.1e} (allowed {tolerance:.0e}) with 16 and 35 padded tokens")


def check_finite_gradients(attention, dtype=jnp.float32) -> Check:
    name = f"finite gradients ({jnp.dtype(dtype).name})"
    q, k, v = random_qkv(2, 2, 16, dtype=dtype)
    mask = jnp.stack([jnp.arange(16) < 9, jnp.zeros(16, bool)])  # second example: no real token

    def loss(q, k, v):
        out = attention(q, k, v, mask, deterministic=True).astype(jnp.float32)
        return (out * mask[:, :, None, None]).sum() + 1e-3 * (out ** 2).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    bad = [which for which, g in zip("qkv", grads) if not np.isfinite(np.asarray(g, np.float32)).all()]
    if bad:
        return Check(name, False, f"non-finite gradient of {', '.join(bad)} (a fully padded example in the batch)")
    if float(jnp.abs(grads[0][0, :9].astype(jnp.float32)).sum()) == 0:
        return Check(name, False, "gradients do not reach the real queries")
    return Check(name, True, "finite, with a fully padded example in the batch; they reach the real queries")


def check_deterministic_evaluation(attention) -> Check:
    q, k, v = random_qkv(3, 2, 16)
    mask = jnp.ones((2, 16), bool)
    difference = _max_difference(attention(q, k, v, mask, deterministic=True),
                                 attention(q, k, v, mask, deterministic=True))
    return Check("deterministic evaluation", difference == 0.0,
                 "two evaluation calls are identical" if difference == 0.0 else f"two calls differ by {difference:.1e}")


def check_batch_independence(attention, tolerance: float = 1e-5) -> Check:
    q, k, v = random_qkv(4, 3, 16)
    mask = jnp.ones((3, 16), bool).at[2, 11:].set(False)
    reference = attention(q, k, v, mask, deterministic=True)
    q2, k2, v2 = (t.at[0].multiply(7.0).at[0].add(3.0) for t in (q, k, v))
    changed = attention(q2, k2, v2, mask.at[0, 5:].set(False), deterministic=True)
    difference = _max_difference(changed[1:], reference[1:]) / max(1.0, float(jnp.max(jnp.abs(reference[1:]))))
    return Check("batch independence", difference <= tolerance,
                 f"changing one example moves the others by {difference:.1e} (allowed {tolerance:.0e})")


def compiled_temp_bytes(attention, length: int, heads: int = 2, head_dim: int = 16, backward: bool = False) -> int:
    """XLA's compiled temporaries of the attention's forward (or forward + backward) at ``length``."""
    shape = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, length), jnp.bool_)

    def forward(q, k, v, m):
        return attention(q, k, v, m, deterministic=True)

    fn = jax.grad(lambda *a: forward(*a).sum(), argnums=(0, 1, 2)) if backward else forward
    compiled = jax.jit(fn).lower(shape, shape, shape, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def memory_exponent(lengths, sizes) -> float:
    """Least-squares slope of log(bytes) against log(length)."""
    return float(np.polyfit(np.log(np.asarray(lengths, float)), np.log(np.asarray(sizes, float)), 1)[0])


def measure_memory(config_name: str, lengths=MEMORY_LENGTHS) -> Check:
    attention = make_attention(config_name, AttentionSpec(num_heads=2, head_dim=16, max_length=max(lengths)))
    sizes = [compiled_temp_bytes(attention, n, head_dim=16, backward=True) for n in lengths]
    shown = ", ".join(f"{n}: {size / 2**20:.2f} MiB" for n, size in zip(lengths, sizes))
    if min(sizes) <= 0:
        return Check("compiled memory (fwd+bwd)", None, f"{shown}; too small to fit an exponent")
    return Check("compiled memory (fwd+bwd)", None,
                 f"{shown}; grows as length^{memory_exponent(lengths, sizes):.2f}")


def measure_error_vs_softmax(config_name: str, length: int = 256, real: int = 200) -> Check:
    from lra.bench.approximation import relative_error

    spec = AttentionSpec(num_heads=2, head_dim=16, max_length=length)
    q, k, v = random_qkv(5, 2, length, spec)
    q, k = q * 0.5, k * 0.5  # moderate logits, where kernel approximations are meant to work
    mask = jnp.broadcast_to(jnp.arange(length)[None, :] < real, (2, length))
    out = make_attention(config_name, spec)(q, k, v, mask, deterministic=True)
    exact = make_attention("softmax", spec)(q, k, v, mask, deterministic=True)
    error = relative_error(out, exact, mask)
    return Check("error vs softmax", None, f"relative error {error:.3f} at length {length} ({real} real tokens), "
                                           "random inputs")


def report_card(config_name: str, measure: bool = True) -> list[Check]:
    """Every check (and, with ``measure``, the two measurements) of one attention config."""
    from lra.registry import load_attention_config

    config = load_attention_config(config_name)  # a missing config is a clear FileNotFoundError
    if config.get("requires") == "gpu" and jax.default_backend() == "cpu":
        raise RuntimeError(f"attention '{config_name}' requires a GPU (requires: gpu); this machine has none")
    attention = make_attention(config_name, SPEC)
    checks = [
        _safely("output shape and dtype", lambda: check_output_shape(attention)),
        _safely("bfloat16 output", lambda: check_bfloat16_output(attention)),
        _safely("padding invariance", lambda: check_padding_invariance(attention)),
        _safely("finite gradients (float32)", lambda: check_finite_gradients(attention, jnp.float32)),
        _safely("finite gradients (bfloat16)", lambda: check_finite_gradients(attention, jnp.bfloat16)),
        _safely("deterministic evaluation", lambda: check_deterministic_evaluation(attention)),
        _safely("batch independence", lambda: check_batch_independence(attention))]
    if measure:
        checks += [_safely("compiled memory (fwd+bwd)", lambda: measure_memory(config_name)),
                   _safely("error vs softmax", lambda: measure_error_vs_softmax(config_name))]
    return checks


def _safely(name: str, check) -> Check:
    """The check's result, or a failed check saying what it raised."""
    try:
        return check()
    except Exception as error:  # noqa: BLE001 - the card reports what broke
        first = (str(error).strip().splitlines() or [""])[0]
        return Check(name, False, f"raised {type(error).__name__}: {first}")


def card_lines(config_name: str, checks: list[Check]) -> list[str]:
    width = max(len(c.name) for c in checks)
    lines = [f"kernel report card: {config_name}"]
    for check in checks:
        mark = ("WARN" if check.warning else "INFO") if check.ok is None else "PASS" if check.ok else "FAIL"
        lines.append(f"  {mark}  {check.name:<{width}}  {check.detail}")
    failed = [c.name for c in checks if c.ok is False]
    warned = [c.name for c in checks if c.warning]
    lines.append(f"verdict: not ready: {', '.join(failed)} failed" if failed else
                 "verdict: ready to sweep" + (f" (see the warning on {', '.join(warned)})" if warned else "")
                 + f", e.g. make sweep TASK=listops PRESET=smoke ATTENTION={config_name},softmax")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attention", help="an attention config name (configs/attention/ or LRA_KERNEL_DIR)")
    parser.add_argument("--no-measure", action="store_true", help="skip the memory and error measurements")
    args = parser.parse_args(argv)
    try:
        checks = report_card(args.attention, measure=not args.no_measure)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"check-kernel: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - it could not even be built
        print(f"check-kernel: attention '{args.attention}' cannot be built: {type(error).__name__}: {error}",
              file=sys.stderr)
        return 1
    for line in card_lines(args.attention, checks):
        print(line)
    return 1 if any(c.ok is False for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
