"""Step-time benchmark: the harness's own training step per attention, at a protocol's real shapes.

    python -m lra.bench.step protocol=pytorch_lineage task=listops
    python -m lra.bench.step --attention softmax,nystromformer,skyformer protocol=pytorch_lineage task=listops
    python -m lra.bench.step --rounds 5 protocol=pytorch_lineage task=listops task.max_length=512 train.batch_size=8

Arguments after the flags are Hydra overrides of the run config (``configs/config.yaml``), so the model,
the attention (with the task's ``attention_overrides``, e.g. the authors' flags of ``pytorch_lineage``),
the optimizer and the batch shape are exactly those of ``python -m lra.train`` with the same overrides:
the model comes from ``lra.build``, the optimizer from ``lra.training.optimizer`` and the step is
``lra.training.steps.make_train_step`` compiled as the training loop compiles it (states donated). No
data is read: the batch is random tokens in ``[1, vocab)`` without padding (every row full length; the
step's cost does not depend on the token values), the vocabulary that of the task (``lra.data.tasks.task_vocab_size``).

For each attention it measures, on one device:

- ``step``: the whole training step (forward, backward, optimizer update), chained as in training
  (each call takes the states the previous one returned);
- ``optimizer``: the optimizer update alone (``optimizer.update`` on gradients of the model's shape);
- once per run, ``no_attention``: the same step with the attention replaced by an identity-cost stub
  (out = (q + k + v) / 3, elementwise, so the q/k/v/output projections keep their forward and backward
  cost) -- the encoder without attention.

Calls are timed in interleaved rounds: every round calls every measured function once, in an order
rotated from round to round, so slow phases of a shared machine hit every attention alike. Reported:
median and quartiles over the rounds, the ratio to softmax (time / softmax time, same run), the median
of this process's CPU time per step (all its threads: less disturbed than wall time by other jobs on a
shared machine, but on an idle machine larger than wall time by the threads' parallelism), the compile
time (lower + compile), XLA's FLOP estimate of the step (``compiled.cost_analysis()``) and the achieved
FLOP/s (estimate / median time), and the split of the step by ablation:

    attention  = step - no_attention         (the attention's forward + backward)
    optimizer  = optimizer alone
    rest       = no_attention - optimizer    (embedding, projections, FFN, norms, head, loss)

The split is a difference of medians: for an attention whose cost is within the rounds' noise it can
come out slightly negative, and it is reported as measured.

Output (``lra/bench/report.py``): ``results/bench/<device>/<name>/`` with step.csv, step.md and
provenance.json (the load average at the start is in it: timings of a busy machine are noisy).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lra.atomic_files import atomic_write_text
from lra.bench.report import markdown_table, output_directory, write_csv, write_provenance
from lra.build import build_attention, build_model_and_optimizer, build_positional_bias, task_attention_config
from lra.data.tasks import batch_length, task_vocab_size
from lra.metrics import compiled_flops
from lra.model import count_parameters
from lra.registry import ATTENTION_CONFIGS
from lra.training import sharding
from lra.training.steps import compile_step, compile_train_step

BASELINE = "softmax"
NO_ATTENTION = "no_attention"  # the row of the attention-free step

COLUMNS = (
    "attention", "status", "reason", "batch", "length", "params", "rounds",
    "step_median_ms", "step_p25_ms", "step_p75_ms", "step_min_ms", "ratio_to_softmax",
    "step_cpu_median_ms", "cpu_ratio_to_softmax",
    "compile_s", "flops", "achieved_gflop_per_s",
    "attention_ms", "rest_ms", "optimizer_ms", "attention_share",
    "optimizer_median_ms", "optimizer_p25_ms", "optimizer_p75_ms", "device", "devices",
)



def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ATTENTION_CONFIGS.parent), version_base="1.3"):
        return compose("config", overrides=[*overrides, "logger=csv"])


class IdentityCostAttention(nnx.Module):
    """The ablation stub: (q + k + v) / 3, elementwise; no attention cost, every projection used."""

    def __init__(self, spec, *, rngs: nnx.Rngs):
        del spec, rngs

    def __call__(self, q, k, v, key_mask, *, deterministic: bool):
        del key_mask, deterministic
        return (q + k + v) / 3


def random_batch(cfg: DictConfig, vocab_size: int, seed: int = 0) -> dict:
    """Random tokens in [1, vocab), labels and unit weights, its rows split over the devices as in training."""
    batch_size, length = int(cfg.train.batch_size), batch_length(cfg.task)
    mesh = sharding.data_mesh()
    sharding.check_divisible(batch_size, "train.batch_size", mesh)
    rng = np.random.default_rng(seed)
    batch = {"tokens": jnp.asarray(rng.integers(1, vocab_size, (batch_size, length)), jnp.int32),
             "labels": jnp.asarray(rng.integers(0, int(cfg.task.num_classes), (batch_size,)), jnp.int32),
             "weights": jnp.ones((batch_size,), jnp.float32)}
    return jax.device_put(batch, sharding.batch_sharding(mesh))


class Timed:
    """One compiled function with its chained state: ``call()`` runs it once and waits for it."""

    def __init__(self, compiled, states: tuple, batch=None):
        self.compiled, self.states, self.batch = compiled, states, batch
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # this process's CPU time per timed call (all its threads)
        self.last_cpu = 0.0

    def call(self) -> float:
        start, cpu_start = time.perf_counter(), time.process_time()
        outputs = self.compiled(*self.states, *(() if self.batch is None else (self.batch,)))
        jax.block_until_ready(outputs)
        elapsed = time.perf_counter() - start
        self.last_cpu = time.process_time() - cpu_start
        self.states = tuple(outputs[:len(self.states)])  # donated inputs: continue from the outputs
        return elapsed


def attention_factories(cfg: DictConfig):
    """(attention factory, positional-bias factory or None) of the run config, the task's overrides applied."""
    _, factory, _ = build_attention(task_attention_config(cfg))
    _, bias, _, _ = build_positional_bias(cfg)
    return factory, bias


def build_step(cfg: DictConfig, vocab_size: int, attention_factory, bias_factory, batch: dict):
    """(compiled train step, its states, compile seconds, model) -- the training loop's step: data-parallel
    over every visible device (states replicated, the batch's rows split), as ``lra.training.loop`` compiles it."""
    model, optimizer, _ = build_model_and_optimizer(cfg, vocab_size, attention_factory, bias_factory)
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    mesh = sharding.data_mesh()
    model_state, optimizer_state = sharding.put_replicated((model_state, optimizer_state), mesh)
    accum_steps = int(cfg.train.get("grad_accum_steps") or 1)
    start = time.perf_counter()
    compiled = compile_train_step(model_graph, optimizer_graph, model_state, optimizer_state, batch, mesh, accum_steps)
    return compiled, (model_state, optimizer_state), time.perf_counter() - start, model, optimizer


def build_optimizer_update(model: nnx.Module, optimizer: nnx.Optimizer):
    """The optimizer update alone: (model state, optimizer state, gradients) -> new states."""
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), nnx.state(model, nnx.Param))

    def update(model_state, optimizer_state, grads):
        model = nnx.merge(model_graph, model_state)
        optimizer = nnx.merge(optimizer_graph, optimizer_state)
        optimizer.update(model, grads)
        return nnx.state(model), nnx.state(optimizer), grads

    states = jax.tree.map(jnp.copy, (model_state, optimizer_state))  # the train step donates the originals
    compiled = compile_step(update, *states, grads, donate_argnums=(0, 1))
    return Timed(compiled, (*states, grads))


def quantiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"median": float(np.median(ms)), "p25": float(np.percentile(ms, 25)),
            "p75": float(np.percentile(ms, 75)), "min": float(ms.min())}


def prepare(attentions: list[str], overrides: list[str], vocab_size: int | None, echo=print):
    """Compile everything: {name: row}, {(name, kind): Timed}; a failing attention is a row, not the end."""
    rows, timed = {}, {}
    base = compose_config(overrides)
    vocab = vocab_size or task_vocab_size(base.task)
    batch = random_batch(base, vocab)
    shape = {"batch": int(base.train.batch_size), "length": batch_length(base.task),
             "device": str(jax.local_devices()[0].device_kind), "devices": jax.device_count()}
    jobs = [(NO_ATTENTION, None)] + [(name, name) for name in attentions]
    for label, name in jobs:
        row = {"attention": label, **shape}
        try:
            if name is None:
                cfg, factory, bias = base, IdentityCostAttention, None
            else:
                cfg = compose_config([*overrides, f"attention={name}"])
                factory, bias = attention_factories(cfg)
            compiled, states, compile_s, model, optimizer = build_step(cfg, vocab, factory, bias, batch)
            row.update(params=count_parameters(model), compile_s=compile_s, flops=compiled_flops(compiled))
            timed[(label, "step")] = Timed(compiled, states, batch)
            if name is not None:
                timed[(label, "optimizer")] = build_optimizer_update(model, optimizer)
            row.update(status="ok", reason="")
            echo(f"compiled {label}: {compile_s:.1f} s, {row['params']:,} parameters")
        except Exception as error:  # noqa: BLE001 - one attention failing is a result
            text = (str(error).strip().splitlines() or [""])[0][:300]
            row.update(status="error", reason=f"{type(error).__name__}: {text}")
            echo(f"{label}: {row['reason']}")
        rows[label] = row
    return rows, timed


def run_rounds(timed: dict, rounds: int, warmup: int) -> None:
    """Warm up each function, then ``rounds`` rounds of one call each, the order rotated per round."""
    order = list(timed)
    for entry in order:
        for _ in range(warmup):
            timed[entry].call()
    for index in range(rounds):
        shift = index % len(order)
        for entry in order[shift:] + order[:shift]:
            timed[entry].times.append(timed[entry].call())
            timed[entry].cpu_times.append(timed[entry].last_cpu)


def summarise(rows: dict, timed: dict, rounds: int) -> list[dict]:
    """Fill the timing columns; the split and the ratios come from medians of the same run."""
    for (label, kind), entry in timed.items():
        stats = quantiles(entry.times)
        prefix = "step" if kind == "step" else "optimizer"
        rows[label].update({f"{prefix}_median_ms": stats["median"], f"{prefix}_p25_ms": stats["p25"],
                            f"{prefix}_p75_ms": stats["p75"], "rounds": rounds})
        if kind == "step":
            rows[label]["step_min_ms"] = stats["min"]
            if entry.cpu_times:
                rows[label]["step_cpu_median_ms"] = float(np.median(entry.cpu_times)) * 1e3
    base = rows.get(BASELINE, {}).get("step_median_ms")
    no_attention = rows.get(NO_ATTENTION, {}).get("step_median_ms")
    for row in rows.values():
        step = row.get("step_median_ms")
        if step is None:
            continue
        if row.get("flops"):
            row["achieved_gflop_per_s"] = row["flops"] / (step * 1e-3) / 1e9
        if base:
            row["ratio_to_softmax"] = step / base
        base_cpu = rows.get(BASELINE, {}).get("step_cpu_median_ms")
        if base_cpu and row.get("step_cpu_median_ms") is not None:
            row["cpu_ratio_to_softmax"] = row["step_cpu_median_ms"] / base_cpu
        optimizer = row.get("optimizer_median_ms")
        if row["attention"] != NO_ATTENTION and no_attention is not None and optimizer is not None:
            row.update(attention_ms=step - no_attention, optimizer_ms=optimizer, rest_ms=no_attention - optimizer,
                       attention_share=(step - no_attention) / step)
    return list(rows.values())


def ms(value) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown_report(rows: list[dict], info: dict, overrides: list[str]) -> str:
    commit = info["git_sha"] + ("-dirty" if info.get("git_dirty") else "")
    first = rows[0]
    lines = [f"# Training-step benchmark — {info['device']}\n",
             f"{info['date']}, git {commit}, jax {info['jax_version']}, backend {info['backend']}, "
             f"{info['cpu_count']} CPUs, load average at start {info['load_average_at_start']}. "
             f"Overrides: `{' '.join(overrides)}`; batch {first['batch']} x {first['length']} tokens "
             f"over {first['devices']} device(s), "
             f"{info['settings']['rounds']} interleaved rounds after {info['settings']['warmup']} warm-up calls.\n",
             "Step = forward + backward + optimizer update (the training loop's compiled step, states donated). "
             "Ratio = step median / softmax's step median (same run); CPU = this process's CPU time per step "
             "(all its threads; less disturbed by other jobs than wall time). attention = step − no_attention step; "
             "rest = no_attention step − optimizer; optimizer = the update alone (medians).\n"]
    if info["backend"] == "cpu":
        lines.append("**CPU run**: times of a CPU, not of an accelerator.\n")
    table = []
    for row in rows:
        if row["status"] != "ok":
            table.append([row["attention"], row["status"], row["reason"], "", "", "", "", "", "", "", "", ""])
            continue
        quartiles = f"{ms(row.get('step_p25_ms'))}–{ms(row.get('step_p75_ms'))}"
        ratio = row.get("ratio_to_softmax")
        share = row.get("attention_share")
        cpu_ratio = row.get("cpu_ratio_to_softmax")
        table.append([row["attention"], ms(row.get("step_median_ms")), quartiles,
                      "" if ratio is None else f"{ratio:.2f}",
                      "" if cpu_ratio is None else f"{ms(row.get('step_cpu_median_ms'))} ({cpu_ratio:.2f}×)",
                      f"{row['compile_s']:.1f}",
                      "" if not row.get("flops") else f"{row['flops'] / 1e9:.2f}",
                      "" if row.get("achieved_gflop_per_s") is None else f"{row['achieved_gflop_per_s']:.1f}",
                      ms(row.get("attention_ms")), ms(row.get("rest_ms")), ms(row.get("optimizer_ms")),
                      "" if share is None else f"{100 * share:.0f} %"])
    lines.append(markdown_table(["attention", "step ms (median)", "p25–p75 ms", "× softmax",
                                 "CPU ms (× softmax)", "compile s", "XLA GFLOP", "GFLOP/s", "attention ms", "rest ms", "optimizer ms",
                                 "attention share"], table))
    lines.append("\nParameters: " + ", ".join(f"{row['attention']} {row['params']:,}" for row in rows
                                              if row.get("params") is not None) + ".\n")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", default="softmax,nystromformer,skyformer,performer",
                        help="comma-separated attention config names; softmax is always added (the ratios' base)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each function first")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the task's vocabulary")
    parser.add_argument("--output-root", default=None, help="default results/bench")
    parser.add_argument("--name", default=None, help="run folder name (default: step_<UTC timestamp>)")
    args, overrides = parser.parse_known_args(argv)
    unknown = [item for item in overrides if item.startswith("--")]
    if unknown:
        parser.error(f"unknown flags {unknown} (Hydra overrides have no leading --)")
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    return args, overrides


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args, overrides = parse_args(argv)
    attentions = [name.strip() for name in args.attention.split(",") if name.strip()]
    attentions = [BASELINE] + [name for name in attentions if name != BASELINE]
    rows, timed = prepare(attentions, overrides, args.vocab_size)
    directory = output_directory(args.output_root, args.name or time.strftime("step_%Y-%m-%d_%H-%M-%S", time.gmtime()))
    info = write_provenance(directory / "provenance.json", {
        "attentions": attentions, "overrides": overrides, "rounds": args.rounds, "warmup": args.warmup,
        "vocab_size": args.vocab_size})
    run_rounds(timed, args.rounds, args.warmup)
    result = summarise(rows, timed, args.rounds)
    write_csv(directory / "step.csv", result, COLUMNS)
    report = markdown_report(result, info, overrides)
    atomic_write_text(directory / "step.md", report)
    print(report)
    print(f"wrote {directory}")
    return directory


if __name__ == "__main__":
    main()
