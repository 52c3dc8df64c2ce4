"""Task registry: a task config's ``name`` -> the function that prepares (once) and opens its cache.

Each loader takes the task config as a plain dict and the cache root, builds the on-disk cache on
first use (with progress) and returns a ``TokenCache`` with ``train``/``val``/``test`` splits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from lra.data.listops import load_listops
from lra.data.pathfinder import load_pathfinder
from lra.data.token_cache import TokenCache

LOADERS: dict[str, Callable[..., TokenCache]] = {
    "listops": load_listops,
    "pathfinder": load_pathfinder,  # Pathfinder-32
    "pathx": load_pathfinder,       # Path-X = Pathfinder-128
}


def load_task(task_cfg: Mapping, cache_root: str | Path, progress: bool = True) -> TokenCache:
    name = task_cfg.get("name")
    if name not in LOADERS:
        raise ValueError(f"task.name={name!r} has no data loader; known tasks: {sorted(LOADERS)}")
    return LOADERS[name](dict(task_cfg), cache_root, progress=progress)
