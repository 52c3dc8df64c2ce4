"""Every protocol x task config composes, says what it needs, and matches its published source."""

from __future__ import annotations

import pytest
import yaml
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, compose_config

PROTOCOLS = sorted(p.stem for p in (CONFIG_DIR / "protocol").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("task", TASKS)
def test_every_protocol_task_pair_composes_completely(protocol, task):
    cfg = compose_config(f"protocol={protocol}", f"task={task}")
    assert cfg.protocol.name == protocol and cfg.task.name == task
    for section in ("model", "optimizer", "train"):
        assert section in cfg, section
    for key in ("emb_dim", "num_heads", "qkv_dim", "mlp_dim", "num_layers", "pooling", "pos_emb", "dtype"):
        assert cfg.model[key] is not None, key
    assert cfg.train.steps > 0 and 0 < cfg.train.log_every <= cfg.train.eval_every <= cfg.train.steps
    assert cfg.paths.results_dir.endswith(protocol)
    assert OmegaConf.missing_keys(cfg) == set(), "a ??? of the protocol's _base.yaml left unset"


# What configs/hparams/<protocol>/_base.yaml gives every task of the protocol (the published sources'
# shared settings), with the tasks that set their own value.
SHARED = {
    "lra_official": {"model.qkv_bias": False, "model.embedding_init_std": 1.0, "optimizer.b1": 0.9,
                     "optimizer.b2": 0.98, "optimizer.eps": 1e-9, "optimizer.cycle_beta1": False,
                     "optimizer.schedule.kind": "factors", "optimizer.grad_clip.kind": ("none", {"pathx": "global_norm"}),
                     "train.train_limit": None, "train.eval_limit": None},
    "pytorch_lineage": {"model.emb_dim": 64, "model.num_heads": 2, "model.qkv_dim": 64, "model.mlp_dim": 128,
                        "model.num_layers": 2, "model.pos_emb": "learned", "model.pooling": "mean",
                        "model.qkv_bias": True, "model.embedding_init_std": 0.02, "optimizer.b2": 0.999,
                        "optimizer.eps": 1e-6, "optimizer.weight_decay": 0.0, "optimizer.cycle_beta1": True,
                        "optimizer.schedule.kind": "one_cycle", "optimizer.schedule.max_learning_rate": 1e-4,
                        "optimizer.grad_clip.kind": "none"},
    "smoke": {"model.emb_dim": (32, {"pathx": 16}), "model.num_layers": (2, {"pathfinder": 1, "pathx": 1}),
              "optimizer.weight_decay": (0.1, {"pathfinder": 0.0, "pathx": 0.0}),
              "optimizer.schedule.warmup_steps": (20, {"pathfinder": 3, "pathx": 1}),
              "train.eval_batch_size": (64, {"pathfinder": 16, "pathx": 1}),
              "train.overhead_pairs": (3, {"image": 1, "pathfinder": 1, "pathx": 0})},
}


@pytest.mark.parametrize("protocol", sorted(SHARED))
@pytest.mark.parametrize("task", TASKS)
def test_a_protocols_base_reaches_every_task_unless_the_task_sets_its_own(protocol, task):
    cfg = compose_config(f"protocol={protocol}", f"task={task}")
    for key, want in SHARED[protocol].items():
        value, exceptions = want if isinstance(want, tuple) else (want, {})
        assert OmegaConf.select(cfg, key) == exceptions.get(task, value), (protocol, task, key)
    assert (cfg.train.prefetch, cfg.train.grad_accum_steps) == (2, 1)


def test_harness_knobs_live_in_config_yaml_and_hparams_files_set_only_what_differs():
    root = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    assert (root["train"]["overhead_pairs"], root["train"]["prefetch"]) == (3, 2)
    for path in sorted((CONFIG_DIR / "hparams").glob("*/*.yaml")):
        train = (yaml.safe_load(path.read_text()) or {}).get("train", {})
        assert "prefetch" not in train and train.get("overhead_pairs", 0) != 3, path
        if path.stem != "_base":
            assert yaml.safe_load(path.read_text())["defaults"][0] == f"{path.parent.name}/_base", path


def test_official_listops_matches_the_lra_config():
    cfg = compose_config("protocol=lra_official", "task=listops")
    model, optimizer, train = cfg.model, cfg.optimizer, cfg.train
    assert (model.emb_dim, model.num_heads, model.qkv_dim, model.mlp_dim, model.num_layers) == (512, 8, 512, 1024, 4)
    assert (model.pooling, model.pos_emb, model.qkv_bias) == ("cls", "sinusoidal", False)
    assert (optimizer.b1, optimizer.b2, optimizer.eps, optimizer.weight_decay) == (0.9, 0.98, 1e-9, 0.1)
    assert optimizer.schedule.factors == "constant*linear_warmup*rsqrt_decay"
    assert (optimizer.schedule.base_learning_rate, optimizer.schedule.warmup_steps) == (0.05, 1000)
    assert (train.steps, train.batch_size, cfg.task.max_length) == (5000, 32, 2000)


def test_pytorch_lineage_listops_matches_the_nystromformer_config():
    cfg = compose_config("protocol=pytorch_lineage", "task=listops")
    assert (cfg.model.emb_dim, cfg.model.num_heads, cfg.model.qkv_dim, cfg.model.mlp_dim) == (64, 2, 64, 128)
    assert (cfg.model.num_layers, cfg.model.pos_emb, cfg.model.pooling) == (2, "learned", "mean")
    assert cfg.optimizer.schedule.kind == "one_cycle" and cfg.optimizer.schedule.max_learning_rate == 1e-4
    assert cfg.optimizer.cycle_beta1 is True and cfg.quirks.mean_pool_includes_padding is True


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(MissingConfigException, match="protocol"):
        compose_config("protocol=no_such_protocol")
