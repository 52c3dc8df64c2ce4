"""Checkpoints that let a run survive preemption (``lra.preemption``): save, resume, finish.

A run's checkpoint directory (Orbax ``CheckpointManager``; each step is written to a temporary
folder and renamed once complete, so a save killed half-way leaves nothing that looks finished):

    <checkpoint dir>/
        run.json             the run's identity (lra.run_identity: the settings and source hashes
                             that decide its numbers, and its seed), the full resolved config and
                             the vocabulary size
        <step>/state/        model state (parameters and RNG stream counters), optimizer state
                             (moments, step count) and the best-validation model state
        <step>/progress/     JSON: best and last metrics, every metric row logged so far, window
                             timings and the metrics of the logging window in flight
        result.json          the finished run's record; present once the run is done
    <checkpoint dir>.lock    held (flock) by the process training into the directory; names it

Only one process trains into a directory at a time: a second launch of the same command fails at
once with a message naming the holder (host, pid, start time) instead of training alongside it.
``run.json`` also stores the identity of the data the run trains on (cache name and content hash):
resuming on different data (a rebuilt or edited cache) is refused. Each saved step carries a sha256
of its arrays, checked on restore: a step whose bytes changed is skipped with a warning and the
previous step is used; if none is intact, the restore fails naming the steps.

The directory is a function of the run's identity (``lra.run_identity.checkpoint_directory``), not
of Hydra's timestamped run directory, so rerunning the same command finds it: an unfinished run resumes from its newest step, a finished
one returns its record without training again. ``checkpoint.resume`` says what to do with an
existing directory (auto | never | require). A directory written by a different config, a
corrupted file or a state of other shapes is a ``CheckpointError`` naming the path and the keys
that differ; never a silent fresh start.

The data position needs no state of its own: training batches are a pure function of
(seed, epoch, position), so the step count is the iterator position (``lra.data.batches``).

A trained model is rebuilt from a checkpoint directory by ``lra.restore.restore_model``. The layout
follows the Flax NNX checkpointing guide (split the state, save it with Orbax, restore into a
template of the same structure).
"""

from __future__ import annotations

import datetime
import fcntl
import gc
import hashlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path

import numpy as np

import jax
import orbax.checkpoint as ocp
from flax import nnx

from lra.atomic_files import atomic_write_text

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
RESUME_POLICIES = ("auto", "never", "require")


class CheckpointError(RuntimeError):
    pass


class CheckpointBusy(CheckpointError):
    """Another process is training into the directory: this launch is not a run (nothing is recorded)."""


def _pure(state) -> dict:
    return nnx.to_pure_dict(state)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _manager(directory: Path, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=options, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()})


def _shapes(tree) -> dict[str, tuple]:
    """'model/layers/0/kernel' -> shape, for every array but RNG keys (stored as their raw data)."""
    return {"/".join(str(getattr(key, "key", key)) for key in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)}


def _shape_differences(stored: dict, wanted: dict) -> list[str]:
    """What keeps arrays of shapes ``wanted`` from being restored out of ``stored``."""
    return [f"{name}: not in the checkpoint" if name not in stored else
            f"{name}: checkpoint {stored[name]}, model {shape}"
            for name, shape in sorted(wanted.items()) if stored.get(name) != shape]


def state_sha256(arrays) -> str | None:
    """sha256 over every array of a saved state (names, dtypes, shapes and bytes); None when some
    array is split across hosts (this process cannot see all of it)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
        if isinstance(leaf, jax.Array):
            if not (leaf.is_fully_addressable or leaf.is_fully_replicated):
                return None
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            value = np.asarray(leaf if leaf.is_fully_addressable else leaf.addressable_data(0))
        else:
            value = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


class DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``<directory>.lock``, which names its holder.

    The lock file lies beside the directory (``resume=never`` deletes the directory itself); the
    kernel releases the lock when its process dies, so a killed run never leaves it held.
    """

    def __init__(self, directory: Path):
        self.path = directory.with_name(directory.name + ".lock")
        self._handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                gc.collect()  # a holder in this process that failed without closing (a sweep's earlier job)
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CheckpointBusy(
                f"{self.path.with_suffix('')} is in use by {holder}: the same run is already training "
                f"(lock {self.path}). Wait for it to finish (a rerun then returns its record), stop it, or "
                "give this launch another checkpoint.dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _filled(template, pure: dict):
    state = jax.tree.map(lambda x: x, template)  # a new container; the template is left as it was
    nnx.replace_by_pure_dict(state, pure)
    return state


class RunCheckpoints:
    """The checkpoints of one run: resume policy, identity check, periodic saves, completion."""

    def __init__(self, directory: str | Path, identity: dict, *, every_steps: int, keep: int,
                 resume: str = "auto", vocab_size: int | None = None, config: dict | None = None,
                 data: dict | None = None):
        if resume not in RESUME_POLICIES:
            raise CheckpointError(f"checkpoint.resume must be one of {RESUME_POLICIES}; got {resume!r}")
        if every_steps < 1 or keep < 1:
            raise CheckpointError(f"checkpoint.every_steps and checkpoint.keep must be >= 1; "
                                  f"got {every_steps} and {keep}")
        self.directory = Path(directory).absolute()
        self.identity, self.every_steps, self.keep, self.resume = identity, every_steps, keep, resume
        self.data = data  # the data's identity: {"cache": <cache dir name>, "sha256": <content hash>}
        self._run_info = {"identity": identity, "vocab_size": vocab_size, "config": config, "data": data}
        self._manager: ocp.CheckpointManager | None = None
        self._lock: DirectoryLock | None = None

    # -- opening: what is there, and may we use it ------------------------------------------------
    def open(self) -> "RunCheckpoints":
        """Lock the directory (process 0), apply the resume policy and check what it holds."""
        if jax.process_index() == 0:
            self._lock = DirectoryLock(self.directory)
            self._lock.acquire()
        try:
            return self._open()
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _open(self) -> "RunCheckpoints":
        run_file = self.directory / RUN_FILE
        if self.directory.exists() and any(self.directory.iterdir()):
            if not run_file.is_file():
                raise CheckpointError(f"{self.directory} is not empty and has no {RUN_FILE}: not a "
                                      "checkpoint directory of this harness; set checkpoint.dir elsewhere")
            if self.resume == "never":
                log.warning("checkpoint.resume=never: removing the previous checkpoints in %s", self.directory)
                if jax.process_index() == 0:
                    shutil.rmtree(self.directory)
            else:
                info = read_run_info(self.directory)
                self._check_identity(info["identity"])
                self._check_data(info.get("data"))
        if jax.process_index() == 0 and not run_file.exists():
            atomic_write_text(run_file, json.dumps(self._run_info, indent=2, sort_keys=True, default=str) + "\n")
        if jax.process_count() > 1:  # the others wait until process 0 has cleared / described the directory
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"lra checkpoint dir {self.directory}")
        self._manager = _manager(self.directory, ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True, cleanup_tmp_directories=True))
        if self.resume == "require" and self.latest_step is None and self.finished_record is None:
            raise CheckpointError(f"checkpoint.resume=require but {self.directory} holds no checkpoint")
        return self

    def _check_identity(self, stored: dict) -> None:
        differing = sorted(key for key in stored.keys() | self.identity.keys()
                           if stored.get(key, "<absent>") != self.identity.get(key, "<absent>"))
        if differing:
            shown = "; ".join(f"{key}: checkpoint {stored.get(key, '<absent>')!r}, now "
                              f"{self.identity.get(key, '<absent>')!r}" for key in differing[:8])
            more = f" (and {len(differing) - 8} more)" if len(differing) > 8 else ""
            raise CheckpointError(
                f"the checkpoints in {self.directory} belong to a different config: {shown}{more}. "
                "Rerun with the original settings to resume, or start over with "
                "checkpoint.resume=never (deletes them) or a new checkpoint.dir")

    def _check_data(self, stored: dict | None) -> None:
        if self.data is None or stored is None or stored == self.data:
            return
        raise CheckpointError(
            f"the checkpoints in {self.directory} were trained on other data: cache "
            f"{stored.get('cache')!r} (content sha256 {str(stored.get('sha256'))[:16]}...), this run's data is "
            f"{self.data.get('cache')!r} (content sha256 {str(self.data.get('sha256'))[:16]}...). Resuming would "
            "mix the two in one run. Restore the original cache to resume, or start over with "
            "checkpoint.resume=never (deletes the checkpoints) or a new checkpoint.dir")

    def open_read_only(self) -> "RunCheckpoints":
        """Open for restoring only: no policy, no identity check, nothing written or deleted."""
        self._manager = _manager(self.directory, ocp.CheckpointManagerOptions(read_only=True))
        return self

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    @property
    def finished_record(self) -> dict | None:
        path = self.directory / RESULT_FILE
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not valid JSON ({error}); delete it to resume the run") from error
        if not isinstance(record, dict):
            raise CheckpointError(f"{path} holds a JSON {type(record).__name__}, not a result record; "
                                  "delete it to resume the run")
        return record

    def due(self, step: int, final_step: int) -> bool:
        return step % self.every_steps == 0 or step == final_step

    # -- saving and restoring -----------------------------------------------------------------------
    def save(self, step: int, model_state, optimizer_state, best_model_state, progress: dict) -> None:
        arrays = {"model": _pure(model_state), "optimizer": _pure(optimizer_state)}
        if best_model_state is not None:
            arrays["best_model"] = _pure(best_model_state)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays),
            progress=ocp.args.JsonSave({**progress, "step": step, "has_best": best_model_state is not None,
                                        "state_sha256": state_sha256(arrays)})))
        log.info("saved checkpoint step %d in %s", step, self.directory)

    def restore(self, model_state, optimizer_state, step: int | None = None):
        """-> (step, model state, optimizer state, best model state or None, progress dict).

        Without ``step``: the newest intact step; a corrupted newer one is skipped with a warning."""
        if step is not None:
            return self._restore(model_state, optimizer_state, step)
        errors = []
        for candidate in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._restore(model_state, optimizer_state, candidate)
            except CheckpointError as error:
                errors.append(error)
                log.warning("%s; trying the previous checkpoint", error)
                continue
            if errors:
                log.warning("resuming from checkpoint step %d of %s: the newer step(s) are unusable (above)",
                            candidate, self.directory)
            return restored
        if not errors:
            raise CheckpointError(f"{self.directory} holds no checkpoint step")
        if len(errors) == 1:
            raise errors[0]
        raise CheckpointError(f"no checkpoint step of {self.directory} is usable: "
                              + " | ".join(str(error) for error in errors))

    def _restore(self, model_state, optimizer_state, step: int):
        where, failure = self.directory / str(step), None
        try:
            progress = self._manager.restore(step, args=ocp.args.Composite(
                progress=ocp.args.JsonRestore()))["progress"]
            target = {"model": _abstract(_pure(model_state)), "optimizer": _abstract(_pure(optimizer_state))}
            if progress["has_best"]:
                target["best_model"] = target["model"]
            differences = _shape_differences(_shapes(self._manager.item_metadata(step)["state"]), _shapes(target))
            if differences:
                raise ValueError("arrays of other shapes: " + "; ".join(differences[:6]))
            arrays = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))["state"]
            stored_sha256 = progress.get("state_sha256")
            if stored_sha256 is not None:
                actual = state_sha256(arrays)
                if actual is not None and actual != stored_sha256:
                    raise ValueError(f"its arrays' sha256 is {actual[:16]}..., saved as {stored_sha256[:16]}...: "
                                     "the files changed after they were written")
        except Exception as error:  # Orbax/tensorstore raise many types; all mean "unusable"
            failure = f"{type(error).__name__}: {str(error)[:400]}"
        if failure is not None:
            gc.collect()  # finalise the read tasks Orbax abandoned, now rather than at a random later time
            raise CheckpointError(
                f"cannot restore checkpoint {where}: {failure}. It is corrupted or holds other shapes; "
                "delete that step folder to fall back to an older one, or start over with "
                "checkpoint.resume=never")
        best = _filled(model_state, arrays["best_model"]) if progress["has_best"] else None
        return (step, _filled(model_state, arrays["model"]), _filled(optimizer_state, arrays["optimizer"]),
                best, progress)

    def finish(self, record: dict) -> None:
        """Mark the run done: keep only the newest step and store the record beside it."""
        self._manager.wait_until_finished()
        newest = self.latest_step
        for step in self._manager.all_steps():
            if step != newest:
                self._manager.delete(step)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            atomic_write_text(self.directory / RESULT_FILE, json.dumps(record, indent=2, default=str) + "\n")

    def close(self) -> None:
        try:
            if self._manager is not None:
                self._manager.wait_until_finished()
                self._manager.close()
        finally:
            self._release_lock()


def read_run_info(directory: Path) -> dict:
    path = Path(directory) / RUN_FILE
    try:
        info = json.loads(path.read_text())
        info["identity"]  # noqa: B018  (the one key every reader needs)
        return info
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is unreadable or not a run description ({error}); "
                              "the checkpoint directory is corrupted") from error
