"""Every protocol x task config composes, says what it needs, and matches its published source."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from tests.conftest import CONFIG_DIR

PROTOCOLS = sorted(p.stem for p in (CONFIG_DIR / "protocol").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("task", TASKS)
def test_every_protocol_task_pair_composes_completely(protocol, task):
    cfg = _compose(f"protocol={protocol}", f"task={task}")
    assert cfg.protocol.name == protocol and cfg.task.name == task
    for section in ("model", "optimizer", "train"):
        assert section in cfg, section
    for key in ("emb_dim", "num_heads", "qkv_dim", "mlp_dim", "num_layers", "pooling", "pos_emb", "dtype"):
        assert cfg.model[key] is not None, key
    assert cfg.train.steps > 0 and 0 < cfg.train.log_every <= cfg.train.eval_every <= cfg.train.steps
    assert cfg.paths.results_dir.endswith(protocol)


def test_official_listops_matches_the_lra_config():
    cfg = _compose("protocol=lra_official", "task=listops")
    model, optimizer, train = cfg.model, cfg.optimizer, cfg.train
    assert (model.emb_dim, model.num_heads, model.qkv_dim, model.mlp_dim, model.num_layers) == (512, 8, 512, 1024, 4)
    assert (model.pooling, model.pos_emb, model.qkv_bias) == ("cls", "sinusoidal", False)
    assert (optimizer.b1, optimizer.b2, optimizer.eps, optimizer.weight_decay) == (0.9, 0.98, 1e-9, 0.1)
    assert optimizer.schedule.factors == "constant*linear_warmup*rsqrt_decay"
    assert (optimizer.schedule.base_learning_rate, optimizer.schedule.warmup_steps) == (0.05, 1000)
    assert (train.steps, train.batch_size, cfg.task.max_length) == (5000, 32, 2000)


def test_pytorch_lineage_listops_matches_the_nystromformer_config():
    cfg = _compose("protocol=pytorch_lineage", "task=listops")
    assert (cfg.model.emb_dim, cfg.model.num_heads, cfg.model.qkv_dim, cfg.model.mlp_dim) == (64, 2, 64, 128)
    assert (cfg.model.num_layers, cfg.model.pos_emb, cfg.model.pooling) == (2, "learned", "mean")
    assert cfg.optimizer.schedule.kind == "one_cycle" and cfg.optimizer.schedule.max_learning_rate == 1e-4
    assert cfg.optimizer.cycle_beta1 is True and cfg.quirks.mean_pool_includes_padding is True


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(MissingConfigException, match="protocol"):
        _compose("protocol=no_such_protocol")
