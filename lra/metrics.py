"""Cost measurements attached to every run, each labelled as what it is.

- ``xla_*_bytes``: XLA's compiled memory analysis of the train step (arguments + outputs + temporaries
  - aliased/donated buffers). Available on every backend, deterministic, and the right figure on CPU
  where ``peak_memory_in_bytes`` omits temporaries.
- ``device_peak_bytes``: the device allocator's ``peak_bytes_in_use`` from ``memory_stats()`` (GPU/TPU
  only; None on CPU). It covers the whole process lifetime, so in a multirun it is a running maximum.
- ``flops_per_step``: XLA's cost analysis of the compiled train step.
- Provenance: library versions, device, git sha and date, so a result row says where it came from.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import jax

PROVENANCE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")


def compiled_memory(compiled) -> dict[str, int | None]:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {"xla_step_bytes": None, "xla_temp_bytes": None}
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    return {"xla_step_bytes": int(total), "xla_temp_bytes": int(analysis.temp_size_in_bytes)}


def compiled_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()  # a dict since jax 0.4.38
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def device_peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def git_state(repo: Path | None = None) -> tuple[str, bool | None]:
    """(commit, whether tracked files have uncommitted changes) of the harness checkout;
    ("unknown", None) outside a git checkout."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def device_name() -> str:
    """``<platform>:<device kind>`` of device 0: a record's ``device``."""
    device = jax.local_devices()[0]
    return f"{device.platform}:{device.device_kind}"


def provenance() -> dict[str, str | int | bool | None]:
    """Where a result came from: device, library versions, harness commit and date."""
    sha, dirty = git_state()
    info = {
        "device": device_name(),
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "host": platform.node(),
        "git_sha": sha,
        "git_dirty": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    for package in PROVENANCE_PACKAGES:
        info[f"{package}_version"] = importlib.metadata.version(package)
    return info
