"""Through lra.train.run: a rerun with checkpoint.resume=never replaces the seed's record, and a second
launch of a command that is still training is refused without a record."""

from __future__ import annotations

import pytest

from lra.checkpointing import CheckpointBusy, DirectoryLock
from lra.results import RECORDS, REPLACED, read_records
from lra.train import run


@pytest.mark.slow
def test_resume_never_replaces_the_record_of_the_seed(compose, tmp_path):
    first = run(compose())
    second = run(compose("checkpoint.resume=never"))
    assert second["run_id"] != first["run_id"] and second["fingerprint"] == first["fingerprint"]
    assert [r["run_id"] for r in read_records(tmp_path / "results")] == [second["run_id"]]
    assert (tmp_path / "results" / RECORDS / REPLACED / f"{first['run_id']}.json").is_file()


def test_a_second_launch_while_the_first_trains_is_refused_and_records_nothing(compose, tmp_path):
    cfg = compose()
    holder = DirectoryLock(tmp_path / "run" / "checkpoints")  # the first launch, still training
    holder.acquire()
    try:
        with pytest.raises(CheckpointBusy, match=r"checkpoints is in use by pid \d+"):
            run(cfg)
    finally:
        holder.release()
    assert read_records(tmp_path / "results") == []


@pytest.mark.slow
def test_a_run_records_its_data_in_the_checkpoint_and_refuses_other_data(compose, tmp_path):
    import json

    from lra.checkpointing import CheckpointError

    first = run(compose())
    run_file = tmp_path / "run" / "checkpoints" / "run.json"
    info = json.loads(run_file.read_text())
    assert info["data"] == {"cache": first["data_cache"], "sha256": first["data_sha256"]}
    info["data"]["sha256"] = "0" * 64  # as if the cache had been rebuilt with other content since
    run_file.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="trained on other data"):
        run(compose())
