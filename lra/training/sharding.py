"""Data parallelism: one mesh axis ``data`` over every device of every process.

    mesh            Mesh(all devices, ('data',))
    batches         NamedSharding(mesh, P('data')): row i of the global batch lives on device
                    i // (batch / devices); every process assembles the same global batch and
                    hands over only the rows its own devices hold (lra.data.batches.to_device)
    model/optimizer NamedSharding(mesh, P()): replicated, so XLA all-reduces the gradients

This is synchronous data parallelism with a fixed global batch: ``train.batch_size`` is the
configured one whatever the device count, so the loss is the same mean over the same examples and
only where rows are computed changes (no learning-rate rescaling is needed or done). A batch that
does not split evenly over the devices is refused with the config key to change.

Several processes (hosts, or one process per GPU under SLURM) join through
``jax.distributed.initialize()``, which must run before JAX touches a device; see
``initialize_distributed`` and docs/scaling.md.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree, mesh: Mesh):
    """Every array of ``tree`` (model or optimizer state) as a copy on every device of the mesh.

    With several processes ``jax.device_put`` cannot target devices of other processes; each
    process then contributes its own (identical: same seed) copy for its devices.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # RNG keys travel as their raw data
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x), x.shape)

    return jax.tree.map(put, tree)


def check_divisible(batch_size: int, config_key: str, mesh: Mesh) -> None:
    """Refuse a global batch that does not split evenly over the data axis."""
    devices = mesh.shape[DATA_AXIS]
    if batch_size % devices:
        raise ValueError(
            f"{config_key}={batch_size} does not split over {devices} devices "
            f"({batch_size / devices:g} rows each); set {config_key} to a multiple of {devices} "
            f"(the global batch is kept, each device gets {config_key} / {devices} rows)")


def distributed_requested(setting) -> bool:
    """Whether this process is one of several: ``distributed.initialize`` = auto | true | false.

    auto joins when the environment describes several processes: JAX's own variables
    (JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES > 1), or a SLURM job step with more than one
    task (srun --ntasks > 1 sets SLURM_STEP_NUM_TASKS), where ``jax.distributed.initialize()``
    reads everything from SLURM. SLURM_NTASKS alone is not enough: a single process started
    without srun inside a multi-task allocation would wait forever for the others.
    """
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"distributed.initialize must be auto, true or false; got {setting!r}")
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
        return True
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1


_initialized = False


def initialize_distributed(setting) -> None:
    """Call ``jax.distributed.initialize()`` once per process when requested (before any device use)."""
    global _initialized
    if _initialized or not distributed_requested(setting):
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only runs (tests); GPUs use NCCL
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # JAX reads only the address from the environment
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                                   int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()  # coordinator, process count and id from SLURM / the TPU environment
    _initialized = True
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
    """Process 0 writes files, records and W&B; the others only compute."""
    return jax.process_index() == 0
