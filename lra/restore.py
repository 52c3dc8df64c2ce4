"""A trained model, restored from its run: ``restore_model(run dir or checkpoint dir)``.

The model is rebuilt from the run's own resolved config (``run.json`` in its checkpoint directory,
``lra.build.build_run``) and its final or best-validation parameters are loaded from the newest
intact checkpoint (``lra.checkpointing``). The layout follows the Flax NNX checkpointing guide
(split the state, save it with Orbax, restore into a template of the same structure).

    from lra.restore import restore_model
    cfg, model = restore_model("outputs/listops/softmax/<date>_<time>", which="best")
"""

from __future__ import annotations

from pathlib import Path

from flax import nnx
from omegaconf import OmegaConf

from lra.build import build_run
from lra.checkpointing import RUN_FILE, CheckpointError, RunCheckpoints, read_run_info


def checkpoint_directory_of(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory whose config.yaml names one."""
    path = Path(path)
    if (path / RUN_FILE).is_file():
        return path
    config = path / "config.yaml"
    if config.is_file():
        directory = OmegaConf.load(config).get("checkpoint", {}).get("dir")
        if directory and (Path(directory) / RUN_FILE).is_file():
            return Path(directory)
        raise CheckpointError(f"{config}: checkpoint.dir={directory!r} holds no checkpoint")
    raise CheckpointError(f"{path} is neither a checkpoint directory (no {RUN_FILE}) nor a run "
                          "directory (no config.yaml)")


def restore_model(path: str | Path, which: str = "final"):
    """A trained encoder from a run directory or its checkpoint directory -> (cfg, model).

    ``which`` = final (the newest checkpoint's parameters) or best (the best-validation ones).
    The model is rebuilt from the run's own resolved config, so attention and sizes match.
    """
    if which not in ("final", "best"):
        raise ValueError(f"which must be 'final' or 'best'; got {which!r}")
    directory = checkpoint_directory_of(path)
    info = read_run_info(directory)
    cfg = OmegaConf.create(info["config"])
    model, optimizer, _ = build_run(cfg, info["vocab_size"])
    checkpoints = RunCheckpoints(directory, info["identity"], every_steps=1, keep=1).open_read_only()
    if checkpoints.latest_step is None:
        raise CheckpointError(f"{directory} holds no checkpoint step")
    _, model_state, _, best_state, _ = checkpoints.restore(nnx.state(model), nnx.state(optimizer))
    checkpoints.close()
    if which == "best":
        if best_state is None:
            raise CheckpointError(f"{directory}: the run had not evaluated yet; no best-validation parameters")
        model_state = best_state
    nnx.update(model, model_state)
    return cfg, model
