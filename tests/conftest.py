"""Shared test setup: no network, offline W&B, tiny configs composed from the real config tree."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "offline"  # W&B never goes online in tests (and makes no network calls)
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"

# A smoke run shrunk further: seconds per run on 2 CPU cores.
TINY_OVERRIDES = [
    "protocol=smoke", "logger=csv", "progress=false",
    "task.max_length=64", "task.generator.min_length=10", "task.generator.max_length=64",
    "task.generator.num_train=96", "task.generator.num_val=37", "task.generator.num_test=21",
    "train.steps=6", "train.batch_size=8", "train.eval_batch_size=16", "train.eval_every=3",
    "train.log_every=2", "train.overhead_pairs=1",
    "model.emb_dim=16", "model.qkv_dim=16", "model.mlp_dim=16", "model.num_layers=1",
]


# Other tasks: their own tiny data (TINY_OVERRIDES' task.* entries are ListOps'), fewer steps and no
# host-overhead windows; these runs check each task's wiring.
TINY_TASK_OVERRIDES = {
    "pathfinder": ["task.generator.num_train=48", "task.generator.num_val=16", "task.generator.num_test=16"],
}
TINY_OTHER_TASK_TRAIN = ["train.steps=2", "train.eval_every=2", "train.log_every=1", "train.overhead_pairs=0"]


def compose_config(*overrides: str):
    """The run config of ``overrides`` composed from the real config tree, as ``python -m lra.train``
    would see it (no tiny sizes, paths as configured): the one way tests call Hydra."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def compose_tiny(tmp_path: Path, *overrides: str):
    """The run config of ``overrides`` with tiny sizes and every path (data, results, run dir,
    checkpoints) under ``tmp_path``, so no test sees another's cache, records or checkpoints."""
    task = next((o.split("=", 1)[1] for o in overrides if o.startswith("task=")), "listops")
    tiny = TINY_OVERRIDES if task == "listops" else [
        *(o for o in TINY_OVERRIDES if not o.startswith("task.")), *TINY_OTHER_TASK_TRAIN,
        *TINY_TASK_OVERRIDES.get(task, [])]
    return compose_config(
        *tiny, f"paths.data_dir={tmp_path / 'data'}",
        f"paths.results_dir={tmp_path / 'results'}", f"run_dir={tmp_path / 'run'}",
        "checkpoint.dir=${run_dir}/checkpoints", *overrides)  # a run's own checkpoints


@pytest.fixture
def compose(tmp_path):
    """compose(*overrides) -> compose_tiny(tmp_path, *overrides)."""
    return functools.partial(compose_tiny, tmp_path)
