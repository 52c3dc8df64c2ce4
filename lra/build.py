"""Build a run's parts from its config: the attention, the positional-bias add-on, the encoder and
its optimizer.

One home for turning YAML into modules, used by the entry point (``lra.train``), ``lra.restore``,
the memory plan, the pre-flight check, the kernel report card, the benchmarks and the tests.
``make_attention`` builds one attention by its YAML name; ``model_rngs`` is the random-stream
convention every module built here shares (parameters, dropout, and the attention's own draws).
"""

from __future__ import annotations

import hydra
import jax
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from attention.base import HARNESS_KEYS, AttentionSpec
from lra.model import DualEncoder, Encoder
from lra.registry import POSITIONAL_BIAS_CONFIGS, load_attention_config, required_backends, runs_on
from lra.training.optimizer import build_optimizer


class ConfigError(ValueError):
    pass


def model_rngs(seed: int, attention_seed: int | None = None) -> nnx.Rngs:
    """The random streams of a built module: ``params`` from ``seed``, ``dropout`` from seed + 1 and
    ``attention`` (random features, hashing, sampling) from seed + 2 unless ``attention_seed`` is given."""
    return nnx.Rngs(params=seed, dropout=seed + 1, attention=seed + 2 if attention_seed is None else attention_seed)


def build_attention(attention_cfg: DictConfig, kind: str = "attention"):
    """An attention (or positional-bias) YAML -> (name, factory(spec, rngs=...), kwargs for the record)."""
    config = OmegaConf.to_container(attention_cfg, resolve=True)
    harness = {key: config.pop(key, None) for key in HARNESS_KEYS}
    if not harness["name"]:
        raise ConfigError(f"the {kind} config has no 'name' key (see configs/attention/softmax.yaml)")
    try:
        requires = required_backends(harness["requires"], f"{kind} '{harness['name']}'")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not runs_on(requires, jax.default_backend()):
        raise ConfigError(f"{kind} '{harness['name']}' runs on {', '.join(requires)} ({kind}.requires); "
                          f"JAX's backend here is {jax.default_backend()}")
    try:
        factory = hydra.utils.instantiate(config, _partial_=True)
    except Exception as error:  # Hydra wraps import errors; say which config and target failed
        raise ConfigError(f"{kind} '{harness['name']}': cannot build _target_="
                          f"{config.get('_target_')!r}: {error}") from error
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    return harness["name"], factory, kwargs


def attention_factory(config_name: str, **overrides):
    """The factory ``(spec, rngs=...) -> module`` of an attention YAML by name (built-in or from
    ``LRA_KERNEL_DIR``), with config ``overrides`` merged in."""
    _, factory, _ = build_attention(OmegaConf.merge(load_attention_config(config_name), overrides))
    return factory


def make_attention(config_name: str, spec: AttentionSpec, seed: int = 0, *, attention_seed: int | None = None,
                   **overrides):
    """One attention module from its YAML name with config ``overrides``, built as the encoder
    builds it (``attention_factory``, ``model_rngs(seed, attention_seed)``)."""
    return attention_factory(config_name, **overrides)(spec, rngs=model_rngs(seed, attention_seed))


def task_attention_config(cfg: DictConfig) -> DictConfig:
    """``cfg.attention`` with the task's settings for that attention merged in
    (``task.attention_overrides.<attention name>``, e.g. MRA's ``patch_order`` on images)."""
    overrides = (cfg.task.get("attention_overrides") or {}).get(cfg.attention.name)
    return OmegaConf.merge(cfg.attention, overrides) if overrides else cfg.attention


def build_positional_bias(cfg: DictConfig):
    """The positional-bias add-on -> (name, factory, kwargs, _target_); Nones when there is none.

    It comes from ``+positional_bias=<name>`` on the command line or from a registered combination
    whose attention YAML names one (``positional_bias: fastrpb``); not both.
    """
    from_attention = cfg.attention.get("positional_bias")
    if cfg.get("positional_bias") is not None:
        if from_attention:
            raise ConfigError(f"attention '{cfg.attention.name}' already includes positional_bias="
                              f"{from_attention}; drop +positional_bias or pick the plain attention")
        return (*build_attention(cfg.positional_bias, kind="positional_bias"), cfg.positional_bias.get("_target_"))
    if from_attention:
        path = POSITIONAL_BIAS_CONFIGS / f"{from_attention}.yaml"
        if not path.exists():
            raise ConfigError(f"attention.positional_bias={from_attention!r}: no config {path}")
        config = OmegaConf.load(path)
        return (*build_attention(config, kind="positional_bias"), config.get("_target_"))
    return None, None, None, None


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
                     rngs=model_rngs(seed))


def build_model_and_optimizer(cfg: DictConfig, vocab_size: int, attention_factory, positional_bias_factory=None):
    """The task's model and its optimizer (``optimizer.*`` over ``train.steps``) -> (model,
    ``nnx.Optimizer`` over its parameters, learning-rate schedule)."""
    model = build_model(cfg, vocab_size, attention_factory, positional_bias_factory)
    tx, learning_rate = build_optimizer(cfg.optimizer, cfg.train.steps)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param), learning_rate


def build_run(cfg: DictConfig, vocab_size: int):
    """Everything a run trains, from its resolved config alone: the task's attention and positional
    bias, the model and its optimizer -> (model, optimizer, learning-rate schedule)."""
    _, attention_factory, _ = build_attention(task_attention_config(cfg))
    _, bias_factory, _, _ = build_positional_bias(cfg)
    return build_model_and_optimizer(cfg, vocab_size, attention_factory, bias_factory)
