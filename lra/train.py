"""Train and evaluate one (task, attention, protocol, seed); the Hydra entry point of every run.

    python -m lra.train task=listops attention=softmax protocol=smoke          # one run
    python -m lra.train -m task=listops attention=softmax,linear seed=0,1,2    # a sweep

A run reads its task's cache (building it on first use), builds the common encoder around the
configured attention, trains, evaluates, and leaves:
    <run dir>/config.yaml    the fully resolved config
    <run dir>/metrics.csv    train/val/test metrics at every logging point
    <run dir>/result.json    the run's result record (also stored under <results_dir>/records/)
and W&B logs of the same metrics when ``logger.wandb.enabled``. Checkpoints go to a directory
derived from the run's identity (``checkpoint.*``), so rerunning a preempted command resumes it;
it exits with code 75 (EX_TEMPFAIL) after saving one on SIGTERM/SIGINT. See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import hydra
import jax
from flax import nnx
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from attention.base import HARNESS_KEYS
from lra.atomic_files import atomic_write_text
from lra.checkpointing import EXIT_PREEMPTED, Preempted, RunCheckpoints, StopRequest, default_directory, run_identity
from lra.data.tasks import batch_length, load_task
from lra.metrics import provenance
from lra.model import DualEncoder, Encoder, count_parameters
from lra.registry import POSITIONAL_BIAS_CONFIGS
from lra.results import new_run_id, write_record
from lra.run_logging import CsvMetricsWriter, MetricSinks, WandbSink
from lra.training.loop import DivergenceError, LoopConfig, train_and_evaluate
from lra.training.optimizer import build_optimizer
from lra.training.sharding import initialize_distributed, is_primary

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    pass


def build_attention(attention_cfg: DictConfig, kind: str = "attention"):
    """An attention (or positional-bias) YAML -> (name, factory(spec, rngs=...), kwargs for the record)."""
    config = OmegaConf.to_container(attention_cfg, resolve=True)
    harness = {key: config.pop(key, None) for key in HARNESS_KEYS}
    if not harness["name"]:
        raise ConfigError(f"the {kind} config has no 'name' key (see configs/attention/softmax.yaml)")
    if harness["requires"] == "gpu" and jax.default_backend() == "cpu":
        raise ConfigError(f"{kind} '{harness['name']}' needs a GPU ({kind}.requires=gpu); "
                          "this process only sees a CPU")
    try:
        factory = hydra.utils.instantiate(config, _partial_=True)
    except Exception as error:  # Hydra wraps import errors; say which config and target failed
        raise ConfigError(f"{kind} '{harness['name']}': cannot build _target_="
                          f"{config.get('_target_')!r}: {error}") from error
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    return harness["name"], factory, kwargs


def task_attention_config(cfg: DictConfig) -> DictConfig:
    """``cfg.attention`` with the task's settings for that attention merged in
    (``task.attention_overrides.<attention name>``, e.g. MRA's ``patch_order`` on images)."""
    overrides = (cfg.task.get("attention_overrides") or {}).get(cfg.attention.name)
    return OmegaConf.merge(cfg.attention, overrides) if overrides else cfg.attention


def build_positional_bias(cfg: DictConfig):
    """The positional-bias add-on -> (name, factory, kwargs, from_cli); Nones when there is none.

    It comes from ``+positional_bias=<name>`` on the command line or from a registered combination
    whose attention YAML names one (``positional_bias: fastrpb``); not both.
    """
    from_attention = cfg.attention.get("positional_bias")
    if cfg.get("positional_bias") is not None:
        if from_attention:
            raise ConfigError(f"attention '{cfg.attention.name}' already includes positional_bias="
                              f"{from_attention}; drop +positional_bias or pick the plain attention")
        return (*build_attention(cfg.positional_bias, kind="positional_bias"), True)
    if from_attention:
        path = POSITIONAL_BIAS_CONFIGS / f"{from_attention}.yaml"
        if not path.exists():
            raise ConfigError(f"attention.positional_bias={from_attention!r}: no config {path}")
        return (*build_attention(OmegaConf.load(path), kind="positional_bias"), False)
    return None, None, None, False


def build_model(cfg: DictConfig, vocab_size: int, attention_factory, positional_bias_factory=None):
    """The task's model: the common Encoder, or a DualEncoder around it for two-document tasks."""
    seed = int(cfg.seed)
    pad_id = cfg.task.pad_id
    pixel_quirk = pad_id is None and cfg.quirks.pixel_zero_is_padding  # D1: black pixels masked as padding
    model_cls = DualEncoder if cfg.task.get("dual_encoder") else Encoder
    return model_cls(vocab_size=vocab_size, num_classes=cfg.task.num_classes, max_length=cfg.task.max_length,
                     attention=attention_factory, positional_bias=positional_bias_factory,
                     pad_id=0 if pixel_quirk else pad_id, cls_mask_copies_first_token=bool(pixel_quirk),
                     grid_shape=cfg.task.get("grid_shape"),
                     mean_pool_includes_padding=cfg.quirks.mean_pool_includes_padding,
                     **OmegaConf.to_container(cfg.model, resolve=True),
                     rngs=nnx.Rngs(params=seed, dropout=seed + 1, attention=seed + 2))


def _run_dir(cfg: DictConfig, run_id: str) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / run_id


def _checkpoints(cfg: DictConfig, resolved: dict, vocab_size: int) -> RunCheckpoints | None:
    """The run's checkpoint directory (``checkpoint.*``), opened under its resume policy; None if off."""
    if not cfg.checkpoint.enabled:
        return None
    return RunCheckpoints(cfg.checkpoint.dir, run_identity(resolved), every_steps=int(cfg.checkpoint.every_steps),
                          keep=int(cfg.checkpoint.keep), resume=cfg.checkpoint.resume, vocab_size=vocab_size,
                          config=resolved).open()


# What a diverged run reports instead of accuracies: nothing (None), never a made-up 0.
DIVERGED_METRICS = {key: None for key in (
    "val_accuracy_best", "val_accuracy_final", "test_accuracy_final", "test_accuracy_best_val",
    "val_loss_final", "test_loss_final", "test_loss_best_val", "train_loss_final")}


def run(cfg: DictConfig) -> dict:
    """One full run; returns its result record (already written to the results store).

    With checkpoints on, a rerun of an unfinished run resumes it and a rerun of a finished one
    returns the stored record. SIGTERM/SIGINT checkpoint and raise ``Preempted``; a diverged run
    gets a record with ``status: diverged`` and no accuracies. Only process 0 writes anything.
    """
    attention_name, attention_factory, attention_kwargs = build_attention(task_attention_config(cfg))
    bias_name, bias_factory, bias_kwargs, bias_from_cli = build_positional_bias(cfg)
    if bias_from_cli:  # a bias add-on makes a different model: its own leaderboard row
        attention_name = f"{attention_name}+{bias_name}"
    run_id = new_run_id(cfg.task.name, attention_name, int(cfg.seed))
    run_dir = _run_dir(cfg, run_id)
    primary = is_primary()
    checkpoint_dir = cfg.checkpoint.dir or default_directory(  # from the run's identity: a rerun finds it
        cfg.paths.checkpoints_dir, cfg.protocol.name, cfg.task.name, attention_name, int(cfg.seed),
        run_identity(OmegaConf.to_container(cfg, resolve=True)))
    with open_dict(cfg):  # recorded in config.yaml, absolute, for restore_model(run_dir)
        cfg.checkpoint.dir = str(Path(checkpoint_dir).absolute())
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))

    cache = load_task(cfg.task, cfg.paths.data_dir, progress=cfg.progress)
    checkpoints = _checkpoints(cfg, resolved, cache.vocab_size)
    if checkpoints is not None and checkpoints.finished_record is not None:
        finished = checkpoints.finished_record
        log.info("%s finished before (record %s); returning its record. checkpoint.resume=never "
                 "starts it over", checkpoints.directory, finished.get("run_id"))
        checkpoints.close()
        if primary:  # a rerun into another results store still gets its row there
            with contextlib.suppress(FileExistsError):
                write_record(cfg.paths.results_dir, finished)
        return finished
    model = build_model(cfg, cache.vocab_size, attention_factory, bias_factory)
    tx, learning_rate = build_optimizer(cfg.optimizer, cfg.train.steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    wandb_sink = None
    if cfg.logger.wandb.enabled and primary:
        wandb_sink = WandbSink(project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
                               mode=cfg.logger.wandb.mode, run_dir=run_dir, name=run_id, config=resolved,
                               tags=[cfg.task.name, attention_name, cfg.protocol.name])
    sinks = MetricSinks(CsvMetricsWriter(run_dir), wandb_sink) if primary else None
    loop_cfg = LoopConfig(max_length=batch_length(cfg.task), seed=int(cfg.seed),
                          **OmegaConf.to_container(cfg.train, resolve=True))
    label = f"{cfg.task.name}/{attention_name} seed {cfg.seed}"
    record = None
    try:
        with StopRequest() as stop, ProgressBar(label, loop_cfg.steps, enabled=cfg.progress and primary) as progress:
            try:
                metrics = train_and_evaluate(model, optimizer, learning_rate,
                                             {split: cache[split] for split in ("train", "val", "test")},
                                             loop_cfg, sinks.log if sinks else _discard, progress,
                                             checkpoints=checkpoints, stop=stop)
                outcome = {"status": "ok"}
            except DivergenceError as error:
                log.error("%s: %s", label, error)
                metrics = DIVERGED_METRICS
                outcome = {"status": "diverged", "diverged_at_step": error.step,
                           "last_checkpoint_step": error.last_checkpoint, "divergence": str(error)}
        record = {
            "run_id": run_id, "task": cfg.task.name, "attention": attention_name,
            "attention_config": attention_kwargs, "positional_bias_config": bias_kwargs,
            "protocol": cfg.protocol.name, "seed": int(cfg.seed),
            "test_checkpoint": cfg.protocol.get("test_checkpoint", "final"),  # the leaderboard's headline
            "steps": loop_cfg.steps, "batch_size": loop_cfg.batch_size, "max_length": cfg.task.max_length,
            "dtype": cfg.model.dtype, "quirks": OmegaConf.to_container(cfg.quirks),
            "model_config": OmegaConf.to_container(cfg.model, resolve=True),
            "optimizer_config": OmegaConf.to_container(cfg.optimizer, resolve=True),
            "param_count": count_parameters(model), "data_cache": cache.directory.name,
            **outcome, **metrics, **provenance(), "run_dir": str(run_dir.resolve()),
        }
        if primary:
            atomic_write_text(run_dir / "result.json", json.dumps(record, indent=2, default=str) + "\n")
            write_record(cfg.paths.results_dir, record)
        if checkpoints is not None:
            checkpoints.finish(record)
    except Preempted as preempted:
        log.warning("%s: %s", label, preempted)
        raise
    finally:
        if sinks is not None:
            sinks.close(record)
        if checkpoints is not None:
            checkpoints.close()
    return record


def _discard(step: int, split: str, metrics: dict) -> None:
    """The metric sink of processes other than 0."""


class ProgressBar:
    """A rich progress bar for one run (steps, loss, best val accuracy); silent when disabled."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}  best val {task.fields[val]}"),
                            TimeRemainingColumn())
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total, loss="–", val="–")

        def update(step, fields):
            shown = {k: ("–" if v is None or v < 0 else f"{v:.3f}") for k, v in fields.items()}
            self.bar.update(task, completed=step, **shown)

        return update

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" noise
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save step at INFO through absl
    initialize_distributed(cfg.distributed.initialize)  # before anything touches a device
    try:
        record = run(cfg)
    except Preempted:
        sys.exit(EXIT_PREEMPTED)  # checkpoint saved; a rerun (or SLURM requeue) continues
    best = record["val_accuracy_best"]
    return float("nan") if best is None else float(best)


if __name__ == "__main__":
    main()
