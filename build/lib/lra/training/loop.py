"""The training loop: one readable function from (model, optimizer, data) to a run's metrics.

    compile train and eval steps once (ahead of time, timed, memory-analysed)
    for step in 1..steps:
        state = train_step(state, next prefetched batch)        # no host sync here
        every log_every steps: fetch the window's metrics (one sync), time the window
        every eval_every steps: full validation pass; keep the best-validation parameters
    test with the final parameters and with the best-validation parameters
    host overhead: alternate windows fed by the prefetched pipeline and by one resident batch

Step time is measured per logging window (wall time / steps, after the window's metrics are on the
host) and the median over windows is reported; the first window is warm-up and is excluded when
there are others. Evaluation time is never inside a window.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra.data import batches as batching
from lra.data.token_cache import TokenSplit
from lra.metrics import compiled_flops, compiled_memory, device_peak_bytes
from lra.training.steps import compile_step, make_eval_step, make_train_step

warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


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


class DivergenceError(RuntimeError):
    pass


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def evaluate(eval_fn, model_state, split: TokenSplit, cfg: LoopConfig) -> dict:
    """Loss and accuracy over the (first eval_limit examples of the) split; every example once."""
    totals = None
    batch_size = cfg.eval_batch_size or cfg.batch_size
    for batch in batching.prefetch_to_device(
            batching.eval_batches(split, batch_size, cfg.max_length, cfg.eval_limit), cfg.prefetch):
        sums = eval_fn(model_state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count,
            "examples": int(count)}


def train_and_evaluate(model: nnx.Module, optimizer: nnx.Optimizer, learning_rate: Callable,
                       splits: dict[str, TokenSplit], cfg: LoopConfig, log: Callable[[int, str, dict], None],
                       progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train for cfg.steps; return accuracies, losses, timings and memory figures of the run."""
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    train_iter: Iterator[dict] = batching.prefetch_to_device(
        batching.train_batches(splits["train"], cfg.batch_size, cfg.max_length, cfg.seed, cfg.train_limit),
        cfg.prefetch)
    first_batch = next(train_iter)
    eval_example = jax.device_put(next(batching.eval_batches(
        splits["val"], cfg.eval_batch_size or cfg.batch_size, cfg.max_length, cfg.eval_limit)))

    start = time.perf_counter()
    train_fn = compile_step(make_train_step(model_graph, optimizer_graph), model_state, optimizer_state,
                            first_batch, donate_argnums=(0, 1))
    compile_time = time.perf_counter() - start
    start = time.perf_counter()
    eval_fn = compile_step(make_eval_step(model_graph), model_state, eval_example)
    eval_compile_time = time.perf_counter() - start

    window_times, pending = [], []
    best = {"accuracy": -1.0, "step": 0}
    best_state = None
    last_train: dict = {}
    batch = first_batch
    window_start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        model_state, optimizer_state, metrics = train_fn(model_state, optimizer_state, batch)
        pending.append(metrics)
        is_eval = step % cfg.eval_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or is_eval:
            values = jax.device_get(pending)
            window_times.append((time.perf_counter() - window_start) / len(pending))
            last_train = {key: float(np.mean([v[key] for v in values])) for key in values[0]}
            if not np.isfinite(last_train["loss"]):
                raise DivergenceError(f"training diverged: loss {last_train['loss']} at step {step}")
            last_train.update(learning_rate=float(learning_rate(step - 1)), step_time_s=window_times[-1],
                              examples_per_s=cfg.batch_size / window_times[-1])
            log(step, "train", last_train)
            pending = []
        if is_eval:
            val = evaluate(eval_fn, model_state, splits["val"], cfg)
            log(step, "val", val)
            if val["accuracy"] > best["accuracy"]:
                best = {"accuracy": val["accuracy"], "loss": val["loss"], "step": step}
                best_state = _copy(model_state)
            last_val = val
        if progress is not None and (step % cfg.log_every == 0 or is_eval):
            progress(step, {"loss": last_train.get("loss"), "val": best["accuracy"]})
        if step < cfg.steps:
            if is_eval or step % cfg.log_every == 0:
                window_start = time.perf_counter()  # a window covers fetching and stepping only
            batch = next(train_iter)

    test_final = evaluate(eval_fn, model_state, splits["test"], cfg)
    test_best = evaluate(eval_fn, best_state, splits["test"], cfg)
    log(cfg.steps, "test_final", test_final)
    log(cfg.steps, "test_best_val", test_best)

    steady = window_times[1:] if len(window_times) > 1 else window_times
    step_time = statistics.median(steady)
    pipeline_time, resident_time = _host_overhead_timing(
        train_fn, model_state, optimizer_state, train_iter, batch, cfg.overhead_pairs, cfg.log_every)
    nnx.update(model, model_state)
    nnx.update(optimizer, optimizer_state)
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
    }


def _host_overhead_timing(train_fn, model_state, optimizer_state, train_iter, resident_batch,
                          pairs: int, window: int) -> tuple[float | None, float | None]:
    """Side-by-side step times, on copies of the final state, to isolate the host's share.

    Alternates windows of ``window`` steps fed by the training loop's own prefetched iterator and
    windows fed by one device-resident batch (the compiled step alone), each timed like a loop
    window (one sync at its end). Interleaving cancels machine drift; returns the medians
    (pipeline, resident).
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
    return statistics.median(times["pipeline"]), statistics.median(times["resident"])
