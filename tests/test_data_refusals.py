"""Release files that are not what they claim to be are named (file and line), never read silently."""

from __future__ import annotations

import json
import logging

import pytest

from lra.data import listops as L
from lra.data.token_cache import CacheError

HEADER = "Source\tTarget\n"
GOOD = "( ( [MAX 2 9 ] 1 ) )\t9\n"


def _release(folder, train_rows, val_rows=(GOOD,), test_rows=(GOOD,)):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
        (folder / f"basic_{name}.tsv").write_text(HEADER + "".join(rows))
    return folder


def _cfg(folder, **extra):
    return {"name": "listops", "source": "release", "release_dir": str(folder), "tokenizer": "fixed", **extra}


def test_a_few_unknown_tokens_are_counted_and_shown_with_file_and_line(tmp_path, caplog):
    folder = _release(tmp_path / "rel", [GOOD, "( ( [MAXX 2 9 ] 1 ) )\t9\n", GOOD, "( [MIN 77 3 ] )\t3\n"])
    with caplog.at_level(logging.WARNING, logger="lra.data.listops"):
        cache = L.load_listops(_cfg(folder), tmp_path / "c", progress=False)
    assert cache.manifest["unknown_tokens"]["total"] == 2
    assert cache.manifest["unknown_tokens"]["per_split"] == {"train": 2, "val": 0, "test": 0}
    assert f"{folder / 'basic_train.tsv'}:3: '[MAXX'" in caplog.text
    assert f"{folder / 'basic_train.tsv'}:5: '77'" in caplog.text


def test_many_unknown_tokens_refuse_the_build_unless_allowed(tmp_path):
    folder = _release(tmp_path / "rel", [GOOD] + ["( [MAXX 77 3 ] )\t3\n"] * 6)
    with pytest.raises(L.ListOpsFormatError, match=r"(?s)12 token\(s\) not in the 'fixed' vocabulary.*"
                                                   r"basic_train\.tsv:3.*allow_unknown_tokens=true"):
        L.load_listops(_cfg(folder), tmp_path / "c", progress=False)
    assert not any((tmp_path / "c" / "listops").glob("release-*"))  # no cache left behind
    cache = L.load_listops(_cfg(folder, allow_unknown_tokens=True), tmp_path / "c", progress=False)
    assert cache.manifest["unknown_tokens"]["total"] == 12


def test_a_binary_tsv_names_file_and_line(tmp_path):
    folder = _release(tmp_path / "rel", [GOOD, GOOD])
    with open(folder / "basic_train.tsv", "ab") as handle:
        handle.write(b"\xff\xfe\x00garbage\t1\n")
    with pytest.raises(L.ListOpsFormatError, match=r"basic_train\.tsv:4: not UTF-8 text"):
        L.load_listops(_cfg(folder), tmp_path / "c", progress=False)


def test_an_empty_validation_split_is_refused_when_the_data_is_prepared(tmp_path):
    folder = _release(tmp_path / "rel", [GOOD, GOOD], val_rows=())
    with pytest.raises(L.ListOpsFormatError, match=r"basic_val\.tsv: no examples after the header"):
        L.load_listops(_cfg(folder), tmp_path / "c", progress=False)


def test_load_task_refuses_an_empty_split_of_any_cache(tmp_path):
    import numpy as np

    from lra.data.tasks import load_task
    from lra.data.token_cache import write_cache

    cfg = {"name": "listops", "source": "generator", "tokenizer": "fixed", "num_classes": 10,
           "generator": {"num_train": 8, "num_val": 4, "num_test": 4, "min_length": 5, "max_length": 40}}
    cache = load_task(cfg, tmp_path, progress=False)
    directory = cache.directory
    manifest = json.loads((directory / "manifest.json").read_text())
    import shutil

    shutil.rmtree(directory)
    write_cache(directory, {"train": ([np.array([1, 2])], np.array([1])), "val": ([], np.array([], np.int64)),
                            "test": ([np.array([1])], np.array([0]))},
                {k: manifest[k] for k in ("task", "vocab", "source", "params")})
    with pytest.raises(CacheError, match=r"the val split is empty"):
        load_task(cfg, tmp_path, progress=False)


def test_a_different_release_archive_is_extracted_anew(tmp_path, caplog):
    from lra.data.lra_release import ARCHIVE_RECORD, release_root
    from lra.data.listops import write_listops_tsv
    from tests.lra_fixtures import write_release_tar

    def archive(name, label):
        tree = tmp_path / f"tree-{name}"
        (tree / "listops-1000").mkdir(parents=True)
        for split in ("train", "val", "test"):
            write_listops_tsv(tree / "listops-1000" / f"basic_{split}.tsv", ["( [MAX 2 9 ] )"], [label])
        return write_release_tar(tmp_path / f"{name}.gz", tree)

    first, second = archive("first", 9), archive("second", 2)
    data = tmp_path / "data"
    root = release_root({"release_archive": str(first)}, data, needs="listops-1000", progress=False)
    record = json.loads((data / "lra_release" / "extracted-listops-1000" / ARCHIVE_RECORD).read_text())
    assert record["path"] == str(first.resolve()) and len(record["sha256"]) == 64
    assert (root / "listops-1000" / "basic_train.tsv").read_text().endswith("\t9\n")
    with caplog.at_level(logging.WARNING, logger="lra.data.lra_release"):
        root = release_root({"release_archive": str(second)}, data, needs="listops-1000", progress=False)
    assert (root / "listops-1000" / "basic_train.tsv").read_text().endswith("\t2\n")  # the new archive's content
    assert "extracting that archive anew" in caplog.text
    assert sorted(p.name for p in (data / "lra_release").iterdir() if p.name.startswith(".extracted")) == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lra.data.lra_release"):  # same archive again: reused
        assert release_root({"release_archive": str(second)}, data, needs="listops-1000", progress=False) == root
    assert caplog.text == ""
