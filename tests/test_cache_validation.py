"""A cache whose bytes changed, or whose ids or labels are out of range, is a data error before training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lra.data import token_cache
from lra.data.token_cache import MANIFEST_NAME, CacheError, read_cache, validate_cache, write_cache
from lra.digest import path_sha256

VOCAB = ["<pad>", "a", "b", "c"]


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    monkeypatch.setattr(token_cache, "_validated", set())


def _cache(tmp_path, labels=(0, 1, 1)):
    seqs = [np.array([1, 2, 3]), np.array([2, 2]), np.array([3])]
    write_cache(tmp_path / "c", {"train": (seqs, np.array(labels))},
                {"task": "toy", "vocab": VOCAB, "source": {"kind": "test"}, "params": {}})
    return tmp_path / "c"


def _tokens_file(directory):
    return directory / json.loads((directory / MANIFEST_NAME).read_text())["splits"]["train"]["files"]["tokens"]["name"]


def _flip_last_byte(path, value):
    data = bytearray(path.read_bytes())
    data[-1] = value
    path.write_bytes(bytes(data))


def test_changed_bytes_are_caught_on_first_use(tmp_path):
    directory = _cache(tmp_path)
    validate_cache(read_cache(directory), num_classes=2)
    _flip_last_byte(_tokens_file(directory), 2)  # same size: read_cache alone cannot tell
    token_cache._validated.clear()               # the next process
    with pytest.raises(CacheError, match=r"checksum mismatch for train\.tokens\.npy .*changed after"):
        validate_cache(read_cache(directory), num_classes=2)


def test_an_unchanged_cache_is_hashed_once(tmp_path, monkeypatch):
    directory = _cache(tmp_path)
    validate_cache(read_cache(directory), num_classes=2)
    assert (directory / token_cache.VERIFIED_MEMO).is_file()
    token_cache._validated.clear()
    calls = []
    monkeypatch.setattr(token_cache, "path_sha256", lambda path: calls.append(path) or path_sha256(path))
    validate_cache(read_cache(directory), num_classes=2)
    assert calls == []


def _rewrite_manifest_checksum(directory, path):
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["splits"]["train"]["files"]["tokens"]["sha256"] = path_sha256(path)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_token_ids_beyond_the_vocabulary_are_a_data_error(tmp_path):
    directory = _cache(tmp_path)
    tokens = _tokens_file(directory)
    _flip_last_byte(tokens, 77)                # consistent with its manifest, but id 77 of 4
    _rewrite_manifest_checksum(directory, tokens)
    with pytest.raises(CacheError, match=r"train\.tokens\.npy holds token id 77, but the manifest's vocabulary "
                                         r"has 4 entries"):
        validate_cache(read_cache(directory), num_classes=2)


def test_labels_outside_the_classes_are_a_data_error(tmp_path):
    directory = _cache(tmp_path, labels=(0, 5, 1))
    with pytest.raises(CacheError, match=r"split 'train' has label 5 at example 1, outside the task's 2 classes"):
        validate_cache(read_cache(directory), num_classes=2)
    validate_cache(read_cache(directory), num_classes=10)  # fine for a 10-class task


def test_a_run_on_a_corrupt_cache_fails_as_a_data_error_not_a_divergence(compose):
    from lra.data.tasks import load_task
    from lra.results import read_records
    from lra.train import run

    cfg = compose()
    cache = load_task(cfg.task, cfg.paths.data_dir, progress=False)
    labels = cache.directory / json.loads((cache.directory / MANIFEST_NAME).read_text())["splits"]["train"]["files"]["labels"]["name"]
    array = np.load(labels)
    array[3] = 42
    np.save(labels, array)
    manifest = json.loads((cache.directory / MANIFEST_NAME).read_text())
    manifest["splits"]["train"]["files"]["labels"]["sha256"] = path_sha256(labels)
    (cache.directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    token_cache._validated.clear()
    with pytest.raises(CacheError, match="label 42 at example 3, outside the task's 10 classes"):
        run(cfg)
    (record,) = read_records(cfg.paths.results_dir)
    assert record["status"] == "failed" and record["error"].startswith("CacheError") and record["diverged_at_step"] is None
