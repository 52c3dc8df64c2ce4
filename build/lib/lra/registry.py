"""The attention registry: every YAML file in ``configs/attention/`` is a registered attention.

    python -m lra.registry              # list them, with what each needs
    python -m lra.registry --runnable   # comma-separated names runnable here (used by `make sweep`)

An attention marked ``requires: gpu`` is left out of ``--runnable`` when JAX sees no GPU, and the
skip is reported on stderr so a sweep never silently drops a row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

ATTENTION_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "attention"


def registered_attentions(directory: Path = ATTENTION_CONFIGS) -> dict[str, dict]:
    """Config-file stem -> {name, requires, target} for every attention YAML."""
    found = {}
    for path in sorted(directory.glob("*.yaml")):
        config = OmegaConf.load(path)
        for key in ("name", "_target_"):
            if key not in config:
                raise ValueError(f"{path}: attention config has no '{key}' key")
        found[path.stem] = {"name": config.name, "requires": config.get("requires"), "target": config._target_}
    return found


def runnable_attentions(backend: str) -> tuple[list[str], list[str]]:
    runnable, skipped = [], []
    for stem, info in registered_attentions().items():
        (skipped if info["requires"] == "gpu" and backend == "cpu" else runnable).append(stem)
    return runnable, skipped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runnable", action="store_true", help="print runnable names, comma-separated")
    args = parser.parse_args(argv)
    if args.runnable:
        import jax

        runnable, skipped = runnable_attentions(jax.default_backend())
        for stem in skipped:
            print(f"sweep: skipping attention '{stem}': it needs a GPU and JAX sees only a CPU", file=sys.stderr)
        print(",".join(runnable))
        return
    for stem, info in registered_attentions().items():
        print(f"{stem:24s} {info['target']:45s} {'needs ' + info['requires'] if info['requires'] else ''}")


if __name__ == "__main__":
    main()
