"""The training loop: one readable function from (model, optimizer, data) to a run's metrics.

    resume from the newest checkpoint if there is one (states, step, metrics so far)
    compile train and eval steps once (ahead of time, timed, memory-analysed, data-parallel; the
        train step sums micro-batches when train.grad_accum_steps / train.micro_batch ask for it,
        micro_batch=auto compiles candidates until one fits: lra.training.accumulation)
    on a CPU, a protocol not sized for it stops here with a time estimate (lra.cpu_guard)
    for step in start+1..steps:
        state = train_step(state, next prefetched batch)        # no host sync here
        every log_every steps: fetch the window's metrics (one sync), time the window,
                               stop if a loss or gradient norm is not finite
        every eval_every steps: full validation pass; keep the best-validation parameters
        every checkpoint.every_steps steps, and on SIGTERM/SIGINT: checkpoint (then stop)
    test with the final parameters and with the best-validation parameters
    host overhead: alternate windows fed by the prefetched pipeline and by one resident batch

Step time is measured per logging window (wall time / steps, after the window's metrics are on the
host) and the median over windows is reported; the first window is warm-up and is excluded when
there are others. Evaluation time is never inside a window.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import statistics
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra.checkpointing import RunCheckpoints
from lra.data import batches as batching
from lra.data.token_cache import TokenSplit
from lra.metrics import compiled_flops, compiled_memory, device_peak_bytes
from lra.preemption import Preempted, StopRequest
from lra.training import sharding
from lra.training.accumulation import choose_accumulation
from lra.training.steps import compile_step, compile_train_step, make_eval_step


@dataclasses.dataclass
class LoopConfig:
    steps: int
    batch_size: int
    eval_every: int
    log_every: int
    max_length: int
    seed: int
    eval_batch_size: int | None = None
    train_limit: int | None = None  # use only the first N training examples (smoke presets)
    eval_limit: int | None = None  # evaluate on the first N validation/test examples
    overhead_pairs: int = 3  # pairs of (pipeline, resident-batch) timing windows after training (0 = skip)
    prefetch: int = 2
    grad_accum_steps: int = 1  # micro-batches per update (lra.training.accumulation)
    micro_batch: int | str | None = None  # rows per micro-batch, or "auto": the largest that fits in memory
    memory_limit_gb: float | None = None  # for micro_batch=auto; None: the device's own memory
    memory_margin: float = 0.1  # for micro_batch=auto: keep this fraction of the limit free


def progress_total(cfg: LoopConfig) -> int:
    """The progress callback's total: training steps plus the host-overhead windows' steps."""
    return cfg.steps + 2 * max(cfg.overhead_pairs, 0) * cfg.log_every


class DivergenceError(RuntimeError):
    """A non-finite loss or gradient norm: the run stops; its last good checkpoint is kept."""

    def __init__(self, step: int, loss: float, grad_norm: float, last_checkpoint: int | None):
        self.step, self.last_checkpoint = step, last_checkpoint
        kept = (f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint
                else "no checkpoint was saved before it")
        super().__init__(f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm} "
                         f"(not finite); {kept}")


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def evaluate(eval_fn, model_state, split: TokenSplit, cfg: LoopConfig, rows=None,
             on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Loss and accuracy over the (first eval_limit examples of the) split; every example once.

    ``rows``: the batch sharding (None: the default device); ``on_batch(done, total)`` after each
    batch is dispatched (progress display). The RNG state each batch leaves (changed only by
    families that draw at evaluation on purpose) goes to the next batch; the caller's state is not
    changed, so an evaluation pass does not move the training streams."""
    totals = None
    batch_size = cfg.eval_batch_size or cfg.batch_size
    examples = len(split) if cfg.eval_limit is None else min(len(split), cfg.eval_limit)
    for done, batch in enumerate(batching.prefetch_to_device(
            batching.eval_batches(split, batch_size, cfg.max_length, cfg.eval_limit), cfg.prefetch, rows), start=1):
        sums, rng_state = eval_fn(model_state, batch)
        model_state = nnx.merge_state(model_state, rng_state)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if on_batch is not None:
            on_batch(done, -(-examples // batch_size))
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count,
            "examples": int(count)}


@dataclasses.dataclass
class _Progress:
    """Everything besides the arrays that a resumed run needs to continue exactly."""

    best: dict = dataclasses.field(default_factory=lambda: {"accuracy": -1.0, "step": 0})
    last_train: dict = dataclasses.field(default_factory=dict)
    last_val: dict = dataclasses.field(default_factory=dict)
    window_times: list = dataclasses.field(default_factory=list)
    history: list = dataclasses.field(default_factory=list)  # every (step, split, metrics) logged
    pending: list = dataclasses.field(default_factory=list)  # per-step metrics of the open window

    def to_json(self, pending_values: list[dict]) -> dict:
        fields = {name: getattr(self, name) for name in ("best", "last_train", "last_val", "window_times",
                                                         "history")}
        dtypes = {key: np.asarray(value).dtype.name for key, value in (pending_values or [{}])[0].items()}
        return {**fields, "pending": [{key: float(v) for key, v in values.items()} for values in pending_values],
                "pending_dtypes": dtypes}

    @classmethod
    def from_json(cls, saved: dict) -> "_Progress":
        # the open window's values come back in their own dtypes, so its mean is the same number
        pending = [{key: np.asarray(value, jnp.dtype(saved["pending_dtypes"][key])) for key, value in values.items()}
                   for values in saved["pending"]]
        return cls(best=saved["best"], last_train=saved["last_train"], last_val=saved["last_val"],
                   window_times=saved["window_times"], history=saved["history"], pending=pending)


def _check_finite(values: list[dict], first_step: int, last_checkpoint: int | None) -> None:
    for offset, value in enumerate(values):
        if not (np.isfinite(value["loss"]) and np.isfinite(value["grad_norm"])):
            raise DivergenceError(first_step + offset, float(value["loss"]), float(value["grad_norm"]),
                                  last_checkpoint)


def _stop_agreed(stop, at_window: bool) -> bool:
    """Whether every process saw a stop signal. One process: checked every step; several: at
    logging windows only, where one small all-gather keeps them stopping at the same step."""
    if stop is None:
        return False
    if jax.process_count() == 1:
        return stop.requested is not None
    if not at_window:
        return False
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(stop.requested is not None))))


def train_and_evaluate(model: nnx.Module, optimizer: nnx.Optimizer, learning_rate: Callable,
                       splits: dict[str, TokenSplit], cfg: LoopConfig, log: Callable[[int, str, dict], None],
                       progress: Callable[[int, dict], None] | None = None, *,
                       checkpoints: RunCheckpoints | None = None, stop: StopRequest | None = None,
                       mesh=None, guard: Callable[[float, int], None] | None = None) -> dict:
    """Train for cfg.steps; return accuracies, losses, timings and memory figures of the run.

    ``mesh`` (default: every device) makes the steps data-parallel; ``checkpoints`` resumes from
    and saves to a run's checkpoint directory; ``stop`` (a StopRequest) ends the run early with a
    checkpoint and ``Preempted``. A non-finite loss or gradient raises ``DivergenceError``.
    ``guard(seconds_per_step, steps_left)`` (lra.cpu_guard) sees the time of a few steps, on copies
    of the state, before training starts, and may refuse the run by raising.
    """
    mesh = sharding.data_mesh() if mesh is None else mesh
    eval_batch_size = cfg.eval_batch_size or cfg.batch_size
    sharding.check_divisible(cfg.batch_size, "train.batch_size", mesh)
    sharding.check_divisible(eval_batch_size, "train.eval_batch_size", mesh)
    states, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    model_state, optimizer_state = sharding.put_replicated((model_state, optimizer_state), mesh)

    start_step, run, best_state = 0, _Progress(), None
    if checkpoints is not None and checkpoints.latest_step is not None:
        start_step, model_state, optimizer_state, best_state, saved = checkpoints.restore(model_state, optimizer_state)
        run = _Progress.from_json(saved)
        logging.getLogger(__name__).info("resuming at step %d of %d from %s", start_step, cfg.steps,
                                         checkpoints.directory)
        for step, split, metrics in run.history:  # the new run directory and W&B run get every row
            log(step, split, metrics)
    last_checkpoint = start_step or None

    def log_and_keep(step, split, metrics):
        run.history.append([step, split, metrics])
        log(step, split, metrics)

    train_iter: Iterator[dict] = batching.prefetch_to_device(
        batching.train_batches(splits["train"], cfg.batch_size, cfg.max_length, cfg.seed, cfg.train_limit,
                               start=start_step), cfg.prefetch, rows)
    first_batch = next(train_iter)
    eval_example = batching.to_device(next(batching.eval_batches(
        splits["val"], eval_batch_size, cfg.max_length, cfg.eval_limit)), rows)

    def compile_train(accum_steps: int):
        return compile_train_step(model_graph, optimizer_graph, model_state, optimizer_state, first_batch, mesh,
                                  accum_steps)

    start = time.perf_counter()
    train_fn, plan = choose_accumulation(compile_train, cfg.batch_size, cfg.grad_accum_steps, cfg.micro_batch,
                                         devices=mesh.shape[sharding.DATA_AXIS], memory_limit_gb=cfg.memory_limit_gb,
                                         memory_margin=cfg.memory_margin)
    compile_time = time.perf_counter() - start
    if guard is not None:
        guard(_seconds_per_step(train_fn, model_state, optimizer_state, first_batch), cfg.steps - start_step)
    start = time.perf_counter()
    eval_fn = compile_step(make_eval_step(model_graph), model_state, eval_example,
                           in_shardings=(states, rows), out_shardings=states)
    eval_compile_time = time.perf_counter() - start

    batch = first_batch
    window_start = time.perf_counter()
    for step in range(start_step + 1, cfg.steps + 1):
        model_state, optimizer_state, metrics = train_fn(model_state, optimizer_state, batch)
        run.pending.append(metrics)
        is_eval = step % cfg.eval_every == 0 or step == cfg.steps
        is_window = step % cfg.log_every == 0 or is_eval
        if is_window:
            values = jax.device_get(run.pending)
            run.window_times.append((time.perf_counter() - window_start) / len(run.pending))
            _check_finite(values, step - len(values) + 1, last_checkpoint)
            run.last_train = {key: float(np.mean([v[key] for v in values])) for key in values[0]}
            run.last_train.update(learning_rate=float(learning_rate(step - 1)), step_time_s=run.window_times[-1],
                                  examples_per_s=cfg.batch_size / run.window_times[-1])
            log_and_keep(step, "train", run.last_train)
            run.pending = []
        if is_eval:
            if progress is not None:
                progress(step, {"phase": "validating", "loss": run.last_train.get("loss")})
            val = evaluate(eval_fn, model_state, splits["val"], cfg, rows, None if progress is None else
                           lambda done, total: progress(step, {"phase": "validating", "batch": (done, total)}))
            log_and_keep(step, "val", val)
            if val["accuracy"] > run.best["accuracy"]:
                run.best = {"accuracy": val["accuracy"], "loss": val["loss"], "step": step}
                best_state = _copy(model_state)
            run.last_val = val
        if progress is not None and is_window:
            progress(step, {"phase": "training", "loss": run.last_train.get("loss"), "val": run.best["accuracy"]})
        stopping = _stop_agreed(stop, is_window)
        if checkpoints is not None and (checkpoints.due(step, cfg.steps) or stopping):
            saving = time.perf_counter()
            pending = jax.device_get(run.pending)
            _check_finite(pending, step - len(pending) + 1, last_checkpoint)  # never save a diverged state
            checkpoints.save(step, model_state, optimizer_state, best_state, run.to_json(pending))
            last_checkpoint = step
            window_start += time.perf_counter() - saving  # a window times training only
        if stopping:
            raise Preempted(step, stop.requested, checkpoints.directory if checkpoints else None)
        if step < cfg.steps:
            if is_window:
                window_start = time.perf_counter()  # a window covers fetching and stepping only
            batch = next(train_iter)

    if progress is not None:
        progress(cfg.steps, {"phase": "testing (final)"})
    def testing(which):
        return None if progress is None else (
            lambda done, total: progress(cfg.steps, {"phase": f"testing ({which})", "batch": (done, total)}))

    test_final = evaluate(eval_fn, model_state, splits["test"], cfg, rows, testing("final"))
    test_best = evaluate(eval_fn, best_state, splits["test"], cfg, rows, testing("best val"))
    log(cfg.steps, "test_final", test_final)
    log(cfg.steps, "test_best_val", test_best)

    window_times = run.window_times
    steady = window_times[1:] if len(window_times) > 1 else window_times
    step_time = statistics.median(steady)
    pipeline_time, resident_time = _host_overhead_timing(
        train_fn, model_state, optimizer_state, train_iter, batch, cfg.overhead_pairs, cfg.log_every,
        None if progress is None else lambda done: progress(cfg.steps + done, {"phase": "timing host overhead"}))
    nnx.update(model, model_state)
    nnx.update(optimizer, optimizer_state)
    best, last_val, last_train = run.best, run.last_val, run.last_train
    return {
        "val_accuracy_best": best["accuracy"], "best_step": best["step"],
        "val_accuracy_final": last_val["accuracy"], "val_loss_final": last_val["loss"],
        "test_accuracy_final": test_final["accuracy"], "test_loss_final": test_final["loss"],
        "test_accuracy_best_val": test_best["accuracy"], "test_loss_best_val": test_best["loss"],
        "test_examples": test_final["examples"], "val_examples": last_val["examples"],
        "train_loss_final": last_train["loss"], "train_accuracy_final": last_train["accuracy"],
        "step_time_median_s": step_time, "step_time_windows": len(steady),
        "step_time_pipeline_s": pipeline_time, "step_time_resident_s": resident_time,
        "host_overhead": pipeline_time / resident_time - 1.0 if resident_time else None,
        "examples_per_s": cfg.batch_size / step_time,
        "tokens_per_s": cfg.batch_size * cfg.max_length / step_time,
        "compile_time_s": compile_time, "eval_compile_time_s": eval_compile_time,
        "flops_per_step": compiled_flops(train_fn), **compiled_memory(train_fn),
        "device_peak_bytes": device_peak_bytes(),
        "resumed_from_step": start_step or None, **plan.record_fields(),
    }


def _seconds_per_step(train_fn, model_state, optimizer_state, batch, steps: int = 2) -> float:
    """The fastest of ``steps`` timed train steps on copies of the state (the step donates its inputs)."""
    model_state, optimizer_state = _copy(model_state), _copy(optimizer_state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model_state, optimizer_state, metrics = train_fn(model_state, optimizer_state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return min(times)


def _host_overhead_timing(train_fn, model_state, optimizer_state, train_iter, resident_batch,
                          pairs: int, window: int,
                          progress: Callable[[int], None] | None = None) -> tuple[float | None, float | None]:
    """Side-by-side step times, on copies of the final state, to isolate the host's share.

    Alternates windows of ``window`` steps fed by the training loop's own prefetched iterator and
    windows fed by one device-resident batch (the compiled step alone), each timed like a loop
    window (one sync at its end). Interleaving cancels machine drift; returns the medians
    (pipeline, resident). ``progress(steps done)`` is called after each window.
    """
    if pairs <= 0:
        return None, None
    model_state, optimizer_state = _copy(model_state), _copy(optimizer_state)
    sources = {"pipeline": train_iter, "resident": itertools.repeat(resident_batch)}
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(pairs):
        for name, source in sources.items():
            start, pending = time.perf_counter(), []
            for _ in range(window):
                model_state, optimizer_state, metrics = train_fn(model_state, optimizer_state, next(source))
                pending.append(metrics)
            jax.device_get(pending)
            times[name].append((time.perf_counter() - start) / window)
            if progress is not None:
                progress(window * sum(len(t) for t in times.values()))
    return statistics.median(times["pipeline"]), statistics.median(times["resident"])
