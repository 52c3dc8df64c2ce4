"""One up-front check of a run's config: every numeric setting's type and range, before any data is
read or anything compiles.

Without it a bad value fails late (after data preparation and compilation) or not at all: a negative
batch size made the training batch producer loop forever. ``check_config`` names every bad key at
once, with its value and what is allowed:

    train.batch_size=-4: must be an integer >= 1
    model.dtype='int8': must be one of float32, bfloat16

Keys a config does not have are not checked (a task without ``generator`` has no generator sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

MISSING = object()
COMPUTE_DTYPES = ("float32", "bfloat16")  # the compute dtypes the encoder is documented and tested with
MAX_SEED = 2**31 - 1  # numpy and JAX accept every seed in 0..2**31-1


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message lists every one found."""


def _integer(minimum: int, maximum: int | None = None, optional: bool = False) -> Callable[[Any], str | None]:
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}"
    allowed += " or null" if optional else ""

    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be {allowed} (got a {type(value).__name__})"
        if value < minimum or (maximum is not None and value > maximum):
            return f"must be {allowed}"
        return None

    return check


def _number(low: float, high: float, *, low_open: bool = False, high_open: bool = False, optional: bool = False):
    allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    allowed += " or null" if optional else ""

    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {allowed} (got a {type(value).__name__})"
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            return f"must be {allowed}"
        return None

    return check


def _one_of(*choices: str):
    def check(value):
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _boolean(value):
    return None if isinstance(value, bool) else f"must be true or false (got a {type(value).__name__})"


POSITIVE = _integer(1)
OPTIONAL_POSITIVE = _integer(1, optional=True)

CHECKS: dict[str, Callable[[Any], str | None]] = {
    "seed": _integer(0, MAX_SEED),
    "train.steps": POSITIVE,
    "train.batch_size": POSITIVE,
    "train.eval_batch_size": OPTIONAL_POSITIVE,
    "train.eval_every": POSITIVE,
    "train.log_every": POSITIVE,
    "train.train_limit": OPTIONAL_POSITIVE,
    "train.eval_limit": OPTIONAL_POSITIVE,
    "train.overhead_pairs": _integer(0),
    "train.prefetch": POSITIVE,
    "train.grad_accum_steps": POSITIVE,
    "train.memory_margin": _number(0, 1, high_open=True),
    "task.max_length": POSITIVE,
    "task.num_classes": _integer(2),
    "task.generator.num_train": POSITIVE,
    "task.generator.num_val": POSITIVE,
    "task.generator.num_test": POSITIVE,
    "task.generator.min_length": _integer(0),
    "task.generator.max_length": POSITIVE,
    "model.emb_dim": POSITIVE,
    "model.num_heads": POSITIVE,
    "model.qkv_dim": POSITIVE,
    "model.mlp_dim": POSITIVE,
    "model.num_layers": POSITIVE,
    "model.dropout_rate": _number(0, 1, high_open=True),
    "model.attention_dropout_rate": _number(0, 1, high_open=True),
    "model.dtype": _one_of(*COMPUTE_DTYPES),
    "optimizer.weight_decay": _number(0, float("inf")),
    "optimizer.schedule.base_learning_rate": _number(0, float("inf"), low_open=True),
    "optimizer.schedule.warmup_steps": _integer(0, optional=True),
    "checkpoint.enabled": _boolean,
    "checkpoint.every_steps": POSITIVE,
    "checkpoint.keep": POSITIVE,
    "checkpoint.resume": _one_of("auto", "never", "require"),
    "progress": _boolean,
}


def _get(tree: Mapping, dotted: str):
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def config_problems(cfg: DictConfig | Mapping, devices: int | None = None) -> list[str]:
    """Every bad value of ``cfg`` as 'key=value: what is allowed'; [] when all is well.

    ``devices``: the data-parallel width; batch sizes must split evenly over it."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    problems = []
    for key, check in CHECKS.items():
        value = _get(tree, key)
        if value is MISSING:
            continue
        problem = check(value)
        if problem:
            problems.append(f"{key}={value!r}: {problem}")
    generator = _get(tree, "task.generator")
    if isinstance(generator, Mapping) and not any(p.startswith("task.generator.") for p in problems):
        low, high = generator.get("min_length"), generator.get("max_length")
        if isinstance(low, int) and isinstance(high, int) and low >= high:
            problems.append(f"task.generator.min_length={low!r}: must be below task.generator.max_length={high!r}")
    if devices and devices > 1:
        for key in ("train.batch_size", "train.eval_batch_size"):
            value = _get(tree, key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value % devices:
                problems.append(f"{key}={value}: must be a multiple of the {devices} devices the batch is "
                                f"split over")
    return problems


def check_config(cfg: DictConfig | Mapping, devices: int | None = None) -> None:
    """Raise ``ConfigError`` listing every bad value (``config_problems``)."""
    problems = config_problems(cfg, devices)
    if problems:
        raise ConfigError("invalid config (nothing was loaded or compiled):\n  " + "\n  ".join(problems))
