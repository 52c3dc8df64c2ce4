"""What JAX sees here: backend, devices and their memory; the check run by ``make install``.

    python -m lra.accelerator                # print jax's version, backend and devices
    python -m lra.accelerator --expect gpu   # the same, exit 1 with a clear message unless JAX sees a GPU

``make install CUDA=12|13`` expects ``gpu`` and ``make install TPU=1`` expects ``tpu``, so an
install whose accelerator JAX cannot use fails there instead of silently training on the CPU.
"""

from __future__ import annotations

import argparse
import sys

BACKENDS = ("cpu", "gpu", "tpu")

# What to check when the expected accelerator is missing.
HINTS = {
    "gpu": ("is a GPU visible to this process (nvidia-smi; CUDA_VISIBLE_DEVICES; on a cluster, run this on a "
            "GPU node, e.g. inside srun --gres=gpu:1)? Is the driver new enough (CUDA 12 wheels need driver "
            ">= 525, CUDA 13 wheels >= 580: `make install CUDA=12` on older drivers)?"),
    "tpu": "is this a Cloud TPU VM (or a TPU pod worker) with its TPU not held by another process?",
    "cpu": "",
}


def device_memory_bytes(device=None) -> int | None:
    """The memory XLA may allocate on ``device`` (default: the first local one); None where the
    backend does not report it (CPU)."""
    import jax

    device = jax.local_devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    if not stats or not stats.get("bytes_limit"):
        return None
    return int(stats["bytes_limit"])


def describe() -> str:
    """One line for jax, the backend and every device (kind and memory)."""
    import jax

    devices = jax.devices()
    shown = []
    for device in devices:
        memory = device_memory_bytes(device)
        shown.append(f"{device.platform}:{device.id} {device.device_kind}"
                     + (f" ({memory / 2**30:.1f} GiB)" if memory else ""))
    return (f"jax {jax.__version__}, backend {jax.default_backend()}, {len(devices)} device(s): "
            + "; ".join(shown))


def check(expect: str | None) -> str:
    """``describe()``; raises RuntimeError with what to check when the backend is not ``expect``."""
    if expect is not None and expect not in BACKENDS:
        raise ValueError(f"--expect must be one of {', '.join(BACKENDS)}; got {expect!r}")
    import jax

    line = describe()
    if expect is None or jax.default_backend() == expect:
        return line
    try:  # JAX's own reason why the plugin did not start, when it has one
        jax.devices(expect)
        reason = ""
    except RuntimeError as error:
        reason = f"\nJAX says: {str(error).strip().splitlines()[0]}"
    raise RuntimeError(f"JAX does not see a {expect.upper()}: {line}.{reason}\nCheck: {HINTS[expect]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expect", choices=BACKENDS, help="exit 1 unless JAX's default backend is this one")
    args = parser.parse_args(argv)
    try:
        print(check(args.expect))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
