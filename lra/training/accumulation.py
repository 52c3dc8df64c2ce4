"""Fitting a global batch on a device: micro-batches whose gradients add up to the batch's.

    train.grad_accum_steps: k       k micro-batches of batch_size / k rows per update
    train.micro_batch: m            the same, given as rows per micro-batch (k = batch_size / m)
    train.micro_batch: auto         the largest micro-batch whose compiled train step fits
                                    train.memory_limit_gb (default: the device's memory) less
                                    train.memory_margin; refused, naming what to change, when
                                    even the smallest does not fit

The global batch, the loss (a mean over its weighted rows) and so the update stay the same
(``lra.training.steps.make_train_step``); only how much of the batch is alive at once changes.
With several devices each micro-batch is split over them, so its size must be a multiple of the
device count. The memory of a candidate is XLA's compiled memory analysis of its train step
(arguments + outputs + temporaries - aliased, per device; ``lra.metrics.compiled_memory``): each
candidate is compiled once, largest first, and the first that fits is the one trained with.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from lra.metrics import compiled_memory

log = logging.getLogger(__name__)

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class AccumulationPlan:
    grad_accum_steps: int
    micro_batch_size: int
    auto: bool = False
    step_bytes: int | None = None  # XLA's compiled memory of the chosen train step
    limit_bytes: int | None = None  # the memory it had to fit (auto)

    def record_fields(self) -> dict:
        return {"grad_accum_steps": self.grad_accum_steps, "micro_batch_size": self.micro_batch_size,
                "micro_batch_auto": self.auto}


def fixed_accumulation(batch_size: int, grad_accum_steps: int | None, micro_batch, devices: int = 1) -> int | None:
    """The accumulation steps the settings ask for; None for ``micro_batch: auto``. Settings that
    do not divide the batch (or split over the devices) are refused with the keys to change."""
    steps = 1 if grad_accum_steps is None else grad_accum_steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"train.grad_accum_steps must be an integer >= 1; got {grad_accum_steps!r}")
    if micro_batch == "auto":
        if steps != 1:
            raise ValueError(f"train.micro_batch=auto chooses the accumulation itself; leave train.grad_accum_steps "
                             f"at 1 (got {steps})")
        return None
    if micro_batch is not None:
        if not isinstance(micro_batch, int) or isinstance(micro_batch, bool) or micro_batch < 1:
            raise ValueError(f"train.micro_batch must be null, auto or a positive integer; got {micro_batch!r}")
        if batch_size % micro_batch:
            raise ValueError(f"train.micro_batch={micro_batch} does not divide train.batch_size={batch_size}; "
                             f"use one of {micro_batch_sizes(batch_size, devices)}")
        if steps != 1 and steps != batch_size // micro_batch:
            raise ValueError(f"train.micro_batch={micro_batch} and train.grad_accum_steps={steps} disagree "
                             f"(batch {batch_size} / {micro_batch} = {batch_size // micro_batch}); set only one")
        steps = batch_size // micro_batch
    if batch_size % steps:
        raise ValueError(f"train.grad_accum_steps={steps} does not divide train.batch_size={batch_size}")
    if (batch_size // steps) % devices:
        raise ValueError(f"a micro-batch of {batch_size // steps} rows (train.batch_size={batch_size} / "
                         f"{steps} accumulation steps) does not split over {devices} devices; use a micro-batch "
                         f"among {micro_batch_sizes(batch_size, devices)}")
    return steps


def micro_batch_sizes(batch_size: int, devices: int = 1) -> list[int]:
    """Micro-batch sizes possible for a global batch: divisors that split over the devices, largest first."""
    return [m for m in range(batch_size, 0, -1) if batch_size % m == 0 and m % devices == 0]


def _step_bytes(compiled) -> int | None:
    return compiled_memory(compiled)["xla_step_bytes"]


def choose_accumulation(compile_train: Callable[[int], object], batch_size: int, grad_accum_steps: int | None,
                        micro_batch, *, devices: int = 1, memory_limit_gb: float | None = None,
                        memory_margin: float = 0.1, device_memory: Callable[[], int | None] | None = None):
    """-> (compiled train step, AccumulationPlan). ``compile_train(k)`` compiles the step for k
    accumulation steps; with ``micro_batch: auto`` candidates are compiled largest micro-batch first
    until one fits. ``device_memory`` (default lra.accelerator.device_memory_bytes) gives the limit
    when ``memory_limit_gb`` is None."""
    steps = fixed_accumulation(batch_size, grad_accum_steps, micro_batch, devices)
    if steps is not None:
        compiled = compile_train(steps)
        return compiled, AccumulationPlan(steps, batch_size // steps, step_bytes=_step_bytes(compiled))
    if not 0 <= memory_margin < 1:
        raise ValueError(f"train.memory_margin must be in [0, 1); got {memory_margin}")
    if memory_limit_gb is not None:
        limit = int(float(memory_limit_gb) * GIB)
        source = f"train.memory_limit_gb={memory_limit_gb}"
    else:
        if device_memory is None:
            from lra.accelerator import device_memory_bytes as device_memory
        limit = device_memory()
        if limit is None:
            raise ValueError("train.micro_batch=auto needs a memory limit: this device reports none (a CPU); "
                             "set train.memory_limit_gb")
        source = f"the device's {limit / GIB:.1f} GiB"
    budget = int(limit * (1 - memory_margin))
    tried = []
    for size in micro_batch_sizes(batch_size, devices):
        steps = batch_size // size
        compiled = compile_train(steps)
        needed = _step_bytes(compiled)
        if needed is None:
            raise ValueError("train.micro_batch=auto: XLA gives no memory analysis on this backend; "
                             "set train.micro_batch or train.grad_accum_steps yourself")
        tried.append(f"{size} rows: {needed / GIB:.2f} GiB")
        if needed <= budget:
            log.info("train.micro_batch=auto: %d rows x %d accumulation steps (batch %d); its step needs %.2f GiB "
                     "of %.2f GiB (%s less train.memory_margin=%g)", size, steps, batch_size, needed / GIB,
                     budget / GIB, source, memory_margin)
            return compiled, AccumulationPlan(steps, size, auto=True, step_bytes=needed, limit_bytes=limit)
    raise MemoryError(
        f"train.micro_batch=auto: even a micro-batch of {size} row(s) does not fit in {budget / GIB:.2f} GiB "
        f"({source} less train.memory_margin={memory_margin:g}); XLA's compiled memory per micro-batch: "
        f"{'; '.join(tried)}. Options: model.remat=block or attention (recompute activations), model.dtype=bfloat16, "
        f"more devices (the batch is split over them), a larger train.memory_limit_gb if the device has it, "
        f"or a smaller task.max_length / model size (which changes the experiment)")
