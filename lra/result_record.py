"""The result record: one JSON object per run, its fields, their types and what they mean.

Every run writes one record (``lra.results.write_record``), whatever its outcome: ``ok``, ``diverged``
(a non-finite loss or gradient stopped it; no accuracies) or ``failed`` (it raised; the exception's
one-line summary and the log path say why). The leaderboard, ``make reproduce`` and ``results.csv``
read records through this module, so a field means the same everywhere.

Schema versions
    1   records written before the schema existed (no ``schema_version`` key). They are read with
        ``legacy: true``, a fingerprint derived from the settings they do record (prefixed
        ``legacy-``) and the variant label ``legacy record``, so they never pool with newer runs.
    2   this module's fields (``FIELDS``).

``results.csv`` has one column per field in the order of ``FIELDS`` (identity, outcome, accuracies,
costs, what ran, provenance, then nested settings as JSON text), with integer, float and boolean
columns typed as such.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from lra.digest import json_sha256

SCHEMA_VERSION = 2
STATUSES = ("ok", "diverged", "failed")
LEGACY_VARIANT = "legacy record"


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    kind: type          # int | float | str | bool | list | dict
    group: str          # identity | outcome | accuracy | cost | run | code | provenance | settings
    meaning: str


def _fields(group: str, kind: type, *entries: tuple[str, str]) -> list[Field]:
    return [Field(name, kind, group, meaning) for name, meaning in entries]


FIELDS: tuple[Field, ...] = tuple([
    # -- which run this is ---------------------------------------------------------------------------
    *_fields("identity", str,
             ("run_id", "unique id: <local time>_<task>_<attention>_s<seed>_<random hex>"),
             ("protocol", "configs/protocol/<name>.yaml: smoke | lra_official | pytorch_lineage | ..."),
             ("task", "configs/task/<name>.yaml: listops, text, retrieval, image, pathfinder, pathx"),
             ("attention", "the row name: the attention YAML's `name`, `+<bias>` for a positional-bias add-on"),
             ("variant", "settings that differ from the protocol's defaults, as Hydra overrides joined by ', '; "
                         "'' = the protocol's own settings")),
    Field("seed", int, "identity", "seed of model init, dropout, attention randomness and data order"),
    Field("fingerprint", str, "identity", "hash of every setting and source file that changes the numbers, "
                                          "the seed excepted (lra.run_identity); equal fingerprints = comparable runs"),
    # -- how it ended --------------------------------------------------------------------------------
    Field("status", str, "outcome", "ok | diverged (non-finite loss or gradient) | failed (the run raised)"),
    Field("error", str, "outcome", "failed runs: the exception's type and first line"),
    Field("log_path", str, "outcome", "the run's log file (traceback of a failed run)"),
    Field("diverged_at_step", int, "outcome", "diverged runs: first step with a non-finite loss or gradient"),
    Field("last_checkpoint_step", int, "outcome", "diverged runs: the last good checkpoint kept"),
    Field("divergence", str, "outcome", "diverged runs: the message"),
    # -- accuracies (fractions in [0, 1]) and losses ---------------------------------------------------
    Field("test_checkpoint", str, "accuracy", "the protocol's headline: final | best_val"),
    *_fields("accuracy", float,
             ("test_accuracy_final", "test accuracy of the final parameters"),
             ("test_accuracy_best_val", "test accuracy of the best-validation parameters"),
             ("val_accuracy_best", "best validation accuracy over the evaluations"),
             ("val_accuracy_final", "validation accuracy at the last step"),
             ("train_accuracy_final", "training accuracy over the last logging window"),
             ("test_loss_final", "test loss of the final parameters"),
             ("test_loss_best_val", "test loss of the best-validation parameters"),
             ("val_loss_final", "validation loss at the last step"),
             ("train_loss_final", "training loss over the last logging window")),
    *_fields("accuracy", int,
             ("best_step", "step of the best validation accuracy"),
             ("test_examples", "test examples scored"),
             ("val_examples", "validation examples scored")),
    # -- costs -----------------------------------------------------------------------------------------
    *_fields("cost", float,
             ("step_time_median_s", "median train-step time over logging windows (first window excluded)"),
             ("step_time_pipeline_s", "host-overhead check: step time fed by the input pipeline"),
             ("step_time_resident_s", "host-overhead check: step time on one device-resident batch"),
             ("host_overhead", "step_time_pipeline_s / step_time_resident_s - 1"),
             ("examples_per_s", "batch_size / step_time_median_s"),
             ("tokens_per_s", "batch_size * max_length / step_time_median_s (padded tokens)"),
             ("compile_time_s", "compile time of the train step (micro_batch=auto: of every candidate tried)"),
             ("eval_compile_time_s", "compile time of the eval step"),
             ("flops_per_step", "XLA's cost analysis of the compiled train step"),
             ("wall_time_s", "wall time of the run in this process: data loading to record (a resumed "
                             "run: since it resumed)")),
    *_fields("cost", int,
             ("step_time_windows", "logging windows behind the median"),
             ("xla_step_bytes", "XLA compiled memory of the train step (arguments + outputs + temporaries "
                                "- aliased)"),
             ("xla_temp_bytes", "XLA compiled temporaries of the train step"),
             ("device_peak_bytes", "device allocator peak (GPU/TPU; a running maximum over the process)"),
             ("param_count", "trainable parameters"),
             ("resumed_from_step", "the step a preempted run resumed from")),
    # -- what ran --------------------------------------------------------------------------------------
    *_fields("run", int,
             ("steps", "train.steps"), ("batch_size", "train.batch_size (global)"),
             ("max_length", "task.max_length")),
    *_fields("run", int,
             ("grad_accum_steps", "micro-batches whose gradients make one update (train.grad_accum_steps, or "
                                  "chosen by train.micro_batch); the global batch is batch_size either way"),
             ("micro_batch_size", "rows per micro-batch: batch_size / grad_accum_steps")),
    Field("micro_batch_auto", bool, "run", "the micro-batch was chosen from XLA's compiled memory "
                                           "(train.micro_batch=auto)"),
    Field("dtype", str, "run", "model.dtype: compute dtype"),
    Field("remat", str, "run", "model.remat: none | attention | block (what the backward pass recomputes: "
                               "each layer's attention or each block; changes memory and time, not the numbers)"),
    *_fields("code", str,
             ("attention_target", "the attention's _target_ (module.Class)"),
             ("attention_source_sha256", "hash of the attention's source files (lra.run_identity.source_sha256)"),
             ("positional_bias_target", "the positional-bias add-on's _target_"),
             ("positional_bias_source_sha256", "hash of the add-on's source files"),
             ("data_cache", "the task's cache directory name (lra.data.token_cache)"),
             ("data_sha256", "hash of the cache's content: vocabulary and every array's sha256")),
    # -- provenance --------------------------------------------------------------------------------------
    *_fields("provenance", str,
             ("device", "<platform>:<device kind> of device 0")),
    Field("device_count", int, "provenance", "devices the run used"),
    *_fields("provenance", str,
             ("python", "Python version"), ("host", "host name"),
             ("git_sha", "harness commit (12 hex digits)")),
    Field("git_dirty", bool, "provenance", "the harness checkout had uncommitted changes to tracked files"),
    *_fields("provenance", str,
             ("date", "UTC time the record was written (ISO 8601)"),
             ("jax_version", "jax"), ("jaxlib_version", "jaxlib"), ("flax_version", "flax"),
             ("optax_version", "optax"), ("numpy_version", "numpy"),
             ("run_dir", "the run directory (config.yaml, metrics.csv, result.json)"),
             ("sweep_id", "the multirun that launched it (None for a single run)")),
    Field("schema_version", int, "provenance", "this schema's version (SCHEMA_VERSION)"),
    # -- settings (nested) ---------------------------------------------------------------------------------
    Field("settings_changed", list, "settings", "variant as a list of Hydra overrides (None: unknown)"),
    *_fields("settings", dict,
             ("attention_config", "the attention's knobs as it ran (task overrides merged)"),
             ("positional_bias_config", "the positional-bias add-on's knobs"),
             ("quirks", "quirks.* flags"), ("model_config", "model.*"), ("optimizer_config", "optimizer.*")),
])
FIELD_NAMES = tuple(f.name for f in FIELDS)
BY_NAME = {f.name: f for f in FIELDS}
# What a diverged or failed run reports instead of accuracies: nothing (None), never a made-up 0.
NO_ACCURACY = {f.name: None for f in FIELDS if f.group == "accuracy" and f.name != "test_checkpoint"}


class RecordError(ValueError):
    """A record that does not follow the schema (names the record or file)."""


def _type_ok(field: Field, value: Any) -> bool:
    if value is None:
        return True
    if field.kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if field.kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, field.kind)


def make_record(**values: Any) -> dict[str, Any]:
    """A schema-conforming record: every field present (None where not given), in schema order.
    Unknown names, wrong types or a missing identity are a ``RecordError``."""
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise RecordError(f"unknown record fields {unknown}; the schema is lra/result_record.py")
    for name in ("run_id", "protocol", "task", "attention", "seed", "status"):
        if values.get(name) is None:
            raise RecordError(f"record field {name!r} is required")
    if values["status"] not in STATUSES:
        raise RecordError(f"record status {values['status']!r} is not one of {STATUSES}")
    record = {name: values.get(name) for name in FIELD_NAMES}
    record["schema_version"] = SCHEMA_VERSION
    for name, value in record.items():
        if not _type_ok(BY_NAME[name], value):
            raise RecordError(f"record field {name!r} must be {BY_NAME[name].kind.__name__} or None, "
                              f"got {type(value).__name__} {value!r}")
    return record


# Fields of a legacy record that decided its numbers: their hash stands in for the fingerprint.
_LEGACY_IDENTITY = ("protocol", "task", "attention", "steps", "batch_size", "max_length", "dtype",
                    "attention_config", "positional_bias_config", "quirks", "model_config", "optimizer_config",
                    "data_cache")


def normalise(record: Any, source: str | Path = "record") -> dict[str, Any]:
    """A record as read from disk, in the current shape. Version-1 records get ``legacy: True``, a
    ``legacy-`` fingerprint from their recorded settings and the variant ``legacy record``;
    fields they lack read as None (status as ``ok``). ``source`` names the file in errors."""
    if not isinstance(record, dict):
        raise RecordError(f"{source}: a result record must be a JSON object, got {type(record).__name__}")
    version = record.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return {**{name: None for name in FIELD_NAMES}, **record}
    if version != 1:
        raise RecordError(f"{source}: record schema version {version!r}; this harness reads 1 and {SCHEMA_VERSION}")
    for name in ("run_id", "task", "attention", "protocol", "seed"):
        if name not in record:
            raise RecordError(f"{source}: legacy record has no {name!r}")
    legacy = {**{name: None for name in FIELD_NAMES}, **record}
    git_sha = str(legacy.get("git_sha") or "")
    legacy.update(
        status=record.get("status") or "ok", schema_version=1, legacy=True, variant=LEGACY_VARIANT,
        fingerprint="legacy-" + json_sha256({k: record.get(k) for k in _LEGACY_IDENTITY})[:16],
        git_sha=git_sha.removesuffix("-dirty") or None, git_dirty=git_sha.endswith("-dirty") if git_sha else None)
    return legacy


def read_record(path: str | Path) -> dict[str, Any]:
    """One record file, normalised; a clear ``RecordError`` naming the file if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"result record {path} is unreadable: {error}") from error
    return normalise(data, path)


def newest_first_key(record: dict) -> tuple[str, str]:
    """Sort key: the record's date (UTC, ISO), then its run id (which starts with its local time)."""
    return (str(record.get("date") or ""), str(record.get("run_id") or ""))


_PANDAS_TYPES = {int: "Int64", float: "float64", bool: "boolean"}


def records_frame(records: list[dict]) -> pd.DataFrame:
    """Records as a table: schema columns in schema order (typed), then any extra keys; nested
    settings (lists, dicts) as JSON text. Rows sorted by protocol, task, attention, variant, seed."""
    rows = [{key: json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
             for key, value in record.items()} for record in records]
    extra = sorted({key for record in records for key in record} - set(FIELD_NAMES))
    frame = pd.DataFrame(rows, columns=[*FIELD_NAMES, *extra])
    for field in FIELDS:
        if field.kind in _PANDAS_TYPES:
            frame[field.name] = frame[field.name].astype(_PANDAS_TYPES[field.kind])
    if not frame.empty:
        frame = frame.sort_values(["protocol", "task", "attention", "variant", "seed", "run_id"],
                                  kind="stable", na_position="first").reset_index(drop=True)
    return frame


def schema_markdown() -> str:
    """The schema as a markdown table (docs/leaderboard.md quotes it)."""
    lines = ["| field | type | group | meaning |", "|---|---|---|---|"]
    lines += [f"| `{f.name}` | {f.kind.__name__} | {f.group} | {f.meaning} |" for f in FIELDS]
    return "\n".join(lines) + "\n"
