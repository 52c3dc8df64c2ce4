"""What a run is: the settings and code that decide its numbers, hashed into a fingerprint.

Two runs with the same fingerprint compute the same thing (up to their seed), so their records
are samples of one distribution: the leaderboard and ``make reproduce`` average them, and only
them. The fingerprint is a sha256 over

- every resolved config entry that can change a number: model, attention (as it runs on that task,
  i.e. with the task's ``attention_overrides`` merged in), positional bias, optimizer, train, task
  and quirk settings; not the purely operational ones (``OPERATIONAL_KEYS``: where files go,
  logging, checkpointing, W&B, progress bars, data-source locations) and not the seed;
- the source of the attention's (and positional bias's) module and of every module of the same
  package or folder it imports, so editing a kernel makes a new fingerprint.

The task's data is identified by its settings here (they are what its cache key is made of,
without file locations); the record also stores the cache's name and a hash of its content.

A run's checkpoint directory is ``<root>/<protocol>/<task>/<attention>/seed<seed>-<fingerprint>``,
so rerunning a command finds its own checkpoints and anything that changes the numbers, the code
included, trains afresh in a new directory (``explain_fresh_start`` says why, in one line).

``settings_changed`` lists what differs from the protocol's defaults for the same task and attention,
as Hydra overrides (``train.steps=200``); the leaderboard labels non-default rows with it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lra.digest import json_sha256, path_sha256

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
FINGERPRINT_CHARS = 16

# Config entries (and everything under them) that never change what a run computes.
OPERATIONAL_KEYS = (
    "seed",                     # not a setting: records of one fingerprint are its seeds
    "run_dir", "progress", "paths", "logger", "checkpoint", "distributed", "hydra",
    "train.overhead_pairs", "train.prefetch", "train.log_every",   # timing windows and host pipeline
    # how one update is computed on the device, not what it is: micro-batches summed to the same
    # gradient, rematerialised activations, the CPU guard (docs/scaling.md)
    "train.grad_accum_steps", "train.micro_batch", "train.memory_limit_gb", "train.memory_margin",
    "model.remat", "allow_cpu", "protocol.cpu_sized",
    "task.attention_overrides",  # folded into the attention's own settings (effective_attention)
    "task.release_dir", "task.release_archive", "task.release_url", "task.raw_archive", "task.download",
    "task.tfds_data_dir", "task.generator.workers",                 # where the data comes from, not what it is
    "task.allow_unknown_tokens",                                    # whether to refuse a cache, not what it holds
)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def is_operational(key: str) -> bool:
    """Whether a config key (dotted) never changes what a run computes (OPERATIONAL_KEYS)."""
    return any(key == k or key.startswith(f"{k}.") for k in OPERATIONAL_KEYS)


def settings(resolved: Mapping, attention: Mapping | None = None) -> dict[str, Any]:
    """The flattened config entries that decide a run's numbers. ``attention``: the attention's
    settings as it runs (``task.attention_overrides`` merged), replacing ``resolved['attention']``."""
    config = dict(resolved)
    if attention is not None:
        config["attention"] = attention
    return {key: value for key, value in flatten(config).items() if not is_operational(key)}


# -- source of an attention --------------------------------------------------------------------------
def _module_origin(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin not in (None, "built-in", "frozen") else None


def _target_module(target: str) -> tuple[str, Path] | None:
    """``pkg.module.Class`` -> (``pkg.module``, its file): the longest importable prefix."""
    parts = target.split(".")
    for end in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:end])
        origin = _module_origin(name)
        if origin is not None and origin.suffix == ".py":
            return name, origin
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of the modules a source file imports (read, not executed)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[:len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in names if name}


def source_files(target: str) -> list[Path]:
    """The file of ``target``'s module and of every module it imports, directly or not, from the same
    folder tree (its top-level package, or the folder of a top-level module such as a user's kernel).
    Harness and library modules are left out: the harness is identified by the git commit."""
    found = _target_module(target)
    if found is None:
        return []
    module, origin = found
    top = module.split(".")[0]
    top_origin = _module_origin(top)
    root = (top_origin.parent if top_origin is not None and top_origin.name == "__init__.py"
            else origin.parent).resolve()
    files: dict[Path, None] = {}
    pending = [(module, origin)]
    while pending:
        name, path = pending.pop()
        path = path.resolve()
        if path in files or root not in path.parents:
            continue
        files[path] = None
        for imported in _imported_modules(path, name):
            imported_origin = _module_origin(imported) if imported.split(".")[0] in (top, *_siblings(root)) else None
            if imported_origin is not None and imported_origin.suffix == ".py":
                pending.append((imported, imported_origin))
    return sorted(files)


def _siblings(root: Path) -> tuple[str, ...]:
    """Top-level module names that live in ``root`` (a user's kernel folder may hold several)."""
    try:
        return tuple(p.stem for p in root.glob("*.py"))
    except OSError:
        return ()


def source_sha256(target: str | None) -> str | None:
    """A hash of ``source_files(target)`` (names relative to their folder, and contents); None when
    there is no target, ``missing:<target>`` when its module cannot be found."""
    if not target:
        return None
    files = source_files(target)
    if not files:
        return f"missing:{target}"
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return json_sha256({str(f.relative_to(root)): path_sha256(f) for f in files})


# -- the identity of one run ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """Everything that decides a run's numbers, and its seed."""

    settings: dict[str, Any]
    code: dict[str, str | None]   # {"attention": sha, "positional_bias": sha}
    seed: int

    @property
    def fingerprint(self) -> str:
        return json_sha256({"settings": self.settings, "code": self.code})[:FINGERPRINT_CHARS]

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready: what a checkpoint directory's run.json stores and compares."""
        return {**self.settings, **{f"code.{k}": v for k, v in self.code.items()}, "seed": self.seed}


def run_identity(resolved: Mapping, attention: Mapping | None = None) -> RunIdentity:
    """The identity of the run a resolved config describes (``attention``: as in ``settings``)."""
    attention = dict(attention if attention is not None else resolved.get("attention") or {})
    bias = resolved.get("positional_bias") or None
    code = {"attention": source_sha256(attention.get("_target_"))}
    if bias or attention.get("positional_bias"):
        code["positional_bias"] = source_sha256((bias or {}).get("_target_") or _bias_target(attention))
    return RunIdentity(settings(resolved, attention), code, int(resolved.get("seed", 0)))


def _bias_target(attention: Mapping) -> str | None:
    from omegaconf import OmegaConf

    path = CONFIG_DIR / "positional_bias" / f"{attention['positional_bias']}.yaml"
    return OmegaConf.load(path).get("_target_") if path.exists() else None


def checkpoint_directory(root: str | Path, protocol: str, task: str, attention: str,
                         identity: RunIdentity) -> Path:
    """``<root>/<protocol>/<task>/<attention>/seed<seed>-<fingerprint>``: the same for every rerun of a
    command, another one when a setting or the attention's code changes."""
    return (Path(root) / protocol / task / attention.replace("/", "_")
            / f"seed{identity.seed}-{identity.fingerprint}")


def explain_fresh_start(directory: Path, identity: RunIdentity, read_identity) -> str | None:
    """One line saying why a run starts afresh in ``directory`` although the same attention, task
    and seed ran before (the newest sibling ``seed<k>-*`` directory); None when it never ran.
    ``read_identity(path)`` returns a directory's stored identity dict (or raises)."""
    siblings = [p for p in directory.parent.glob(f"seed{identity.seed}-*") if p != directory and p.is_dir()]
    for previous in sorted(siblings, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            stored = read_identity(previous)
        except Exception:  # noqa: BLE001 - an unreadable neighbour explains nothing
            continue
        now = identity.as_dict()
        changed = sorted(k for k in stored.keys() | now.keys() if stored.get(k, "<absent>") != now.get(k, "<absent>"))
        if not changed:
            continue
        code = [k for k in changed if k.startswith("code.")]
        if code:
            what = ", ".join(f"{k[5:]} source {str(stored.get(k))[:10]} -> {str(now.get(k))[:10]}" for k in code)
            reason = f"the code changed ({what})"
        else:
            shown = ", ".join(f"{k}: {stored.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in changed[:4])
            reason = f"settings changed ({shown}{', ...' if len(changed) > 4 else ''})"
        return f"training afresh in {directory}: {reason} since {previous}"
    return None


# -- what differs from the protocol's defaults ------------------------------------------------------------
def render(value: Any) -> str:
    """A config value as a Hydra override value (``true``, ``null``, ``[1,2]``, ``0.0001``)."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def settings_changed(now: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Sorted Hydra overrides that turn ``defaults`` into ``now`` (both from ``settings``):
    ``key=value``, ``+key=value`` for a key the defaults lack, ``~key`` for one removed."""
    changed = []
    for key in sorted(now.keys() | defaults.keys()):
        if key not in defaults:
            changed.append(f"+{key}={render(now[key])}")
        elif key not in now:
            changed.append(f"~{key}")
        elif now[key] != defaults[key]:
            changed.append(f"{key}={render(now[key])}")
    return changed


def config_choices(cfg) -> dict[str, str]:
    """The config-group options a run's config was composed from (Hydra's record of them when Hydra
    composed it, else derived from the config: an attention by its registered YAML name)."""
    from hydra.core.hydra_config import HydraConfig

    from lra.registry import registered_attentions

    if HydraConfig.initialized():
        chosen = HydraConfig.get().runtime.choices
        return {group: chosen.get(group) for group in ("task", "attention", "protocol", "positional_bias")
                if chosen.get(group)}
    by_name = {info["name"]: stem for stem, info in registered_attentions().items()}
    choices = {"task": cfg.task.name, "attention": by_name.get(cfg.attention.name, cfg.attention.name),
               "protocol": cfg.protocol.name}
    if cfg.get("positional_bias") is not None:
        choices["positional_bias"] = cfg.positional_bias.name
    return choices


def changed_from_defaults(cfg, identity: RunIdentity) -> list[str] | None:
    """What a run (``cfg``, its ``identity``) sets differently from its protocol's defaults, as Hydra
    overrides; None if the defaults cannot be composed (the run goes on, labelled as such)."""
    from omegaconf import OmegaConf

    from lra.build import task_attention_config

    try:
        defaults = OmegaConf.create(compose_defaults(config_choices(cfg)))
        default_settings = settings(OmegaConf.to_container(defaults, resolve=True),
                                    OmegaConf.to_container(task_attention_config(defaults), resolve=True))
    except Exception as error:  # noqa: BLE001 - a label must never stop a run
        log.warning("cannot compose the protocol's defaults to label this run's settings: %s", error)
        return None
    return settings_changed(identity.settings, default_settings)


def compose_defaults(choices: Mapping[str, str]) -> dict:
    """The resolved config of ``choices`` (task, attention, protocol, and positional_bias when one is
    added) with nothing else overridden: the protocol's defaults for that task and attention.
    A user's kernel folder (``LRA_KERNEL_DIR``) is on the search path, as in ``make sweep``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    overrides = [f"{group}={choices[group]}" for group in ("task", "attention", "protocol")]
    if choices.get("positional_bias"):
        overrides.append(f"+positional_bias={choices['positional_bias']}")
    if os.environ.get("LRA_KERNEL_DIR"):
        overrides.append(f"hydra.searchpath=[file://{Path(os.environ['LRA_KERNEL_DIR']).resolve()}]")
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its config tree
        config = compose("config", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            config = compose("config", overrides=overrides)
    return OmegaConf.to_container(config, resolve=True)
