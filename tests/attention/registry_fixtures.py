"""Build any registered attention from its YAML, the way the encoder does."""

from __future__ import annotations

from flax import nnx
from omegaconf import OmegaConf

from attention.base import AttentionSpec
from lra.registry import load_attention_config, runnable_attentions
from lra.build import build_attention

CPU_ATTENTIONS = runnable_attentions("cpu")[0]


def make_attention(config_name: str, spec: AttentionSpec, seed: int = 0, **overrides):
    config = load_attention_config(config_name)
    config = OmegaConf.merge(config, overrides)
    _, factory, _ = build_attention(config)
    return factory(spec, rngs=nnx.Rngs(params=seed, dropout=seed + 1, attention=seed + 2))
