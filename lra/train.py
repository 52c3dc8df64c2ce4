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
import time
from pathlib import Path

import hydra
import jax
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from lra.atomic_files import atomic_write_text
from lra.build import build_attention, build_model_and_optimizer, build_positional_bias, task_attention_config
from lra.checkpointing import CheckpointBusy, RunCheckpoints, read_run_info
from lra.config_checks import ConfigError, check_config
from lra.cpu_guard import CpuRunRefused, cpu_guard
from lra.data.tasks import batch_length, load_task
from lra.metrics import provenance
from lra.model import count_parameters
from lra.preemption import EXIT_PREEMPTED, Preempted, StopRequest
from lra.result_record import NO_ACCURACY, make_record
from lra.results import RECORDS, new_run_id, write_record
from lra.run_identity import RunIdentity, changed_from_defaults, checkpoint_directory, explain_fresh_start, run_identity
from lra.run_logging import RunProgress, quiet_library_logs, run_costs, run_sinks, run_summary_line
from lra.sweep import NOT_RUN, SWEEP_ID_VARIABLE
from lra.training.loop import DivergenceError, LoopConfig, progress_total, train_and_evaluate
from lra.training.sharding import initialize_distributed, is_primary

log = logging.getLogger(__name__)


def _run_dir(cfg: DictConfig, run_id: str) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / run_id


def _log_path(run_dir: Path) -> str | None:
    """The run's log file: Hydra's job log (``<run dir>/<job name>.log``) when Hydra runs it."""
    if HydraConfig.initialized():
        return str((run_dir / f"{HydraConfig.get().job.name}.log").resolve())
    return None


def _checkpoints(cfg: DictConfig, resolved: dict, identity: RunIdentity, cache) -> RunCheckpoints | None:
    """The run's checkpoint directory (``checkpoint.*``), opened (and locked) under its resume policy,
    tied to the data cache it trains on; None if off."""
    if not cfg.checkpoint.enabled:
        return None
    return RunCheckpoints(cfg.checkpoint.dir, identity.as_dict(), every_steps=int(cfg.checkpoint.every_steps),
                          keep=int(cfg.checkpoint.keep), resume=cfg.checkpoint.resume, vocab_size=cache.vocab_size,
                          config=resolved, data={"cache": cache.directory.name, "sha256": cache.content_sha256}).open()


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__)[:500]


def run(cfg: DictConfig) -> dict:
    """One full run; returns its result record (already written to the results store).

    With checkpoints on, a rerun of an unfinished run resumes it and a rerun of a finished one
    returns the stored record. SIGTERM/SIGINT checkpoint and raise ``Preempted``; a diverged run
    gets a record with ``status: diverged`` and no accuracies; a full protocol on a CPU raises
    ``CpuRunRefused`` before training (no record: nothing ran; ``allow_cpu=true`` runs it); any other
    exception writes a record with ``status: failed`` (its one-line summary and the log path) and
    propagates. Only process 0 writes anything.
    """
    check_config(cfg, devices=jax.device_count())  # bad values fail here, before data or compilation
    attention_name = str(cfg.attention.get("name") or "unnamed")
    if cfg.get("positional_bias") is not None:  # a bias add-on makes a different model: its own row
        attention_name = f"{attention_name}+{cfg.positional_bias.get('name')}"
    run_id = new_run_id(cfg.task.name, attention_name, int(cfg.seed))
    run_dir = _run_dir(cfg, run_id)
    record = {"run_id": run_id, "task": cfg.task.name, "attention": attention_name, "protocol": cfg.protocol.name,
              "seed": int(cfg.seed), "test_checkpoint": cfg.protocol.get("test_checkpoint", "final"),
              "run_dir": str(run_dir.resolve()), "log_path": _log_path(run_dir),
              "sweep_id": os.environ.get(SWEEP_ID_VARIABLE)}
    try:
        return _train(cfg, record, run_dir)
    except (Preempted, KeyboardInterrupt, CheckpointBusy, CpuRunRefused):  # not a run's outcome: nothing to record
        raise
    except Exception as error:
        log.exception("%s/%s seed %s failed", cfg.task.name, attention_name, cfg.seed)
        failed = make_record(**{**record, **NO_ACCURACY, "status": "failed", "error": _one_line(error),
                                **provenance()})
        if is_primary():
            with contextlib.suppress(OSError):
                atomic_write_text(run_dir / "result.json", json.dumps(failed, indent=2, default=str) + "\n")
            write_record(cfg.paths.results_dir, failed)
        raise


def _train(cfg: DictConfig, record: dict, run_dir: Path) -> dict:
    """``run`` once the record's identity fields are known; fills ``record`` in as it goes."""
    primary = is_primary()
    started = time.monotonic()
    attention_cfg = task_attention_config(cfg)
    attention_settings = OmegaConf.to_container(attention_cfg, resolve=True)
    identity = run_identity(OmegaConf.to_container(cfg, resolve=True), attention_settings)
    changed = changed_from_defaults(cfg, identity)
    record.update(fingerprint=identity.fingerprint, settings_changed=changed,
                  variant="unknown settings" if changed is None else ", ".join(changed),
                  attention_target=attention_settings.get("_target_"),
                  attention_source_sha256=identity.code["attention"],
                  positional_bias_source_sha256=identity.code.get("positional_bias"),
                  steps=int(cfg.train.steps), batch_size=int(cfg.train.batch_size),
                  max_length=int(cfg.task.max_length), dtype=str(cfg.model.dtype),
                  remat=str(cfg.model.get("remat", "none")),
                  quirks=OmegaConf.to_container(cfg.quirks, resolve=True),
                  model_config=OmegaConf.to_container(cfg.model, resolve=True),
                  optimizer_config=OmegaConf.to_container(cfg.optimizer, resolve=True))
    _, attention_factory, attention_kwargs = build_attention(attention_cfg)
    bias_name, bias_factory, bias_kwargs, bias_target = build_positional_bias(cfg)
    record.update(attention_config=attention_kwargs, positional_bias_config=bias_kwargs,
                  positional_bias_target=bias_target)
    checkpoint_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else checkpoint_directory(
        cfg.paths.checkpoints_dir, cfg.protocol.name, cfg.task.name, record["attention"], identity)
    with open_dict(cfg):  # recorded in config.yaml, absolute, for restore_model(run_dir)
        cfg.checkpoint.dir = str(checkpoint_dir.absolute())
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))

    cache = load_task(cfg.task, cfg.paths.data_dir, progress=cfg.progress)
    record.update(data_cache=cache.directory.name, data_sha256=cache.content_sha256)
    if cfg.checkpoint.enabled and not checkpoint_dir.exists():
        reason = explain_fresh_start(checkpoint_dir, identity, lambda d: read_run_info(d)["identity"])
        if reason:
            log.warning(reason)
    checkpoints = _checkpoints(cfg, resolved, identity, cache)
    if checkpoints is not None and checkpoints.finished_record is not None:
        finished = checkpoints.finished_record
        log.info("%s finished before (record %s); returning its record. checkpoint.resume=never "
                 "starts it over", checkpoints.directory, finished.get("run_id"))
        checkpoints.close()
        if primary:  # a rerun into another results store still gets its row there
            with contextlib.suppress(FileExistsError):
                write_record(cfg.paths.results_dir, finished)
            log.info(run_summary_line(finished, Path(cfg.paths.results_dir) / RECORDS / f"{finished['run_id']}.json"))
        return finished
    model, optimizer, learning_rate = build_model_and_optimizer(cfg, cache.vocab_size, attention_factory, bias_factory)

    sinks = run_sinks(cfg.logger, record, run_dir, resolved, primary)
    loop_cfg = LoopConfig(max_length=batch_length(cfg.task), seed=int(cfg.seed),
                          **OmegaConf.to_container(cfg.train, resolve=True))
    label = f"{cfg.task.name}/{record['attention']} seed {cfg.seed}"
    result = None
    try:
        with StopRequest() as stop, RunProgress(label, progress_total(loop_cfg),
                                                 enabled=cfg.progress and primary) as progress:
            try:
                metrics = train_and_evaluate(model, optimizer, learning_rate,
                                             {split: cache[split] for split in ("train", "val", "test")},
                                             loop_cfg, sinks.log if sinks else _discard, progress,
                                             checkpoints=checkpoints, stop=stop, guard=cpu_guard(cfg, label))
                outcome = {"status": "ok"}
            except DivergenceError as error:
                log.error("%s: %s", label, error)
                metrics = NO_ACCURACY
                outcome = {"status": "diverged", "diverged_at_step": error.step,
                           "last_checkpoint_step": error.last_checkpoint, "divergence": str(error)}
        wall_time = time.monotonic() - started
        if sinks is not None and outcome["status"] == "ok":
            sinks.log(loop_cfg.steps, "run", run_costs(metrics, wall_time))
        result = make_record(**{**record, **metrics, **outcome, "param_count": count_parameters(model),
                                "wall_time_s": wall_time, **provenance()})
        if primary:
            atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2, default=str) + "\n")
            log.info(run_summary_line(result, write_record(cfg.paths.results_dir, result)))
        if checkpoints is not None:
            checkpoints.finish(result)
    except Preempted as preempted:
        log.warning("%s: %s", label, preempted)
        raise
    finally:
        if sinks is not None:
            sinks.close(result)
        if checkpoints is not None:
            checkpoints.close()
    return result


def _discard(step: int, split: str, metrics: dict) -> None:
    """The metric sink of processes other than 0."""


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    quiet_library_logs()
    initialize_distributed(cfg.distributed.initialize)  # before anything touches a device
    try:
        record = run(cfg)
    except Preempted:
        sys.exit(EXIT_PREEMPTED)  # checkpoint saved; a rerun (or SLURM requeue) continues
    except CpuRunRefused as refused:  # before training; ends a sweep too (each run would refuse)
        sys.exit(f"lra: {refused}")
    except (ConfigError, CheckpointBusy) as error:  # refused before it was a run: no record
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.error("%s/%s seed %s not run: %s", cfg.task.name, cfg.attention.get("name"), cfg.seed, error)
        NOT_RUN.append(f"{cfg.task.name}/{cfg.attention.get('name')} seed {cfg.seed}: {_one_line(error)}")
        return float("nan")
    except Exception as error:  # recorded as failed by run()
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise  # a single run exits non-zero with the traceback
        log.error("%s/%s seed %s failed (%s); the sweep goes on, its summary lists the failures",
                  cfg.task.name, cfg.attention.get("name"), cfg.seed, _one_line(error))
        return float("nan")
    best = record["val_accuracy_best"]
    return float("nan") if best is None else float(best)


if __name__ == "__main__":
    main()
