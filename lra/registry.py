"""The attention registry: every YAML file in ``configs/attention/`` is a registered attention.

    python -m lra.registry              # list them, with what each needs
    python -m lra.registry --runnable   # comma-separated names runnable here (used by `make sweep`)

An attention YAML may extend another (``defaults: [sikf]``) and name a positional-bias add-on
(``positional_bias: fastrpb``), which makes a swept combination such as ``sikf+fastrpb``.
Your own attentions live outside the repository: set ``LRA_KERNEL_DIR`` to a folder holding
``attention/<name>.yaml`` (and the module its ``_target_`` names); they are registered beside the
built-in ones (``make sweep KERNEL_DIR=...`` sets it; docs/new_kernel.md).
An attention may declare the backends it runs on, ``requires: [gpu]`` (any of cpu, gpu, tpu; no key:
all of them); it is left out of ``--runnable`` on any other backend, and the skip is reported on
stderr, naming the backend, so a sweep never silently drops a row.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from lra.accelerator import BACKENDS

ATTENTION_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "attention"
POSITIONAL_BIAS_CONFIGS = ATTENTION_CONFIGS.parent / "positional_bias"


def load_attention_config(name: str, directory: Path | None = None) -> DictConfig:
    """One attention YAML as Hydra would compose it: a ``defaults`` list naming other files of the
    same group (e.g. ``sikf_fastrpb.yaml`` extends ``sikf.yaml``) is merged in order, ``_self_`` last
    unless placed otherwise. Without ``directory``: configs/attention/, then the user's LRA_KERNEL_DIR."""
    if directory is None:
        directory = next((d for d in attention_config_dirs() if (d / f"{name}.yaml").exists()), ATTENTION_CONFIGS)
    path = directory / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no attention config {path}; registered: {sorted(p.stem for p in directory.glob('*.yaml'))}")
    config = OmegaConf.load(path)
    defaults = list(config.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        merged = OmegaConf.merge(merged, config if entry == "_self_" else load_attention_config(entry, directory))
    return merged


def attention_config_dirs() -> list[Path]:
    """configs/attention/, then <LRA_KERNEL_DIR>/attention/ when that variable names a folder."""
    user = os.environ.get("LRA_KERNEL_DIR")
    if not user:
        return [ATTENTION_CONFIGS]
    if not (Path(user) / "attention").is_dir():
        raise FileNotFoundError(f"LRA_KERNEL_DIR={user}: no folder {Path(user) / 'attention'} of attention YAMLs")
    return [ATTENTION_CONFIGS, Path(user).resolve() / "attention"]


def required_backends(value, where: str) -> tuple[str, ...] | None:
    """An attention's ``requires`` as a tuple of backends; None (no key) runs everywhere. A single
    name (``requires: gpu``, the older spelling) is read as a one-item list."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple, ListConfig)) else None
    if not values or any(v not in BACKENDS for v in values):
        raise ValueError(f"{where}: 'requires' must list backends among {', '.join(BACKENDS)} (e.g. requires: [gpu]); "
                         f"got {value!r}")
    return tuple(values)


def runs_on(requires: tuple[str, ...] | None, backend: str) -> bool:
    return requires is None or backend in requires


def registered_attentions(directory: Path | None = None) -> dict[str, dict]:
    """Config-file stem -> {name, requires, target, positional_bias} for every attention YAML
    (of ``directory``, or of configs/attention/ plus the user's LRA_KERNEL_DIR)."""
    found = {}
    paths = sorted(directory.glob("*.yaml")) if directory else [
        path for folder in attention_config_dirs() for path in sorted(folder.glob("*.yaml"))]
    for path in paths:
        if path.stem in found:
            raise ValueError(f"{path}: attention config '{path.stem}' is already registered; rename it")
        config = load_attention_config(path.stem, path.parent)
        for key in ("name", "_target_"):
            if key not in config:
                raise ValueError(f"{path}: attention config has no '{key}' key")
        found[path.stem] = {"name": config.name, "requires": required_backends(config.get("requires"), str(path)),
                            "target": config._target_,
                            "positional_bias": config.get("positional_bias")}
    return found


def runnable_attentions(backend: str, include_combinations: bool = False) -> tuple[list[str], list[str]]:
    """(runnable, skipped) config names on ``backend``; skipped: those whose ``requires`` does not
    list it. Combinations (an attention YAML that also
    names a ``positional_bias`` add-on) are included only on request: they are swept, while the
    per-attention tests cover the plain attentions and test the add-on separately."""
    runnable, skipped = [], []
    for stem, info in registered_attentions().items():
        if info["positional_bias"] and not include_combinations:
            continue
        (runnable if runs_on(info["requires"], backend) else skipped).append(stem)
    return runnable, skipped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runnable", action="store_true", help="print runnable names, comma-separated")
    args = parser.parse_args(argv)
    if args.runnable:
        import jax

        backend = jax.default_backend()
        runnable, skipped = runnable_attentions(backend, include_combinations=True)
        found = registered_attentions()
        for stem in skipped:
            print(f"sweep: skipping attention '{stem}': it runs on {', '.join(found[stem]['requires'])} and JAX's "
                  f"backend here is {backend}", file=sys.stderr)
        print(",".join(runnable))
        return
    for stem, info in registered_attentions().items():
        extras = [f"+ {info['positional_bias']}" if info["positional_bias"] else "",
                  f"runs on {', '.join(info['requires'])}" if info["requires"] else ""]
        print(f"{stem:24s} {info['target']:45s} {' '.join(e for e in extras if e)}")


if __name__ == "__main__":
    main()
