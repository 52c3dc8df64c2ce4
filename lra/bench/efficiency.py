"""Efficiency benchmark: time and memory of every attention family versus sequence length.

    python -m lra.bench.efficiency                                   # every runnable family, defaults
    python -m lra.bench.efficiency --lengths 256,512 --attention softmax,performer --mode layer

A *point* is (attention, mode, pass, batch, length, dtype):

- mode ``encoder``: the setting of the LRA efficiency table (Tay et al., ICLR 2021, Table 2):
  the official byte-level Text model (``configs/bench/text_encoder.yaml``: 4 layers, emb 256,
  4 heads x 64, FFN 1024, CLS) on random byte tokens, batch 32. The attention sees length + 1 tokens.
- mode ``layer``: one attention module alone, q/k/v ~ N(0, 1) of (batch, length, heads, head_dim).
- pass ``forward``: evaluation (``deterministic=True``); in encoder mode the harness's own eval step
  (``lra/training/steps.py``). Pass ``forward_backward``: gradients of the loss (encoder: cross-entropy
  w.r.t. the parameters, training mode with dropout; layer: 0.5 ||out||^2 w.r.t. q, k, v and the
  module's parameters). The optimiser update is not included.

Each point is compiled ahead of time (``jit(...).lower(...).compile()``); XLA's compiled memory
analysis and cost analysis give its memory and FLOPs (``lra/metrics.py``). If ``--memory-limit-gb``
is set and the compiled memory exceeds it, the point is recorded as ``oom`` without running. Otherwise
it runs ``--warmup`` times (not timed), then ``--repeats`` times, each call timed on its own up to
``block_until_ready``: the median, quartiles, min and max are reported. An out-of-memory error from
the device (XLA ``RESOURCE_EXHAUSTED``, at compile or run time) is recorded as ``oom`` too; longer
lengths of that family/mode/pass are then skipped. Any other failure is recorded as ``error`` with its
message and the sweep goes on. By default (``--isolate on``) every point runs in its own process:
a hard crash, or a hang past ``--point-timeout``, loses that point only (Performer's encoder
forward+backward once hung on a 2-core CPU inside LAPACK's QR; its features no longer use it),
and the device's peak-memory statistic (which JAX cannot reset) belongs to that point alone;
``--isolate off`` runs everything in this process and leaves ``device_peak_bytes`` empty.

Ratios (speed-up = softmax time / time; memory ratio = memory / softmax memory) are taken against
``softmax`` (the XLA path) measured in the same run at the same point, and against ``softmax_flash``
(cuDNN) when it ran (GPU). Per family the summary gives the largest length that fitted and the
crossover length: the shortest swept length from which on the family is faster than the reference at
every longer swept length (a reference that ran out of memory counts as slower).

Output (``lra/bench/report.py``): ``results/bench/<device>/<name>/`` with efficiency.csv (rewritten
after every point), summary.csv, efficiency.md, time_vs_length.png, memory_vs_length.png and
provenance.json.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import OmegaConf

from attention.base import AttentionSpec
from lra.atomic_files import atomic_write_text
from lra.bench.report import (PointProgress, markdown_table, output_directory, plot_lines, write_csv,
                              write_provenance)
from lra.metrics import compiled_flops, compiled_memory, device_peak_bytes
from lra.registry import ATTENTION_CONFIGS, load_attention_config, registered_attentions, runnable_attentions
from lra.build import attention_factory, build_model, model_rngs
from lra.training.steps import compile_step, make_eval_step, weighted_loss_and_correct

MODES = ("layer", "encoder")
PASSES = ("forward", "forward_backward")
BASELINE, FLASH = "softmax", "softmax_flash"
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384)  # the sweep; LRA Table 2 covers 1K-4K
ENCODER_SETTING = ATTENTION_CONFIGS.parent / "bench" / "text_encoder.yaml"

COLUMNS = (
    "attention", "mode", "pass", "batch", "length", "dtype", "status", "reason",
    "time_median_ms", "time_p25_ms", "time_p75_ms", "time_min_ms", "time_max_ms", "repeats", "steps_per_s",
    "speedup_vs_softmax", "memory_ratio_vs_softmax", "speedup_vs_flash", "memory_ratio_vs_flash",
    "xla_bytes", "xla_temp_bytes", "device_peak_bytes", "flops", "compile_s", "max_length_fit",
    "first_oom_length", "isolated", "device",
)
SUMMARY_COLUMNS = ("attention", "mode", "pass", "batch", "dtype", "max_length_fit", "first_oom_length",
                   "crossover_vs_softmax", "crossover_vs_flash")


@dataclasses.dataclass(frozen=True)
class Point:
    attention: str  # config name in configs/attention/
    mode: str
    pass_name: str
    batch: int
    length: int
    dtype: str

    @property
    def group(self) -> tuple:
        """The points that differ only in length: one line of a plot, one max_length_fit."""
        return (self.attention, self.mode, self.pass_name, self.batch, self.dtype)


@dataclasses.dataclass(frozen=True)
class Settings:
    warmup: int = 2                       # untimed calls after compilation
    repeats: int = 10                     # timed calls; median and spread over these
    memory_limit_gb: float | None = None  # refuse (status oom) points whose XLA compiled memory exceeds this
    layer_heads: int = 4                  # layer mode: heads and head_dim (default: the Text model's 4 x 64)
    layer_head_dim: int = 64
    encoder_setting: str = str(ENCODER_SETTING)


# ------------------------------------------------------------------------------------------------
# Building one point: a function and its example arguments
# ------------------------------------------------------------------------------------------------

def plain_attention_factory(config_name: str):
    """``lra.build.attention_factory``; a registered combination with a positional bias is refused:
    the benchmark measures plain attentions."""
    if load_attention_config(config_name).get("positional_bias"):
        raise ValueError(f"attention '{config_name}' is a combination with a positional bias; "
                         "benchmark the plain attention instead")
    return attention_factory(config_name)


def layer_case(point: Point, settings: Settings):
    """One attention module on q, k, v ~ N(0, 1): (function, example arguments)."""
    dtype = jnp.dtype(point.dtype)
    spec = AttentionSpec(num_heads=settings.layer_heads, head_dim=settings.layer_head_dim,
                         max_length=point.length, dtype=dtype)
    module = plain_attention_factory(point.attention)(spec, rngs=model_rngs(0))
    graph, state = nnx.split(module)
    shape = (point.batch, point.length, settings.layer_heads, settings.layer_head_dim)
    q, k, v = (jax.random.normal(key, shape, dtype) for key in jax.random.split(jax.random.key(0), 3))
    mask = jnp.ones(shape[:2], bool)

    def forward(state, q, k, v, mask):
        return nnx.merge(graph, state)(q, k, v, mask, deterministic=True)

    def forward_backward(state, q, k, v, mask):
        def loss(module, q, k, v):
            out = module(q, k, v, mask, deterministic=False)
            return 0.5 * jnp.sum(jnp.square(out.astype(jnp.float32)))
        return nnx.value_and_grad(loss, argnums=(0, 1, 2, 3))(nnx.merge(graph, state), q, k, v)

    return (forward if point.pass_name == "forward" else forward_backward), (state, q, k, v, mask)


def encoder_config(point: Point, settings: Settings):
    setting = OmegaConf.load(settings.encoder_setting)
    return OmegaConf.create({
        "seed": 0, "quirks": {"mean_pool_includes_padding": False},
        "task": {"num_classes": setting.num_classes, "max_length": point.length, "pad_id": 0, "grid_shape": None},
        "model": {**OmegaConf.to_container(setting.model), "dtype": point.dtype},
    }), int(setting.vocab_size)


def encoder_case(point: Point, settings: Settings):
    """The Text encoder on random byte tokens (no padding): (function, example arguments)."""
    cfg, vocab_size = encoder_config(point, settings)
    model = build_model(cfg, vocab_size, plain_attention_factory(point.attention))
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(1, vocab_size, (point.batch, point.length)), jnp.int32),
             "labels": jnp.asarray(rng.integers(0, cfg.task.num_classes, (point.batch,)), jnp.int32),
             "weights": jnp.ones((point.batch,), jnp.float32)}
    if point.pass_name == "forward":
        graph, state = nnx.split(model)
        return make_eval_step(graph), (state, batch)
    graph, state = nnx.split(model)

    def forward_backward(state, batch):  # the train step of lra/training/steps.py without the update
        def loss(model):
            logits = model(batch["tokens"], deterministic=False)
            loss_sum, _ = weighted_loss_and_correct(logits, batch["labels"], batch["weights"])
            return loss_sum / batch["weights"].sum()
        return nnx.value_and_grad(loss)(nnx.merge(graph, state))

    return forward_backward, (state, batch)


# ------------------------------------------------------------------------------------------------
# Measuring one point
# ------------------------------------------------------------------------------------------------

def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def measure(point: Point, settings: Settings, *, isolated: bool = False) -> dict:
    """One point -> one row (status ok | oom | error); never raises for a failure of the point."""
    row = {"attention": point.attention, "mode": point.mode, "pass": point.pass_name, "batch": point.batch,
           "length": point.length, "dtype": point.dtype, "isolated": isolated,
           "device": str(jax.local_devices()[0].device_kind)}
    try:
        build = encoder_case if point.mode == "encoder" else layer_case
        function, arguments = build(point, settings)
        start = time.perf_counter()
        compiled = compile_step(function, *arguments)
        row["compile_s"] = time.perf_counter() - start
        memory = compiled_memory(compiled)
        row.update(xla_bytes=memory["xla_step_bytes"], xla_temp_bytes=memory["xla_temp_bytes"],
                   flops=compiled_flops(compiled))
        limit = settings.memory_limit_gb
        if limit is not None and row["xla_bytes"] is not None and row["xla_bytes"] > limit * 1e9:
            return {**row, "status": "oom",
                    "reason": f"XLA compiled memory {row['xla_bytes'] / 1e9:.3g} GB > --memory-limit-gb {limit:g}"}
        for _ in range(settings.warmup):
            jax.block_until_ready(compiled(*arguments))
        times = []
        for _ in range(settings.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*arguments))
            times.append(time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - a failing point is a result, not the end of the sweep
        return {**row, "status": "oom" if is_out_of_memory(error) else "error", "reason": first_line(error)}
    milliseconds = np.asarray(times) * 1e3
    median = float(np.median(milliseconds))
    row.update(status="ok", reason="", repeats=len(times), time_median_ms=median,
               time_p25_ms=float(np.percentile(milliseconds, 25)), time_p75_ms=float(np.percentile(milliseconds, 75)),
               time_min_ms=float(milliseconds.min()), time_max_ms=float(milliseconds.max()),
               steps_per_s=1e3 / median, device_peak_bytes=device_peak_bytes() if isolated else None)
    return row


def measure_in_subprocess(point: Point, settings: Settings, timeout_s: float) -> dict:
    """``measure`` in a fresh Python process: a crash or kill costs this point only."""
    request = json.dumps({"point": dataclasses.asdict(point), "settings": dataclasses.asdict(settings)})
    base = {"attention": point.attention, "mode": point.mode, "pass": point.pass_name, "batch": point.batch,
            "length": point.length, "dtype": point.dtype, "isolated": True}
    try:
        done = subprocess.run([sys.executable, "-m", "lra.bench.efficiency", "--point", request],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "status": "error", "reason": f"timed out after {timeout_s:g} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("BENCH_ROW "):
            return json.loads(line[len("BENCH_ROW "):])
    tail = (done.stderr.strip().splitlines() or [""])[-1][:300]
    killed = done.returncode in (-9, 137)  # the kernel's OOM killer
    status = "oom" if killed or "RESOURCE_EXHAUSTED" in done.stderr else "error"
    return {**base, "status": status, "reason": f"process exited with {done.returncode}: {tail}"}


# ------------------------------------------------------------------------------------------------
# The sweep and the derived columns
# ------------------------------------------------------------------------------------------------

def sweep_points(attentions, modes, passes, batches, lengths, dtypes) -> list[Point]:
    """Grouped by (attention, mode, pass, batch, dtype), lengths ascending within a group."""
    return [Point(a, m, p, b, n, d) for a in attentions for m in modes for p in passes for b in batches
            for d in dtypes for n in sorted(lengths)]


def run_sweep(points: list[Point], settings: Settings, *, isolate: bool = False, point_timeout_s: float = 1800,
              progress: bool = True, on_row=None) -> list[dict]:
    """Measure every point; after an out-of-memory point the longer lengths of its group are skipped."""
    rows, exhausted = [], {}
    with PointProgress("bench", len(points), progress) as bar:
        for point in points:
            bar.describe(f"{point.attention} {point.mode} {point.pass_name} n={point.length}")
            if point.group in exhausted:
                row = {"attention": point.attention, "mode": point.mode, "pass": point.pass_name,
                       "batch": point.batch, "length": point.length, "dtype": point.dtype, "status": "skipped",
                       "reason": f"out of memory at length {exhausted[point.group]}"}
            elif isolate:
                row = measure_in_subprocess(point, settings, point_timeout_s)
            else:
                row = measure(point, settings)
            if row["status"] == "oom":
                exhausted.setdefault(point.group, point.length)
            rows.append(row)
            if on_row is not None:
                on_row(rows)
            bar.advance()
    return rows


def group_key(row: dict) -> tuple:
    return (row["attention"], row["mode"], row["pass"], row["batch"], row["dtype"])


def crossover(family: list[dict], reference: list[dict]) -> str:
    """Shortest length from which on ``family`` beats ``reference`` at every longer swept length.

    "<=n" when it is faster at every length it ran, "none" when it is not faster at the longest,
    "" when there is no reference. A reference point that did not run (oom) counts as slower.
    """
    if not reference:
        return ""
    reference_time = {row["length"]: row.get("time_median_ms") for row in reference if row["status"] == "ok"}
    measured = sorted((row["length"], row["time_median_ms"]) for row in family if row["status"] == "ok")
    faster = [length not in reference_time or time < reference_time[length] for length, time in measured]
    start = len(faster)
    while start > 0 and faster[start - 1]:
        start -= 1
    if start == len(faster):
        return "none"
    return f"<={measured[0][0]}" if start == 0 else str(measured[start][0])


def derive(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Add ratios against softmax / flash (same run, same point) and per-family fit and crossover."""
    by_point = {(group_key(row)[1:], row["length"], row["attention"]): row for row in rows}
    groups = defaultdict(list)
    for row in rows:
        groups[group_key(row)].append(row)
    summary = []
    for key, members in groups.items():
        fitted = [row["length"] for row in members if row["status"] == "ok"]
        failed = [row["length"] for row in members if row["status"] == "oom"]
        fit, first_oom = (max(fitted) if fitted else None), (min(failed) if failed else None)
        references = {}
        for reference, suffix in ((BASELINE, "softmax"), (FLASH, "flash")):
            references[suffix] = groups.get((reference, *key[1:]), [])
            for row in members:
                base = by_point.get((key[1:], row["length"], reference))
                ok = row["status"] == "ok" and base is not None and base["status"] == "ok"
                row[f"speedup_vs_{suffix}"] = base["time_median_ms"] / row["time_median_ms"] if ok else None
                row[f"memory_ratio_vs_{suffix}"] = row["xla_bytes"] / base["xla_bytes"] \
                    if ok and row.get("xla_bytes") and base.get("xla_bytes") else None
        for row in members:
            row["max_length_fit"], row["first_oom_length"] = fit, first_oom
        summary.append(dict(zip(("attention", "mode", "pass", "batch", "dtype"), key), max_length_fit=fit,
                            first_oom_length=first_oom,
                            crossover_vs_softmax=crossover(members, references["softmax"]) if key[0] != BASELINE else "",
                            crossover_vs_flash=crossover(members, references["flash"]) if key[0] != FLASH else ""))
    return rows, summary


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def cell(row: dict | None, value: str, ratio: str, unit: str, scale: float) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return row["status"]
    amount = row[value] / scale if row.get(value) is not None else None
    text = "–" if amount is None else f"{amount:.0f} {unit}" if amount >= 100 else f"{amount:.3g} {unit}"
    return text + (f" ({row[ratio]:.2f}×)" if row.get(ratio) is not None else "")


def markdown_report(rows: list[dict], summary: list[dict], info: dict) -> str:
    lengths = sorted({row["length"] for row in rows})
    commit = info['git_sha'] + ("-dirty" if info.get("git_dirty") else "")
    lines = [f"# Efficiency benchmark — {info['device']}\n",
             f"{info['date']}, git {commit}, jax {info['jax_version']}, backend {info['backend']}. "
             "Settings: " + ", ".join(f"{k}={v}" for k, v in info["settings"].items()) + ".\n"]
    if info["backend"] == "cpu":
        lines.append("**CPU run**: timings and memory of a CPU, not of an accelerator; the flash path is absent.\n")
    lines += ["## Summary\n", "Crossover: shortest length from which on the family is faster than the reference "
              "at every longer swept length (`<=n`: faster everywhere; `none`: not faster at the longest).\n",
              markdown_table(SUMMARY_COLUMNS, ([entry[c] for c in SUMMARY_COLUMNS] for entry in summary))]
    tables = sorted({group_key(row)[1:] for row in rows})
    for mode, pass_name, batch, dtype in tables:
        members = [row for row in rows if group_key(row)[1:] == (mode, pass_name, batch, dtype)]
        index = {(row["attention"], row["length"]): row for row in members}
        names = sorted({row["attention"] for row in members}, key=lambda n: (n not in (BASELINE, FLASH), n))
        lines.append(f"## {mode}, {pass_name}, batch {batch}, {dtype}\n")
        lines.append("Median time per call (speed-up vs softmax, same run):\n")
        lines.append(markdown_table(["attention", *map(str, lengths)], (
            [name, *(cell(index.get((name, n)), "time_median_ms", "speedup_vs_softmax", "ms", 1.0) for n in lengths)]
            for name in names)))
        lines.append("\nXLA compiled memory (ratio to softmax):\n")
        lines.append(markdown_table(["attention", *map(str, lengths)], (
            [name, *(cell(index.get((name, n)), "xla_bytes", "memory_ratio_vs_softmax", "MB", 1e6) for n in lengths)]
            for name in names)))
        if any(row.get("device_peak_bytes") for row in members):
            lines.append("\nDevice peak memory (per point, isolated process):\n")
            lines.append(markdown_table(["attention", *map(str, lengths)], (
                [name, *(cell(index.get((name, n)), "device_peak_bytes", "", "MB", 1e6) for n in lengths)]
                for name in names)))
        lines.append("")
    failures = [row for row in rows if row["status"] not in ("ok", "skipped")]
    if failures:
        lines.append("## Points that did not run\n")
        lines.append(markdown_table(["attention", "mode", "pass", "length", "status", "reason"],
                                    ([r["attention"], r["mode"], r["pass"], r["length"], r["status"], r["reason"]]
                                     for r in failures)))
    return "\n".join(lines)


def write_report(directory: Path, rows: list[dict], info: dict) -> list[dict]:
    rows, summary = derive(rows)
    write_csv(directory / "efficiency.csv", rows, COLUMNS)
    write_csv(directory / "summary.csv", summary, SUMMARY_COLUMNS)
    atomic_write_text(directory / "efficiency.md", markdown_report(rows, summary, info))
    device = info["device"]
    memory_key = "device_peak_bytes" if any(row.get("device_peak_bytes") for row in rows) else "xla_bytes"
    plotted = [{**row, "memory_mb": row[memory_key] / 1e6 if row.get(memory_key) else None}
               for row in rows if row["status"] != "skipped"]
    common = dict(x="length", series="attention", panels=("mode", "pass"), xlabel="sequence length",
                  emphasise=(BASELINE, FLASH), status="status")
    plot_lines(directory / "time_vs_length.png", plotted, y="time_median_ms", ylabel="median time per call (ms)",
               title=f"Time vs length — {device}; x: out of memory from there", **common)
    plot_lines(directory / "memory_vs_length.png", plotted, y="memory_mb",
               ylabel="device peak memory (MB)" if memory_key == "device_peak_bytes" else "XLA compiled memory (MB)",
               title=f"Memory vs length — {device}; x: out of memory from there", **common)
    return summary


TEXT_COLUMNS = ("attention", "mode", "pass", "dtype", "status", "reason", "device", "isolated")
INTEGER_COLUMNS = ("batch", "length", "repeats", "xla_bytes", "xla_temp_bytes", "device_peak_bytes",
                   "max_length_fit", "first_oom_length")


def read_rows(path: Path) -> list[dict]:
    """efficiency.csv back into rows (numbers as numbers, empty cells as None)."""
    def value(column, text):
        if column in TEXT_COLUMNS:
            return text
        if text == "":
            return None
        return int(text) if column in INTEGER_COLUMNS else float(text)

    with open(path, newline="") as handle:
        return [{column: value(column, text) for column, text in row.items()} for row in csv.DictReader(handle)]


def rebuild_report(directory: Path) -> list[dict]:
    """Rewrite summary, markdown and plots of a run folder from its efficiency.csv and provenance.json."""
    info = json.loads((directory / "provenance.json").read_text())
    return write_report(directory, read_rows(directory / "efficiency.csv"), info)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def comma_list(text: str, cast=str) -> list:
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


def default_attentions() -> list[str]:
    return runnable_attentions(jax.default_backend())[0]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", default="", help="comma-separated config names (default: every runnable "
                        "plain attention; softmax, and softmax_flash on a GPU, are always added as references)")
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="comma-separated lengths")
    parser.add_argument("--mode", default="encoder,layer", help="encoder | layer | encoder,layer")
    parser.add_argument("--passes", default="forward,forward_backward", help="forward | forward_backward | both")
    parser.add_argument("--batch", default="32", help="comma-separated batch sizes (LRA Table 2: 32)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 (comma-separated for both)")
    parser.add_argument("--warmup", type=int, default=Settings.warmup)
    parser.add_argument("--repeats", type=int, default=Settings.repeats)
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="record points whose XLA compiled memory exceeds this as oom, without running them")
    parser.add_argument("--encoder-setting", default=Settings.encoder_setting,
                        help="YAML with vocab_size, num_classes and the Encoder's model keywords")
    parser.add_argument("--layer-heads", type=int, default=Settings.layer_heads)
    parser.add_argument("--layer-head-dim", type=int, default=Settings.layer_head_dim)
    parser.add_argument("--isolate", choices=("on", "off"), default="on",
                        help="one process per point (default): a crash or hang (--point-timeout) costs that point "
                             "only, and the device peak memory is the point's own; off: all in this process")
    parser.add_argument("--point-timeout", type=float, default=1800, help="seconds per isolated point")
    parser.add_argument("--output-root", default=None, help="default results/bench")
    parser.add_argument("--name", default=None, help="run folder name (default: UTC timestamp)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", default=None, metavar="RUN_DIR",
                        help="rebuild summary, markdown and plots of an existing run folder from its CSV")
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # internal: one isolated point
    args = parser.parse_args(argv)
    for option, allowed in (("mode", MODES), ("passes", PASSES), ("dtype", ("float32", "bfloat16"))):
        for value in comma_list(getattr(args, option)):
            if value not in allowed:
                parser.error(f"--{option}: {value!r} is not one of {allowed}")
    return args


def main(argv=None) -> Path | None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    if args.point:  # child process of --isolate: measure one point, print its row
        request = json.loads(args.point)
        row = measure(Point(**request["point"]), Settings(**request["settings"]), isolated=True)
        print("BENCH_ROW " + json.dumps(row, default=float), flush=True)
        return None
    if args.report_only:
        rebuild_report(Path(args.report_only))
        print(f"rebuilt {args.report_only}")
        return Path(args.report_only)
    attentions = comma_list(args.attention) or default_attentions()
    registered = registered_attentions()
    unknown = [name for name in attentions if name not in registered]
    if unknown:
        raise SystemExit(f"--attention: unknown {unknown}; registered: {sorted(registered)}")
    references = [BASELINE] + ([FLASH] if jax.default_backend() == "gpu" else [])  # always measured alongside
    attentions = references + [name for name in attentions if name not in references]
    settings = Settings(warmup=args.warmup, repeats=args.repeats, memory_limit_gb=args.memory_limit_gb,
                        layer_heads=args.layer_heads, layer_head_dim=args.layer_head_dim,
                        encoder_setting=args.encoder_setting)
    points = sweep_points(attentions, comma_list(args.mode), comma_list(args.passes), comma_list(args.batch, int),
                          comma_list(args.lengths, int), comma_list(args.dtype))
    isolate = args.isolate == "on"
    directory = output_directory(args.output_root, args.name)
    info = write_provenance(directory / "provenance.json", {
        **dataclasses.asdict(settings), "attentions": attentions, "lengths": args.lengths, "modes": args.mode,
        "passes": args.passes, "batch": args.batch, "dtype": args.dtype, "isolate": isolate})
    checkpoint = lambda rows: write_csv(directory / "efficiency.csv", derive([dict(r) for r in rows])[0], COLUMNS)
    rows = run_sweep(points, settings, isolate=isolate, point_timeout_s=args.point_timeout,
                     progress=not args.no_progress, on_row=checkpoint)
    summary = write_report(directory, rows, info)
    print(markdown_table(SUMMARY_COLUMNS, ([entry[c] for c in SUMMARY_COLUMNS] for entry in summary)))
    print(f"wrote {directory}")
    return directory


if __name__ == "__main__":
    main()
