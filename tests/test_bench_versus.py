"""lra.bench.versus: the side-by-side driver, with a stand-in for the PyTorch worker (no PyTorch here).

The harness side is real: a worker process compiles the training step at a tiny shape and is timed.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from lra.bench import versus

FAKE_WORKER = Path(__file__).parent / "fixtures" / "fake_pytorch_step.py"


@pytest.fixture
def authors_code(tmp_path):
    code = tmp_path / "src"
    (code / "models").mkdir(parents=True)
    (code / "config.py").write_text("Config = {}\n")
    (code / "models" / "model_LRA.py").write_text("")
    return code


def test_side_by_side_run_writes_table_plot_and_provenance(tmp_path, authors_code):
    directory = versus.main([
        "--authors-code", str(authors_code), "--torch-python", sys.executable, "--torch-worker", str(FAKE_WORKER),
        "--attention", "softmax", "--rounds", "3", "--warmup", "1", "--cores", "",
        "--output-root", str(tmp_path / "out"), "--name", "run",
        "task.max_length=32", "train.batch_size=2"])
    rows = list(csv.DictReader((directory / "versus.csv").open()))
    assert [(row["attention"], row["side"]) for row in rows] == [
        ("softmax", "lra"), ("softmax", "pytorch_checkpointed"), ("softmax", "pytorch")]
    assert all(row["batch"] == "2" and row["length"] == "32" and row["rounds"] == "3" for row in rows)
    by_side = {row["side"]: row for row in rows}
    harness = float(by_side["lra"]["step_median_ms"])
    assert harness > 0 and float(by_side["lra"]["speedup"]) == pytest.approx(1.0)
    for side, sleep_ms in (("pytorch", 5), ("pytorch_checkpointed", 10)):
        median = float(by_side[side]["step_median_ms"])
        assert median >= sleep_ms
        assert float(by_side[side]["speedup"]) == pytest.approx(median / harness, rel=1e-4)
    assert int(by_side["lra"]["params"]) > 0 and by_side["pytorch"]["params"] == "1234"
    report = (directory / "versus.md").read_text()
    assert "| softmax | pytorch_checkpointed |" in report and "task.max_length=32 train.batch_size=2" in report
    assert (directory / "versus.png").stat().st_size > 0
    provenance = json.loads((directory / "provenance.json").read_text())
    settings = provenance["settings"]
    assert settings["batch"] == 2 and settings["length"] == 32 and settings["authors_commit"] is None
    assert settings["workers"]["softmax"]["pytorch"]["attention"] == "softmax"  # their attn_type, as mapped
    assert settings["workers"]["softmax"]["lra"]["shape"] == [2, 32]


def test_worker_failure_names_the_side(tmp_path, authors_code):
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit('no torch here')\n")
    with pytest.raises(RuntimeError, match=r"performer \(pytorch\): the worker exited"):
        versus.main(["--authors-code", str(authors_code), "--torch-python", sys.executable,
                     "--torch-worker", str(broken), "--attention", "performer", "--rounds", "1", "--warmup", "0",
                     "--cores", "", "--output-root", str(tmp_path / "out"), "task.max_length=16", "train.batch_size=2"])


@pytest.mark.parametrize("argv, message", [
    (["--torch-python", sys.executable], "--authors-code and --torch-python are required"),
    (["--authors-code", "{missing}", "--torch-python", sys.executable], "expected the Skyformer repository's src/"),
    (["--authors-code", "{code}", "--torch-python", "/no/such/python"], "no such program"),
    (["--authors-code", "{code}", "--torch-python", sys.executable, "--attention", "linear"], "choose from"),
])
def test_bad_arguments_are_named(tmp_path, authors_code, capsys, argv, message):
    argv = [item.format(missing=tmp_path / "nope", code=authors_code) for item in argv]
    with pytest.raises(SystemExit) as stopped:
        versus.parse_args(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_every_setup_maps_to_a_registered_attention():
    from lra.registry import ATTENTION_CONFIGS

    for name, setup in versus.SETUPS.items():
        assert f"attention={name}" in setup.overrides
        assert (ATTENTION_CONFIGS / f"{name}.yaml").is_file()
