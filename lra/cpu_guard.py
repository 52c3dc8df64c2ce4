"""No accidental multi-day CPU runs: a full protocol on a CPU stops before training.

A run whose protocol is not marked ``protocol.cpu_sized: true`` (only ``smoke`` is) and that finds
only a CPU times a few train steps after compiling, then raises ``CpuRunRefused`` with the
estimated training time and the ways on: a GPU/TPU install, ``protocol=smoke``, or ``allow_cpu=true``
to run it here anyway. ``lra.train.run`` re-raises it without writing a failed record (nothing
ran) and ``lra.train.main`` turns it into a one-paragraph exit message, ending a sweep too.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig


class CpuRunRefused(RuntimeError):
    """A full protocol asked for on a CPU without ``allow_cpu=true``."""


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def refusal(label: str, protocol: str, seconds_per_step: float, steps: int) -> str:
    return (f"{label}: protocol '{protocol}' is not sized for a CPU, and JAX sees only a CPU here. "
            f"Measured {seconds_per_step:.2f} s per train step, so its {steps} remaining steps would take about "
            f"{human_duration(seconds_per_step * steps)} (evaluation not included). Install a GPU or TPU build "
            f"(make install CUDA=12|13, or TPU=1) and run it there, try protocol=smoke, or add allow_cpu=true to "
            f"run it on this CPU anyway.")


def cpu_guard(cfg: DictConfig, label: str, backend: str | None = None) -> Callable[[float, int], None] | None:
    """The guard for ``train_and_evaluate`` (it raises ``CpuRunRefused``), or None where the run may
    go on: a backend other than CPU, a ``cpu_sized`` protocol, or ``allow_cpu=true``."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    if backend != "cpu" or cfg.protocol.get("cpu_sized", False) or cfg.get("allow_cpu", False):
        return None
    protocol = str(cfg.protocol.name)

    def refuse(seconds_per_step: float, steps: int) -> None:
        raise CpuRunRefused(refusal(label, protocol, seconds_per_step, steps))

    return refuse
