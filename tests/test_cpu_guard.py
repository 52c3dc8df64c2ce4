"""A full protocol on a CPU stops before training with a time estimate; operational keys (the CPU
guard, accumulation, micro-batches) do not change a run's fingerprint but are recorded."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import lra.train
from lra.build import task_attention_config
from lra.cpu_guard import CpuRunRefused, cpu_guard, human_duration
from lra.results import read_records
from lra.run_identity import run_identity
from lra.train import run


def test_the_guard_applies_only_to_full_protocols_on_a_cpu(compose):
    assert cpu_guard(compose(), "x", backend="cpu") is None  # smoke is cpu_sized
    official = compose("protocol.cpu_sized=false", "protocol.name=lra_official")
    assert cpu_guard(official, "x", backend="gpu") is None and cpu_guard(official, "x", backend="tpu") is None
    assert cpu_guard(compose("protocol.cpu_sized=false", "allow_cpu=true"), "x", backend="cpu") is None
    guard = cpu_guard(official, "listops/softmax seed 0", backend="cpu")
    with pytest.raises(CpuRunRefused) as refused:
        guard(34.0, 5000)
    message = str(refused.value)
    for part in ("listops/softmax seed 0", "'lra_official'", "34.00 s per train step", "5000 remaining steps",
                 "about 47.2 h", "make install CUDA=12|13", "protocol=smoke", "allow_cpu=true"):
        assert part in message, part
    assert [human_duration(s) for s in (30, 600, 7200, 3 * 86400)] == ["30 s", "10 min", "2.0 h", "3.0 days"]


def test_a_refused_run_writes_no_record_and_main_exits_with_the_message(compose, tmp_path, monkeypatch):
    cfg = compose("protocol.cpu_sized=false")
    with pytest.raises(CpuRunRefused, match=r"6 remaining steps.*allow_cpu=true"):
        run(cfg)
    assert read_records(tmp_path / "results") == []  # nothing ran: no failed record

    def refuse(cfg):
        raise CpuRunRefused("listops/softmax seed 0: protocol 'lra_official' is not sized for a CPU")

    monkeypatch.setattr(lra.train, "run", refuse)
    with pytest.raises(SystemExit) as exited:
        lra.train.main.__wrapped__(cfg)
    assert str(exited.value).startswith("lra: listops/softmax seed 0: protocol 'lra_official'")


def _fingerprint(cfg) -> str:
    return run_identity(OmegaConf.to_container(cfg, resolve=True),
                        OmegaConf.to_container(task_attention_config(cfg), resolve=True)).fingerprint


def test_operational_keys_keep_the_fingerprint_and_are_recorded(compose):
    plain = compose()
    operational = compose("train.micro_batch=4", "allow_cpu=true", "train.memory_margin=0.2",
                          "train.memory_limit_gb=40", "model.remat=block", "protocol.cpu_sized=false")
    assert _fingerprint(plain) == _fingerprint(operational)
    assert _fingerprint(plain) != _fingerprint(compose("train.batch_size=4"))  # a real setting does change it
    record = run(compose("train.micro_batch=4", "protocol.cpu_sized=false", "allow_cpu=true"))
    assert record["status"] == "ok" and record["fingerprint"] == _fingerprint(plain)
    assert (record["grad_accum_steps"], record["micro_batch_size"], record["micro_batch_auto"]) == (2, 4, False)
    assert record["batch_size"] == 8  # the global batch is unchanged
