"""Synthetic result records for the leaderboard and reproduction tests (no training)."""

from __future__ import annotations

import statistics
from pathlib import Path

from lra.results import write_record
from tests.test_results import make_record

SOFTMAX_LISTOPS = [  # seed, final, best_val, step_time, bytes
    (0, 0.40, 0.41, 0.20, 4_000_000),
    (1, 0.45, 0.47, 0.24, 4_000_000),
]
LINEAR_LISTOPS = [
    (0, 0.36, 0.37, 0.10, 1_000_000),
    (1, 0.38, 0.35, 0.14, 1_000_000),
]
SMALL_MODEL = {"emb_dim": 32, "qkv_dim": 32, "mlp_dim": 64, "num_layers": 2}
PERFORMER_LISTOPS = [(0, 0.30, 0.30), (1, 0.32, 0.30), (2, 0.31, 0.90)]  # seed, final, step_time


def build_results_root(root: Path) -> Path:
    """results/-like folder: lra_official (softmax, linear, performer, wide, deep, unstable), pytorch_lineage (linear),
    and a results/bench folder that the leaderboard must ignore."""
    official, lineage = root / "lra_official", root / "pytorch_lineage"
    n = 0

    def add(directory, **kw):
        nonlocal n
        n += 1
        write_record(directory, make_record(f"run{n:02d}", **kw))

    for attention, runs, params in (("softmax", SOFTMAX_LISTOPS, 1000), ("linear", LINEAR_LISTOPS, 1050)):
        for seed, final, best, step, nbytes in runs:
            add(official, attention=attention, seed=seed, final=final, best_val=best, step_time=step,
                xla_bytes=nbytes, params=params, model_config=SMALL_MODEL)
    # a diverged linear seed: left out of the mean, counted apart
    add(official, attention="linear", seed=2, final=0.10, best_val=0.10, step_time=0.12, xla_bytes=1_000_000,
        params=1050, status="diverged", diverged_at_step=40)
    add(official, task="text", attention="softmax", final=0.60, best_val=0.61, step_time=0.50,
        xla_bytes=8_000_000, params=2000)
    add(official, task="text", attention="linear", final=0.58, best_val=0.59, step_time=0.25,
        xla_bytes=2_000_000, params=2100)
    for seed, final, step in PERFORMER_LISTOPS:  # no text run: a partial row
        add(official, attention="performer", seed=seed, final=final, best_val=final, step_time=step,
            xla_bytes=2_000_000, params=1000)
    # 20 % more parameters than softmax on listops: breaks the LRA rule
    add(official, attention="wide", final=0.50, best_val=0.50, step_time=0.35, xla_bytes=5_000_000, params=1200)
    add(official, task="text", attention="wide", final=0.10, best_val=0.10, status="diverged",
        diverged_at_step=7, params=2000)
    # same parameter count, but a deeper, narrower model: also against the rule
    add(official, attention="deep", final=0.45, best_val=0.45, step_time=0.25, xla_bytes=4_000_000, params=1000,
        model_config={"emb_dim": 16, "qkv_dim": 16, "mlp_dim": 32, "num_layers": 4})
    # every run diverged: no accuracy and no average at all
    add(official, attention="unstable", final=0.10, best_val=0.10, status="diverged", diverged_at_step=3, params=1000)
    # another protocol, reporting best-validation accuracy, with no softmax baseline
    add(lineage, attention="linear", protocol="pytorch_lineage", final=0.5, best_val=0.55, step_time=0.1,
        params=999, test_checkpoint="best_val")
    (root / "bench").mkdir()
    (root / "bench" / "results.csv").write_text("not,a,results,table\n1\n")
    return root


def pct_mean_std(values) -> str:
    pct = [v * 100 for v in values]
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f} (n={len(pct)})"
