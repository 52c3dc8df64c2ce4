"""Reproduction of published tables (lra.reproduce) on synthetic records: the mapping, what is
missing, what would run, the comparison (difference, within-spread) and the runs it launches."""

from __future__ import annotations

import itertools
import json
import subprocess

import pytest

import lra.reproduce as reproduce_module
from lra.reproduce import load_table, load_tables, reproduce
from lra.registry import registered_attentions
from lra.results import read_records, write_record
from tests.test_results import make_record


RUN_NUMBERS = itertools.count()


def _add(results_dir, attention, task, seed, accuracy, **extra):
    run_id = f"{next(RUN_NUMBERS):03d}_{task}_{attention}_s{seed}"  # in the order written: later = newer
    record = make_record(run_id, task=task, attention=attention, seed=seed, final=accuracy / 100,
                         best_val=0.0, **extra)
    write_record(results_dir, record)


@pytest.fixture
def only_listops(monkeypatch):
    monkeypatch.setattr(reproduce_module, "available_tasks", lambda protocol: {"listops"})


def _cells(frame):
    return {(r["attention"], r["task"]): r for r in frame.to_dict("records")}


def test_every_mapped_table_loads_and_maps_to_registered_attentions():
    names = {info["name"] for info in registered_attentions().values()}
    for table in load_tables():  # every mapped table
        spec, published = load_table(table)
        mapped = {a for a in spec["models"].values() if a}
        assert mapped <= names, mapped - names
        assert set(spec["tasks"]) <= set(published.columns)
        assert published["source"].str.len().min() > 0  # every row carries its citation
    assert load_tables()["skyformer_table1"]["protocol"] == "pytorch_lineage"
    with pytest.raises(KeyError, match="no table 'nope'"):
        load_table("nope")


def test_comparison_difference_and_spread(tmp_path, only_listops):
    official = tmp_path / "lra_official"
    for seed, accuracy in enumerate((36.0, 37.0, 36.5)):  # mean 36.5, std 0.5; published 36.37
        _add(official, "softmax", "listops", seed, accuracy)
    for seed, accuracy in enumerate((30.0, 31.0, 32.0)):  # mean 31, std 1; published 16.13
        _add(official, "linear", "listops", seed, accuracy)
    _add(official, "performer", "listops", 0, 18.5)  # one seed of three; published 18.01
    _add(official, "softmax", "listops", 3, 5.0, status="diverged")  # never counted
    _add(tmp_path / "pytorch_lineage", "softmax", "listops", 0, 90.0, protocol="pytorch_lineage")

    frame, commands = reproduce("lra_table1", tmp_path, reuse_only=True, echo=lambda *a: None)
    cells = _cells(frame)
    softmax = cells[("softmax", "listops")]
    assert softmax["published"] == "36.37" and softmax["measured"] == "36.50 ± 0.50 (n=3)"
    assert softmax["difference"] == "+0.13" and softmax["within spread"] == "yes"
    linear = cells[("linear", "listops")]
    assert linear["difference"] == f"{31.0 - 16.13:+.2f}" and linear["within spread"] == "no"
    performer = cells[("performer", "listops")]
    assert performer["within spread"] == "n/a (1 seed)" and performer["status"] == "measured (fewer seeds)"
    assert cells[("softmax", "text")]["status"] == "task not available"
    assert cells[("softmax", "pathx")]["published"] == "FAIL" and cells[("softmax", "pathx")]["difference"] == "—"
    assert cells[("softmax", "avg")]["status"].startswith("partial")
    assert cells[("local", "listops")]["status"] == "missing"  # mapped, no record yet (unmapped rows: the toy table)
    # what would run, through the sweep entry point: every seed of the mapped attentions without records,
    # and the missing seeds of performer
    mapped = set(load_table("lra_table1")[0]["models"].values())
    never_run = sorted(mapped - {None, "softmax", "linear", "performer"})
    assert [c[3:] for c in commands] == [
        ["--multirun", "task=listops", "protocol=lra_official", f"attention={','.join(never_run)}", "seed=0,1,2",
         "logger.wandb.job_type=reproduce", f"paths.results_dir={official}"]] * bool(never_run) + [
        ["--multirun", "task=listops", "protocol=lra_official", "attention=performer", "seed=1,2",
         "logger.wandb.job_type=reproduce", f"paths.results_dir={official}"]]
    written = (official / "reproduce_lra_table1.md").read_text()
    assert "| Transformer | softmax | listops | 36.37 | 36.50 ± 0.50 (n=3) | +0.13 | yes | measured |" in written
    assert (official / "reproduce_lra_table1.csv").exists()

    # a wider band changes the verdict; a dry run writes nothing
    (official / "reproduce_lra_table1.md").unlink()
    frame, _ = reproduce("lra_table1", tmp_path, dry_run=True, spread=20.0, echo=lambda *a: None)
    assert _cells(frame)[("linear", "listops")]["within spread"] == "yes"
    assert not (official / "reproduce_lra_table1.md").exists()


def test_average_and_runs_launched_for_missing_cells(tmp_path, monkeypatch):
    (tmp_path / "paper.csv").write_text("model,listops,text,avg,source,notes\n"
                                        "Transformer,40.00,60.00,50.00,Some paper Table 1,\n"
                                        "Unbuilt,1,2,1.5,Some paper Table 1,\n")
    (tmp_path / "tables.yaml").write_text(json.dumps({"toy": {
        "file": "paper.csv", "protocol": "lra_official", "seeds": 2, "match": {"steps": 100},
        "overrides": ["train.steps=100"], "task_overrides": {"text": ["task.x=1"]},
        "tasks": {"listops": "listops", "text": "text"}, "average_over": ["listops", "text"],
        "models": {"Transformer": "softmax", "Unbuilt": None}}}))
    monkeypatch.setattr(reproduce_module, "available_tasks", lambda protocol: {"listops", "text"})
    results = tmp_path / "results" / "lra_official"
    listops, text = ["train.steps=100"], ["task.x=1", "train.steps=100"]  # what the table's runs set
    _add(results, "softmax", "listops", 0, 40.0, steps=100, settings_changed=listops)
    _add(results, "softmax", "listops", 1, 42.0, steps=100, settings_changed=listops)
    _add(results, "softmax", "text", 0, 59.0, steps=999, settings_changed=["train.steps=999"])  # not this table's
    _add(results, "softmax", "text", 1, 58.0, steps=100, settings_changed=["train.steps=100"])  # lacks task.x=1

    launched = []

    def fake_run(command, **kwargs):  # stands in for the sweep: records the seeds it was asked for
        launched.append(command)
        task = next(a for a in command if a.startswith("task=")).split("=")[1]
        for seed in next(a for a in command if a.startswith("seed=")).split("=")[1].split(","):
            _add(results, "softmax", task, int(seed), 60.0 + int(seed), steps=100, settings_changed=text)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(reproduce_module.subprocess, "run", fake_run)
    frame, commands = reproduce("toy", tmp_path / "results", tables_file=tmp_path / "tables.yaml",
                                echo=lambda *a: None)
    assert len(launched) == 1 and launched[0][4:] == ["task=text", "protocol=lra_official", "attention=softmax",
                                                        "seed=0,1", "train.steps=100", "task.x=1", "logger.wandb.job_type=reproduce",
                                                        f"paths.results_dir={results}"]
    cells = _cells(frame)
    assert cells[("softmax", "text")]["measured"] == "60.50 ± 0.71 (n=2)"
    # per-seed averages (40+60)/2 = 50 and (42+61)/2 = 51.5 -> 50.75 ± 1.06
    assert cells[("softmax", "avg")]["measured"] == "50.75 ± 1.06 (n=2)"
    assert cells[("softmax", "avg")]["difference"] == "+0.75" and cells[("softmax", "avg")]["within spread"] == "yes"
    assert cells[("—", "avg")]["status"] == "not implemented"
    assert len([r for r in read_records(results) if r["task"] == "text"]) == 4


def test_dry_run_plans_runs_steps_device_time_data_and_commands(tmp_path, monkeypatch):
    """--dry-run: model x task table, runs and steps, device time from records then bench figures,
    missing datasets with their make data command, pasteable commands; FAIL cells skipped unless asked."""
    import shlex

    from lra.bench.report import device_slug
    from lra.metrics import device_name

    (tmp_path / "paper.csv").write_text("model,listops,pathx,source,notes\n"
                                        "Transformer,36.00,FAIL,Some paper Table 1,\n"
                                        "Linear,16.00,50.00,Some paper Table 1,\n"
                                        "Unbuilt,1,2,Some paper Table 1,\n")
    (tmp_path / "tables.yaml").write_text(json.dumps({"toy": {
        "file": "paper.csv", "protocol": "lra_official", "seeds": 2, "overrides": ["train.steps=100"],
        "tasks": {"listops": "listops", "pathx": "pathx"},
        "models": {"Transformer": "softmax", "Linear": "linear", "Unbuilt": None}}}))
    monkeypatch.setattr(reproduce_module, "available_tasks", lambda protocol: {"listops", "pathx"})
    results = tmp_path / "results" / "lra_official"
    _add(results, "softmax", "listops", 0, 36.0, steps=100, settings_changed=["train.steps=100"],
         step_time=0.5, device=device_name())  # recorded here: 0.5 s per step
    bench = tmp_path / "bench" / device_slug() / "encoder"
    bench.mkdir(parents=True)
    (bench / "efficiency.csv").write_text(  # linear at ListOps' length: 100 ms at batch 2 -> 1.6 s at batch 32
        "attention,mode,pass,batch,length,status,time_median_ms\n"
        "linear,encoder,forward_backward,2,2000,ok,100\nlinear,encoder,forward,2,2000,ok,1\n")
    monkeypatch.setattr(reproduce_module.subprocess, "run", lambda *a, **k: pytest.fail("a dry run runs nothing"))
    lines = []
    data = tmp_path / "data"
    _, commands = reproduce("toy", tmp_path / "results", tables_file=tmp_path / "tables.yaml", dry_run=True,
                            echo=lines.append, bench_root=tmp_path / "bench",
                            extra_overrides=[f"paths.data_dir={data}"])
    text = "\n".join(lines)
    assert "| Transformer | softmax | run 1, reuse 1 | paper: FAIL, skipped |" in text
    assert "| Linear | linear | run 2 | run 2 |" in text
    assert "| Unbuilt | — | not implemented | not implemented |" in text
    assert "5 runs, 500 training steps in total" in text  # train.steps=100 from the table's overrides
    # softmax: 1 run x 100 steps x 0.5 s; linear listops: 2 x 100 x 1.6 s; linear pathx: no figures
    assert (f"device time: about {(50 + 320) / 3600:.1f} device-hours of training steps on {device_name()} "
            "(1 cell(s) from recorded step times, 1 cell(s) from bench step times; without pathx/linear (no figures)"
            ) in text
    assert f"  listops: not prepared under {data} (generated offline on first use): " \
           "make data TASK=listops PRESET=lra_official" in lines
    assert any(line.startswith("  pathx: not prepared") for line in lines)
    pasted = lines[lines.index("commands (paste into a shell):") + 1:]
    assert [shlex.split(line) for line in pasted] == commands and len(commands) == 3  # listops x2 seed sets, pathx
    assert all("attention=softmax" not in c or "task=pathx" not in c for c in commands)
    # asked for, the FAIL cell is planned too
    lines.clear()
    _, commands = reproduce("toy", tmp_path / "results", tables_file=tmp_path / "tables.yaml", dry_run=True,
                            echo=lines.append, bench_root=tmp_path / "bench", include_failed=True,
                            extra_overrides=[f"paths.data_dir={data}"])
    assert "| Transformer | softmax | run 1, reuse 1 | run 2 |" in "\n".join(lines)
    assert any("task=pathx" in c and "attention=linear,softmax" in c for c in commands)
    # no figures at all: it says it cannot estimate
    lines.clear()
    reproduce("toy", tmp_path / "empty", tables_file=tmp_path / "tables.yaml", dry_run=True, echo=lines.append,
              bench_root=tmp_path / "no-bench", extra_overrides=[f"paths.data_dir={data}"])
    assert any(line.startswith("device time: cannot estimate on ") for line in lines), lines
