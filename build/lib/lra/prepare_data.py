"""Prepare a task's token cache without training: ``make data TASK=listops [PRESET=smoke]``.

Uses the same config as training, so the cache it builds is exactly the one a run will read.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lra.data.tasks import load_task


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    cache = load_task(cfg.task, cfg.paths.data_dir, progress=cfg.progress)
    counts = ", ".join(f"{name} {len(cache[name]):,}" for name in ("train", "val", "test"))
    print(f"{cfg.task.name}: cache {cache.directory} ({counts}; vocab {cache.vocab_size})")


if __name__ == "__main__":
    main()
