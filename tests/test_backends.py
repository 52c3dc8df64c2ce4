"""Attentions declare the backends they run on (``requires: [gpu]``); sweeps skip them elsewhere
and say why, on a TPU as on a CPU."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lra.build import ConfigError, build_attention
from lra.registry import registered_attentions, required_backends, runnable_attentions, runs_on


def test_requires_is_a_list_of_backends():
    assert required_backends(None, "x") is None
    assert required_backends(["gpu"], "x") == ("gpu",) and required_backends("gpu", "x") == ("gpu",)
    assert required_backends(OmegaConf.create(["gpu", "tpu"]), "x") == ("gpu", "tpu")
    for bad in (["cuda"], [], "GPU", {"gpu": True}):
        with pytest.raises(ValueError, match="x: 'requires' must list backends among cpu, gpu, tpu"):
            required_backends(bad, "x")
    assert runs_on(None, "tpu") and runs_on(("gpu",), "gpu") and not runs_on(("gpu",), "tpu")


@pytest.mark.parametrize("backend", ["cpu", "tpu"])
def test_gpu_only_attentions_are_skipped_off_gpu(backend):
    runnable, skipped = runnable_attentions(backend)
    assert registered_attentions()["softmax_flash"]["requires"] == ("gpu",)
    assert "softmax_flash" in skipped and "softmax_flash" not in runnable and "softmax" in runnable
    assert "softmax_flash" in runnable_attentions("gpu")[0]


def test_building_a_gpu_only_attention_here_names_the_backend():
    config = OmegaConf.create({"name": "flash", "requires": ["gpu"], "_target_": "attention.softmax.SoftmaxAttention",
                               "_partial_": True})
    with pytest.raises(ConfigError, match=r"'flash' runs on gpu \(attention.requires\); JAX's backend here is cpu"):
        build_attention(config)
    config.requires = ["tpux"]
    with pytest.raises(ConfigError, match="must list backends"):
        build_attention(config)
    config.requires = ["cpu", "gpu"]
    assert build_attention(config)[0] == "flash"
