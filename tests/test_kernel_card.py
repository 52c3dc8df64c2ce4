"""`make check-kernel`: the report card of a user's kernel (lra/kernel_card.py) on good and broken kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lra import kernel_card
from tests.conftest import REPO

KERNEL_DIR = Path(__file__).parent / "user_kernel"

BROKEN = '''
import jax, jax.numpy as jnp
from flax import nnx

class LeakyPadding(nnx.Module):
    """Averages every value, padded or not: padding leaks into real outputs."""
    def __init__(self, spec, *, rngs):
        pass
    def __call__(self, q, k, v, key_mask, *, deterministic):
        return jnp.broadcast_to(v.mean(axis=1, keepdims=True), v.shape)

class Float32Out(nnx.Module):
    """Correct softmax over real keys, but always returns float32."""
    def __init__(self, spec, *, rngs):
        pass
    def __call__(self, q, k, v, key_mask, *, deterministic):
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        s = jnp.where(key_mask[:, None, None, :], s, -1e30)
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v.astype(jnp.float32))
'''


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    (tmp_path / "attention").mkdir()
    (tmp_path / "broken_kernels.py").write_text(BROKEN)
    for name, target in (("leaky", "LeakyPadding"), ("float32_out", "Float32Out")):
        (tmp_path / "attention" / f"{name}.yaml").write_text(
            f"name: {name}\n_target_: broken_kernels.{target}\n_partial_: true\n")
    monkeypatch.setenv("LRA_KERNEL_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _by_name(checks):
    return {check.name: check for check in checks}


def test_card_fails_a_kernel_that_leaks_padding(kernels):
    checks = _by_name(kernel_card.report_card("leaky", measure=False))
    assert checks["padding invariance"].ok is False
    assert checks["output shape and dtype"].ok and checks["deterministic evaluation"].ok
    lines = kernel_card.card_lines("leaky", list(checks.values()))
    assert "  FAIL  padding invariance" in "\n".join(lines)
    assert lines[-1].startswith("verdict: not ready: padding invariance")
    assert "gradients do not reach the real queries" in checks["finite gradients (float32)"].detail  # q unused


def test_card_warns_on_a_float32_output_under_bfloat16(kernels):
    checks = _by_name(kernel_card.report_card("float32_out", measure=False))
    assert all(c.ok for name, c in checks.items() if name != "bfloat16 output"), checks
    warning = checks["bfloat16 output"]
    assert warning.ok is None and warning.warning and "float32" in warning.detail
    assert kernel_card.card_lines("float32_out", list(checks.values()))[-1].startswith(
        "verdict: ready to sweep (see the warning on bfloat16 output)")


def test_memory_exponent_and_measurements():
    assert kernel_card.memory_exponent([256, 512, 1024], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert kernel_card.memory_exponent([256, 512, 1024], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    linear = kernel_card.measure_memory("linear", lengths=(64, 128, 256)).detail
    quadratic = kernel_card.measure_memory("softmax", lengths=(64, 128, 256)).detail
    assert float(linear.rsplit("^", 1)[1]) < 1.3 and float(quadratic.rsplit("^", 1)[1]) > 1.6, (linear, quadratic)
    assert "relative error 0.000" in kernel_card.measure_error_vs_softmax("softmax", length=64, real=50).detail


@pytest.mark.slow  # a fresh interpreter compiling every check: about 20 s on 2 idle cores
def test_make_check_kernel_on_the_docs_example():
    """The command docs/new_kernel.md leads with, on the kernel the docs show (tests/user_kernel/)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    dry = subprocess.run(["make", "--no-print-directory", "-n", "-o", "install", "check-kernel", "ATTENTION=my_kernel",
                          f"KERNEL_DIR={KERNEL_DIR}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert f"LRA_KERNEL_DIR={KERNEL_DIR}" in dry.stdout and "-m lra.kernel_card my_kernel" in dry.stdout
    result = subprocess.run([sys.executable, "-m", "lra.kernel_card", "my_kernel", "--no-measure"], cwd=REPO,
                            env={**env, "LRA_KERNEL_DIR": str(KERNEL_DIR), "PYTHONPATH": f"{KERNEL_DIR}:{REPO}"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("kernel report card: my_kernel\n")
    assert result.stdout.count("  PASS  ") == 7 and "FAIL" not in result.stdout and "WARN" not in result.stdout
    missing = subprocess.run([sys.executable, "-m", "lra.kernel_card", "no_such_kernel"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no_such_kernel" in missing.stderr
