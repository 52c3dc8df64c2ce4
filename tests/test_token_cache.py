"""Tests for lra.data.token_cache: layout, atomic writes, verification, gather."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lra.data.token_cache import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    CacheError,
    TokenSplit,
    read_cache,
    token_dtype_for,
    write_cache,
)

VOCAB = ["<pad>", "a", "b", "c", "d", "<unk>"]


def _extra(**kw):
    base = {
        "task": "toy",
        "vocab": VOCAB,
        "source": {"kind": "test"},
        "tokenizer": {"name": "toy", "version": 1},
        "params": {"p": 1},
    }
    base.update(kw)
    return base


def _random_splits(rng, sizes=(("train", 50), ("val", 7), ("empty", 0))):
    out = {}
    for name, n in sizes:
        seqs = [rng.integers(1, len(VOCAB), size=rng.integers(0, 40)).astype(np.int64) for _ in range(n)]
        labels = rng.integers(0, 10, size=n)
        out[name] = (seqs, labels)
    return out


def test_round_trip_layout_and_manifest(tmp_path):
    rng = np.random.default_rng(0)
    data = _random_splits(rng)
    target = tmp_path / "cache"
    write_cache(target, data, _extra(extra_key={"x": [1, 2]}))

    assert sorted(p.name for p in target.iterdir()) == sorted(
        [MANIFEST_NAME]
        + [f"{s}.{k}.npy" for s in ("train", "val", "empty") for k in ("tokens", "offsets", "labels")]
    )
    cache = read_cache(target, verify=True)
    m = cache.manifest
    assert m["format_version"] == FORMAT_VERSION
    assert m["task"] == "toy" and m["vocab"] == VOCAB and m["tokenizer"] == {"name": "toy", "version": 1}
    assert m["source"] == {"kind": "test"} and m["params"] == {"p": 1} and m["extra_key"] == {"x": [1, 2]}
    assert m["token_dtype"] == "uint8" and "created" in m
    assert cache.vocab == VOCAB and cache.vocab_size == len(VOCAB)

    for name, (seqs, labels) in data.items():
        split = cache[name]
        assert len(split) == len(seqs)
        assert split.tokens.dtype == np.uint8
        assert split.offsets.dtype == np.int64 and split.labels.dtype == np.int32
        np.testing.assert_array_equal(split.labels, labels)
        np.testing.assert_array_equal(split.lengths, [len(s) for s in seqs])
        for i, s in enumerate(seqs):
            np.testing.assert_array_equal(split.sequence(i), s)
        meta = m["splits"][name]
        lengths = [len(s) for s in seqs]
        assert meta["count"] == len(seqs)
        assert meta["num_tokens"] == sum(lengths)
        if seqs:
            assert meta["min_length"] == min(lengths) and meta["max_length"] == max(lengths)
            assert meta["mean_length"] == pytest.approx(np.mean(lengths))
        for kind in ("tokens", "offsets", "labels"):
            info = meta["files"][kind]
            assert len(info["sha256"]) == 64
            assert (target / info["name"]).stat().st_size == info["bytes"]
    assert "train" in cache and "nope" not in cache
    with pytest.raises(KeyError, match="nope"):
        cache["nope"]


def test_arrays_are_memory_mapped(tmp_path):
    data = _random_splits(np.random.default_rng(1))
    write_cache(tmp_path / "c", data, _extra())
    split = read_cache(tmp_path / "c")["train"]
    assert isinstance(split.tokens, np.memmap)
    assert isinstance(split.offsets, np.memmap)
    assert os.path.samefile(split.tokens.filename, tmp_path / "c" / "train.tokens.npy")
    assert not split.tokens.flags.writeable


def test_dtype_follows_vocab_size(tmp_path):
    assert token_dtype_for(256) == np.uint8
    assert token_dtype_for(257) == np.uint16
    assert token_dtype_for(70_000) == np.uint32
    vocab = [f"t{i}" for i in range(300)]
    write_cache(tmp_path / "c", {"train": ([np.array([0, 299, 5])], np.array([1]))}, _extra(vocab=vocab))
    split = read_cache(tmp_path / "c", verify=True)["train"]
    assert split.tokens.dtype == np.uint16
    np.testing.assert_array_equal(split.sequence(0), [0, 299, 5])


def test_gather_pads_and_truncates(tmp_path):
    seqs = [np.array([1, 2, 3]), np.array([4]), np.array([], dtype=np.int64), np.array([5, 4, 3, 2, 1, 2])]
    write_cache(tmp_path / "c", {"train": (seqs, np.arange(4))}, _extra())
    split = read_cache(tmp_path / "c")["train"]
    batch = split.gather([3, 0, 1, 2, 0], max_length=4)
    assert batch.dtype == np.int32 and batch.shape == (5, 4)
    np.testing.assert_array_equal(
        batch,
        [[5, 4, 3, 2], [1, 2, 3, 0], [4, 0, 0, 0], [0, 0, 0, 0], [1, 2, 3, 0]],
    )
    # out= is reused and fully overwritten (stale values must not survive)
    out = np.full((2, 8), 7, dtype=np.int32)
    res = split.gather(np.array([1, 3]), 8, out=out)
    assert res is out
    np.testing.assert_array_equal(out, [[4, 0, 0, 0, 0, 0, 0, 0], [5, 4, 3, 2, 1, 2, 0, 0]])
    # a view into a larger buffer works as out (rows of a padded batch)
    big = np.full((3, 2), 9, dtype=np.int32)
    split.gather([0, 3], 2, out=big[:2])
    np.testing.assert_array_equal(big, [[1, 2], [5, 4], [9, 9]])
    assert split.gather([], 3).shape == (0, 3)
    with pytest.raises(IndexError):
        split.gather([4], 3)
    with pytest.raises(IndexError):
        split.gather([-1], 3)
    with pytest.raises(ValueError):
        split.gather([0], 3, out=np.zeros((1, 4), np.int32))
    with pytest.raises(ValueError):
        split.gather([0], 3, out=np.zeros((1, 3), np.int64))


def test_gather_is_fast(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 6, size=rng.integers(500, 2000)) for _ in range(2000)]
    write_cache(tmp_path / "c", {"train": (seqs, np.zeros(2000, np.int64))}, _extra())
    t0 = time.perf_counter()
    split = read_cache(tmp_path / "c")["train"]
    assert time.perf_counter() - t0 < 0.5
    out = np.zeros((32, 2000), np.int32)
    idx = rng.integers(0, 2000, size=(50, 32))
    split.gather(idx[0], 2000, out=out)  # warm-up
    t0 = time.perf_counter()
    for row in idx:
        split.gather(row, 2000, out=out)
    per_batch = (time.perf_counter() - t0) / len(idx)
    assert per_batch < 0.01, f"gather of 32 x 2000 took {per_batch * 1e3:.2f} ms"


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "cache"

    def exploding():
        for i in range(10):
            if i == 5:
                raise KeyboardInterrupt("simulated interruption")
            yield np.array([1, 2, 3])

    with pytest.raises(KeyboardInterrupt):
        write_cache(target, {"train": (exploding(), np.zeros(10, np.int64))}, _extra())
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # temporary directory removed too
    with pytest.raises(CacheError):
        read_cache(target)

    write_cache(target, {"train": ([np.array([1, 2, 3])] * 10, np.zeros(10, np.int64))}, _extra())
    assert len(read_cache(target, verify=True)["train"]) == 10


def test_invalid_input_leaves_nothing(tmp_path):
    target = tmp_path / "cache"
    with pytest.raises(ValueError, match="outside the vocab"):
        write_cache(target, {"train": ([np.array([1, len(VOCAB)])], np.zeros(1, np.int64))}, _extra())
    with pytest.raises(ValueError, match="labels"):
        write_cache(target, {"train": ([np.array([1])], np.zeros(2, np.int64))}, _extra())
    with pytest.raises(ValueError, match="vocab"):
        write_cache(target, {"train": ([np.array([1])], np.zeros(1, np.int64))}, {"task": "x"})
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_dirs_are_cleaned(tmp_path):
    target = tmp_path / "cache"
    host = socket.gethostname()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".cache.tmp-{host}-{proc.pid}-deadbeef"  # a writer that was killed
    dead.mkdir()
    (dead / "train.tokens.npy").write_bytes(b"partial")
    alive = tmp_path / f".cache.tmp-{host}-{os.getppid()}-cafecafe"  # a writer still running
    alive.mkdir()
    old_foreign = tmp_path / ".cache.tmp-otherhost-123-abcdabcd"
    old_foreign.mkdir()
    os.utime(old_foreign, (time.time() - 3 * 86400,) * 2)

    # A leftover temp dir is not a cache.
    with pytest.raises(CacheError, match="does not exist"):
        read_cache(target)
    write_cache(target, {"train": ([np.array([1])], np.zeros(1, np.int64))}, _extra())
    assert not dead.exists()
    assert not old_foreign.exists()
    assert alive.exists()
    assert len(read_cache(target)["train"]) == 1


def test_existing_target_needs_overwrite(tmp_path):
    target = tmp_path / "cache"
    write_cache(target, {"train": ([np.array([1])], np.zeros(1, np.int64))}, _extra())
    with pytest.raises(FileExistsError):
        write_cache(target, {"train": ([np.array([2, 2])], np.zeros(1, np.int64))}, _extra())
    write_cache(target, {"train": ([np.array([2, 2])], np.zeros(1, np.int64))}, _extra(), overwrite=True)
    np.testing.assert_array_equal(read_cache(target)["train"].sequence(0), [2, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def _small_cache(tmp_path):
    target = tmp_path / "cache"
    data = _random_splits(np.random.default_rng(3))
    write_cache(target, data, _extra())
    return target


def test_checksum_detects_flipped_byte(tmp_path):
    target = _small_cache(tmp_path)
    path = target / "train.tokens.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    read_cache(target)  # size unchanged: the quick check cannot see it
    with pytest.raises(CacheError, match="checksum mismatch") as err:
        read_cache(target, verify=True)
    assert str(target) in str(err.value) and "train.tokens.npy" in str(err.value)


def test_truncated_file_is_detected_without_verify(tmp_path):
    target = _small_cache(tmp_path)
    path = target / "val.labels.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CacheError, match="val.labels.npy") as err:
        read_cache(target)
    assert str(target) in str(err.value)


def test_missing_manifest_and_wrong_version(tmp_path):
    target = _small_cache(tmp_path)
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="format version") as err:
        read_cache(target)
    assert str(target) in str(err.value)
    (target / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CacheError, match="unreadable"):
        read_cache(target)
    (target / MANIFEST_NAME).unlink()
    with pytest.raises(CacheError, match="manifest.json is missing") as err:
        read_cache(target)
    assert str(target) in str(err.value)
    with pytest.raises(CacheError, match="does not exist"):
        read_cache(tmp_path / "nowhere")


def test_missing_array_file(tmp_path):
    target = _small_cache(tmp_path)
    (target / "train.offsets.npy").unlink()
    with pytest.raises(CacheError, match="train.offsets.npy"):
        read_cache(target)


def test_streamed_iterable_and_split_object(tmp_path):
    gen = (np.full(i % 5 + 1, i % 4 + 1) for i in range(100))
    write_cache(tmp_path / "c", {"train": (gen, np.arange(100) % 10)}, _extra())
    split = read_cache(tmp_path / "c", verify=True)["train"]
    assert isinstance(split, TokenSplit)
    assert len(split) == 100
    np.testing.assert_array_equal(split.sequence(7), np.full(3, 4))
    np.testing.assert_array_equal(split.sequence(-1), np.full(5, 4))
    assert int(split.offsets[-1]) == split.tokens.size == sum(i % 5 + 1 for i in range(100))
