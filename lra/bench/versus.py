"""Side by side: this harness's training step against the authors' PyTorch LRA code, same config.

    python -m lra.bench.versus --authors-code ~/Skyformer/src --torch-python ~/torch-env/bin/python
    python -m lra.bench.versus --authors-code ... --torch-python ... --attention performer --rounds 20
    make bench-versus AUTHORS_CODE=~/Skyformer/src TORCH_PYTHON=~/torch-env/bin/python

The other side is the PyTorch LRA code of the Skyformer repository (github.com/pkuzengqi/Skyformer,
``src/``), the code behind the ``pytorch_lineage`` protocol's published numbers, timed by
``scripts/pytorch_lineage_step.py`` in a PyTorch environment of its own (the harness never imports
PyTorch; docs/benchmarks.md lists the packages). Both sides run the ListOps model of that lineage at
the authors' shapes: 2 layers, width 64, 2 heads x 32, FFN 128, batch 32 x 2,048 tokens (their
``main.py`` rounds the 2,000 positions up to 2,048), AdamW with gradient values clipped at 1.
The harness side is ``protocol=pytorch_lineage task=listops task.max_length=2048
optimizer.grad_clip.kind=value optimizer.grad_clip.max=1.0`` (its authors'-form flags on), with the
attention sizes of the authors' ListOps config (``SETUPS``: 128 landmarks without the conv skip for
Nystromformer, 128 for Skyformer, 128 random features for Performer). Overrides after the flags are
added to every harness run (e.g. a smaller shape); the PyTorch side then gets the same batch and length.

Each (attention, side) is one worker process, pinned to ``--cores`` (``taskset``), built once and
warmed up, then timed in interleaved rounds: every round steps every worker of the attention once, in
an order rotated per round, so drift of the machine hits both sides alike. The workers never run at
the same time. Softmax is timed twice on the PyTorch side: as their code runs it (their softmax
attention is gradient-checkpointed) and without the checkpoint.

Output: ``results/bench/<device>/<name>/`` with versus.csv (one row per attention and side),
versus.md, versus.png (speed-up per attention) and provenance.json (settings, the PyTorch version and
the authors' commit when ``--authors-code`` is inside a git checkout). Speed-up = the PyTorch side's
median step time / the harness's median step time, from the same rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax

from lra.atomic_files import atomic_save_figure, atomic_write_text
from lra.bench.report import markdown_table, output_directory, write_csv, write_provenance
from lra.bench.step import Timed, attention_factories, build_step, compose_config, quantiles, random_batch
from lra.data.tasks import batch_length, task_vocab_size
from lra.model import count_parameters

BASE_OVERRIDES = ("protocol=pytorch_lineage", "task=listops", "task.max_length=2048",
                  "optimizer.grad_clip.kind=value", "optimizer.grad_clip.max=1.0")
TORCH_WORKER = Path(__file__).resolve().parents[2] / "scripts" / "pytorch_lineage_step.py"
HARNESS = "lra"


@dataclasses.dataclass(frozen=True)
class Setup:
    overrides: tuple[str, ...]        # the harness's attention at the authors' sizes
    authors: str                      # their attn_type
    checkpointing: tuple[bool, ...] = (False,)  # PyTorch variants: gradient checkpointing off / on


SETUPS = {  # the authors' ListOps extra_attn_config (Skyformer src/config.py)
    "softmax": Setup(("attention=softmax",), "softmax", (True, False)),
    "nystromformer": Setup(("attention=nystromformer", "attention.num_landmarks=128",
                            "attention.conv_kernel_size=null"), "nystrom"),
    "skyformer": Setup(("attention=skyformer", "attention.num_landmarks=128"), "skyformer"),
    "performer": Setup(("attention=performer", "attention.num_features=128"), "performer"),
}
COLUMNS = ("attention", "side", "batch", "length", "params", "step_median_ms", "step_p25_ms", "step_p75_ms",
           "step_min_ms", "cpu_median_ms", "speedup", "rounds")


def side_name(checkpointing: bool) -> str:
    return "pytorch_checkpointed" if checkpointing else "pytorch"


class Worker:
    """A step process: ``info`` from its ready line; ``step()`` -> {"wall": s, "cpu": s}."""

    def __init__(self, argv: list[str], label: str):
        self.label = label
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"})
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        code = self.process.wait()
        raise RuntimeError(f"{self.label}: the worker exited (code {code}) before answering; its error is above")

    def step(self) -> dict:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("stop\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


def pinned(argv: list[str], cores: str | None) -> list[str]:
    return ["taskset", "-c", cores, *argv] if cores else argv


def summarise(name: str, shape: tuple[int, int], workers: dict, walls: dict, cpus: dict, rounds: int) -> list[dict]:
    """One row per side; speed-up = that side's median / the harness's median (the harness's row: 1)."""
    rows = []
    base = quantiles(walls[HARNESS])["median"]
    for side in workers:
        stats = quantiles(walls[side])
        rows.append({"attention": name, "side": side, "batch": shape[0], "length": shape[1],
                     "params": workers[side].info.get("params"), "step_median_ms": stats["median"],
                     "step_p25_ms": stats["p25"], "step_p75_ms": stats["p75"], "step_min_ms": stats["min"],
                     "cpu_median_ms": quantiles(cpus[side])["median"], "speedup": stats["median"] / base,
                     "rounds": rounds})
    return rows


def run_attention(name: str, args, extra: list[str], shape: tuple[int, int], vocab: int, echo=print) -> tuple[list[dict], dict]:
    setup = SETUPS[name]
    harness = [sys.executable, "-m", "lra.bench.versus", "--worker", *BASE_OVERRIDES, *setup.overrides, *extra]
    workers = {}
    try:
        workers[HARNESS] = Worker(pinned(harness, args.cores), f"{name} ({HARNESS})")
        for checkpointing in setup.checkpointing:
            torch = [args.torch_python, str(args.torch_worker), "--code", str(args.authors_code),
                     "--attention", setup.authors, "--checkpointing", str(int(checkpointing)),
                     "--batch", str(shape[0]), "--length", str(shape[1]), "--vocab-size", str(vocab),
                     "--threads", str(args.threads)]
            workers[side_name(checkpointing)] = Worker(pinned(torch, args.cores), f"{name} ({side_name(checkpointing)})")
        for worker in workers.values():
            for _ in range(args.warmup):
                worker.step()
        walls = {side: [] for side in workers}
        cpus = {side: [] for side in workers}
        order = list(workers)
        for index in range(args.rounds):
            shift = index % len(order)
            for side in order[shift:] + order[:shift]:
                out = workers[side].step()
                walls[side].append(out["wall"])
                cpus[side].append(out["cpu"])
            echo(f"{name} round {index + 1}/{args.rounds}: "
                 + ", ".join(f"{side} {walls[side][-1]:.3f} s" for side in order))
        info = {side: worker.info for side, worker in workers.items()}
        return summarise(name, shape, workers, walls, cpus, args.rounds), info
    finally:
        for worker in workers.values():
            worker.close()


def markdown_report(rows: list[dict], info: dict, settings: dict) -> str:
    commit = info["git_sha"] + ("-dirty" if info.get("git_dirty") else "")
    torch_version = next((v.get("torch") for w in settings["workers"].values() for k, v in w.items()
                          if k != HARNESS and v.get("torch")), "?")
    first = rows[0]
    harness_devices = ", ".join(sorted({str(w[HARNESS].get("devices", "?")) for w in settings["workers"].values()}))
    lines = [f"# This harness vs the authors' PyTorch code — {info['device']}\n",
             f"{info['date']}, git {commit}, jax {info['jax_version']}, torch {torch_version}, "
             f"authors' code {settings.get('authors_commit') or settings['authors_code']}, {info['cpu_count']} CPUs, "
             f"both sides pinned to cores {settings['cores']}, load average at start {info['load_average_at_start']}. "
             f"Batch {first['batch']} x {first['length']} tokens; the harness on {harness_devices} device(s) "
             f"(data-parallel when more than one); {settings['rounds']} interleaved rounds after "
             f"{settings['warmup']} warm-up steps.\n",
             f"Harness overrides: `{' '.join(BASE_OVERRIDES)}` + the attention's (below)"
             f"{' + `' + ' '.join(settings['extra_overrides']) + '`' if settings['extra_overrides'] else ''}. "
             "Step = forward + backward + optimizer update. Speed-up = the PyTorch side's median / the harness's median.\n"]
    table = []
    for row in rows:
        if row["side"] == HARNESS:
            continue
        mine = next(r for r in rows if r["attention"] == row["attention"] and r["side"] == HARNESS)
        table.append([row["attention"], row["side"],
                      f"{mine['step_median_ms']:.0f} ({mine['step_p25_ms']:.0f}–{mine['step_p75_ms']:.0f})",
                      f"{row['step_median_ms']:.0f} ({row['step_p25_ms']:.0f}–{row['step_p75_ms']:.0f})",
                      f"{row['speedup']:.2f}×", f"{mine['params']:,} / {row['params']:,}"])
    lines.append(markdown_table(["attention", "PyTorch side", "harness ms (p25–p75)", "PyTorch ms (p25–p75)",
                                 "speed-up", "parameters (harness / PyTorch)"], table))
    lines.append("\nAttention overrides: " + "; ".join(
        f"{name}: `{' '.join(SETUPS[name].overrides)}` vs their `{SETUPS[name].authors}`"
        for name in dict.fromkeys(row["attention"] for row in rows)) + ".\n")
    return "\n".join(lines)


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [row for row in rows if row["side"] != HARNESS]
    figure, axis = plt.subplots(figsize=(1.3 * len(bars) + 2.5, 3.6))
    labels = [row["attention"] + ("\n(their checkpoint)" if row["side"] == "pytorch_checkpointed" else "") for row in bars]
    drawn = axis.bar(range(len(bars)), [row["speedup"] for row in bars], color="#4c72b0")
    axis.bar_label(drawn, labels=[f"{row['speedup']:.2f}×" for row in bars], fontsize=8)
    for level, style in ((1.0, "-"), (1.5, "--")):
        axis.axhline(level, color="grey", linestyle=style, linewidth=1)
    axis.set_xticks(range(len(bars)), labels, fontsize=8)
    axis.set_ylabel("speed-up (PyTorch time / harness time)")
    axis.set_title(f"Training step, batch {bars[0]['batch']} x {bars[0]['length']}", fontsize=10)
    figure.tight_layout()
    atomic_save_figure(path, figure)
    plt.close(figure)


def worker_main(overrides: list[str]) -> None:
    """The harness side: compile the training step for ``overrides``, then time one call per 'step' line."""
    cfg = compose_config(overrides)
    vocab = task_vocab_size(cfg.task)
    batch = random_batch(cfg, vocab)
    compiled, states, compile_s, model, _ = build_step(cfg, vocab, *attention_factories(cfg), batch)
    timed = Timed(compiled, states, batch)
    print(json.dumps({"ready": True, "params": count_parameters(model), "compile_s": compile_s,
                      "shape": list(batch["tokens"].shape), "devices": jax.device_count()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        wall = timed.call()
        print(json.dumps({"wall": wall, "cpu": timed.last_cpu}), flush=True)


def git_commit(folder: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--authors-code", type=Path, help="the Skyformer repository's src/ folder")
    parser.add_argument("--torch-python", help="a Python with PyTorch (and the packages in docs/benchmarks.md)")
    parser.add_argument("--torch-worker", type=Path, default=TORCH_WORKER, help=argparse.SUPPRESS)
    parser.add_argument("--attention", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each worker first")
    parser.add_argument("--cores", default="0,1", help="taskset core list for every worker ('' to not pin)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    parser.add_argument("--output-root", default=None, help="default results/bench")
    parser.add_argument("--name", default=None, help="run folder name (default: versus_<UTC timestamp>)")
    args, overrides = parser.parse_known_args(argv)
    unknown = [item for item in overrides if item.startswith("--")]
    if unknown:
        parser.error(f"unknown flags {unknown} (Hydra overrides have no leading --)")
    if args.worker:
        return args, overrides
    if args.authors_code is None or args.torch_python is None:
        parser.error("--authors-code and --torch-python are required")
    if not (args.authors_code / "config.py").is_file() or not (args.authors_code / "models" / "model_LRA.py").is_file():
        parser.error(f"--authors-code {args.authors_code}: expected the Skyformer repository's src/ folder "
                     "(config.py, models/model_LRA.py)")
    if shutil.which(args.torch_python) is None and not Path(args.torch_python).is_file():
        parser.error(f"--torch-python {args.torch_python}: no such program")
    names = [name.strip() for name in args.attention.split(",") if name.strip()]
    unknown_names = [name for name in names if name not in SETUPS]
    if unknown_names or not names:
        parser.error(f"--attention: {unknown_names or 'none given'}; choose from {', '.join(SETUPS)}")
    args.attention = names
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    if args.cores and shutil.which("taskset") is None:
        parser.error("--cores needs taskset (util-linux); pass --cores '' to run unpinned")
    return args, overrides


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args, extra = parse_args(argv)
    if args.worker:
        return worker_main(extra)
    cfg = compose_config([*BASE_OVERRIDES, *extra])
    shape, vocab = (int(cfg.train.batch_size), batch_length(cfg.task)), task_vocab_size(cfg.task)
    directory = output_directory(args.output_root, args.name or time.strftime("versus_%Y-%m-%d_%H-%M-%S", time.gmtime()))
    settings = {"attentions": args.attention, "extra_overrides": extra, "rounds": args.rounds, "warmup": args.warmup,
                "cores": args.cores, "threads": args.threads,
                "authors_code": "/".join(args.authors_code.resolve().parts[-2:]),  # the repository's folder, not where it lies
                "authors_commit": git_commit(args.authors_code), "batch": shape[0], "length": shape[1],
                "setups": {name: dataclasses.asdict(SETUPS[name]) for name in args.attention}, "workers": {}}
    info = write_provenance(directory / "provenance.json", settings)  # the load average before the run
    rows = []
    for name in args.attention:
        attention_rows, workers = run_attention(name, args, extra, shape, vocab)
        rows += attention_rows
        settings["workers"][name] = workers
    info["settings"]["workers"] = settings["workers"]  # what each worker reported (parameters, versions)
    atomic_write_text(directory / "provenance.json", json.dumps(info, indent=2, default=str) + "\n")
    write_csv(directory / "versus.csv", rows, COLUMNS)
    report = markdown_report(rows, info, settings)
    atomic_write_text(directory / "versus.md", report)
    plot(directory / "versus.png", rows)
    print(report)
    print(f"wrote {directory}")
    return directory


if __name__ == "__main__":
    main()
