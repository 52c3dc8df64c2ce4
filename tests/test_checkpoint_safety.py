"""A checkpoint directory is trained into by one process, on one dataset, and restores only the bytes it saved."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lra.checkpointing import CheckpointError, RunCheckpoints
from tests.test_checkpointing import _leaves, _saved, _shifted, _states

DATA = {"cache": "listops-aaaa", "sha256": "1" * 64}


def _open(directory, data=DATA, resume="auto"):
    return RunCheckpoints(directory, {"model.width": 3}, every_steps=1, keep=2, resume=resume, data=data).open()


def test_a_second_launch_into_a_busy_directory_is_refused_naming_the_holder(tmp_path):
    first = _open(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"ck is in use by pid \d+ on .* since .*already training"):
        _open(tmp_path / "ck")
    # another process is refused too (flock is per open file, so this holds across processes)
    probe = ("import sys; from lra.checkpointing import RunCheckpoints, CheckpointError\n"
             f"try: RunCheckpoints({str(tmp_path / 'ck')!r}, {{}}, every_steps=1, keep=1).open()\n"
             "except CheckpointError as e: print(e); sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert other.returncode == 3 and "in use by pid" in other.stdout
    first.close()
    again = _open(tmp_path / "ck")  # released on close
    again.close()


def test_a_failed_open_releases_the_lock(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "mine.txt").write_text("not a checkpoint")
    for _ in range(2):  # the second attempt gets the same error, not "in use"
        with pytest.raises(CheckpointError, match="not a checkpoint directory"):
            _open(tmp_path / "ck")


def test_resuming_on_different_data_is_refused(tmp_path):
    checkpoints = _open(tmp_path / "ck")
    model_state, optimizer_state = _states()
    checkpoints.save(1, model_state, optimizer_state, None, {"best": {}, "history": []})
    checkpoints.close()
    assert json.loads((tmp_path / "ck" / "run.json").read_text())["data"] == DATA
    rebuilt = {"cache": "listops-aaaa", "sha256": "2" * 64}
    with pytest.raises(CheckpointError, match=r"trained on other data: cache 'listops-aaaa' \(content sha256 "
                                              r"1111111111111111.*this run's data is .*2222222222222222"):
        _open(tmp_path / "ck", data=rebuilt)
    same = _open(tmp_path / "ck")  # the same data resumes
    assert same.latest_step == 1
    same.close()
    fresh = _open(tmp_path / "ck", data=rebuilt, resume="never")
    assert fresh.latest_step is None
    fresh.close()


def test_changed_checkpoint_bytes_fall_back_to_the_previous_step(tmp_path, caplog):
    model_state, _ = _saved(tmp_path / "ck", steps=(1, 2))
    _saved(tmp_path / "other", steps=(1, 2, 3))   # same shapes, other values; restores without error
    shutil.rmtree(tmp_path / "ck" / "2" / "state")
    shutil.copytree(tmp_path / "other" / "3" / "state", tmp_path / "ck" / "2" / "state")
    checkpoints = _open(tmp_path / "ck", data=None)
    with caplog.at_level(logging.WARNING, logger="lra.checkpointing"):
        step, model, _, _, _ = checkpoints.restore(*_states())
    assert step == 1
    for a, b in zip(_leaves(model), _leaves(_shifted(model_state, 1))):
        np.testing.assert_array_equal(a, b)
    assert "ck/2" in caplog.text and "saved as" in caplog.text and "resuming from checkpoint step 1" in caplog.text
    # with no intact step left, the restore fails naming them all
    shutil.rmtree(tmp_path / "ck" / "1" / "state")
    shutil.copytree(tmp_path / "other" / "2" / "state", tmp_path / "ck" / "1" / "state")
    with pytest.raises(CheckpointError, match=r"no checkpoint step .* is usable.*ck/2.*ck/1"):
        checkpoints.restore(*_states())
    checkpoints.close()


def test_a_finished_record_that_is_not_an_object_names_its_file(tmp_path):
    checkpoints = _open(tmp_path / "ck")
    (tmp_path / "ck" / "result.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"ck/result\.json holds a JSON list, not a result record"):
        checkpoints.finished_record  # noqa: B018
    checkpoints.close()


def test_a_holder_dropped_without_close_in_this_process_does_not_block(tmp_path):
    class Cycle:
        pass

    leaked = Cycle()
    leaked.me, leaked.checkpoints = leaked, _open(tmp_path / "ck")  # freed only by the garbage collector
    del leaked
    again = _open(tmp_path / "ck")
    again.close()
