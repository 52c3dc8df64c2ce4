"""W&B never costs a run: an unreachable server means offline logging, a W&B error means no W&B."""

from __future__ import annotations

import logging
import socket
import sys
import types

import pytest

from lra import run_logging
from lra.run_logging import CsvMetricsWriter, MetricSinks, WandbSink, wandb_server_reachable


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again on leaving: connections are refused


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = []

    def init(mode, **kwargs):
        calls.append(mode)
        if mode == "online":
            raise RuntimeError("Network error (ConnectionError), entering retry loop")
        return types.SimpleNamespace(log=lambda *a, **k: None, summary={}, finish=lambda: None)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    return calls


def test_an_unreachable_server_is_detected_in_seconds_and_the_run_logs_offline(fake_wandb, monkeypatch, tmp_path,
                                                                                  caplog):
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    assert "cannot connect to 127.0.0.1" in wandb_server_reachable(timeout=2)
    with caplog.at_level(logging.WARNING, logger="lra.run_logging"):
        sink = WandbSink(project="p", run_dir=tmp_path, name="n", config={})
    assert sink.mode == "offline" and fake_wandb == ["offline"]
    assert "logging offline instead" in caplog.text and "wandb sync" in caplog.text


def test_an_online_start_that_fails_falls_back_to_offline(fake_wandb, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(run_logging, "wandb_server_reachable", lambda timeout=5.0: None)  # looks reachable
    with caplog.at_level(logging.WARNING, logger="lra.run_logging"):
        sink = WandbSink(project="p", run_dir=tmp_path, name="n", config={})
    assert sink.mode == "offline" and fake_wandb == ["online", "offline"]
    assert "online start failed (RuntimeError: Network error" in caplog.text


def test_a_wandb_error_while_logging_keeps_the_csv_going(tmp_path, caplog):
    class Broken:
        def log(self, *args):
            raise ConnectionError("connection reset")

        def summary(self, record):
            raise AssertionError("never called once W&B is off")

        def finish(self):
            raise AssertionError("never called once W&B is off")

    sinks = MetricSinks(CsvMetricsWriter(tmp_path), Broken())
    with caplog.at_level(logging.WARNING, logger="lra.run_logging"):
        sinks.log(1, "train", {"loss": 1.0})
        sinks.log(2, "train", {"loss": 0.5})
        sinks.close({"status": "ok"})
    assert (tmp_path / "metrics.csv").read_text().count("train") == 2
    assert "W&B is off for the rest of this run" in caplog.text
