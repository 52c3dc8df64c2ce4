"""Text (IMDb): the aclImdb archive reader, TFDS order, byte encoding, val = test, TFDS source, a tiny run."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pytest

from lra.data.archives import ArchiveError
from lra.data.batches import eval_batches
from lra.data.text import IMDB_COUNTS, IMDB_URL, load_text, read_imdb_archive
from tests.conftest import compose_tiny
from tests.lra_fixtures import write_imdb_tar


@pytest.fixture(scope="module")
def imdb(tmp_path_factory):
    path = tmp_path_factory.mktemp("imdb") / "aclImdb_v1.tar.gz"
    return path, write_imdb_tar(path, per_class=5)


def _tfds_sorted(items, split):
    """The TFDS writer's order, written out independently: md5(split name + key), ascending."""
    return sorted(items, key=lambda item: int(hashlib.md5((split + item[0]).encode()).hexdigest(), 16))


def test_archive_reader_strips_like_tfds_and_uses_its_order(imdb):
    path, reviews = imdb
    data = read_imdb_archive(path)
    for split in ("train", "test"):
        expected = _tfds_sorted(reviews[split], split)
        texts, labels = data[split]
        assert texts == [text for _, text, _ in expected]  # unsup/, README, urls_*.txt skipped
        assert labels.tolist() == [label for _, _, label in expected]
    assert data["train"][0][0] != [t for _, t, _ in reviews["train"]]  # the order really changed


def test_cache_val_is_test_and_batches_hold_bytes_plus_one(imdb, tmp_path):
    path, reviews = imdb
    cache = load_text({"name": "text", "raw_archive": str(path)}, tmp_path / "data", progress=False)
    assert [len(cache[s]) for s in ("train", "val", "test")] == [10, 10, 10]
    assert cache.manifest["validation"] == "test" and cache.vocab_size == 257
    np.testing.assert_array_equal(cache["val"].tokens, cache["test"].tokens)
    batch = next(eval_batches(cache["test"], 10, 24))
    first_name, first_text, first_label = _tfds_sorted(reviews["test"], "test")[0]
    assert first_text.startswith(b"test ") and "\u00e9".encode() in first_text  # multi-byte UTF-8 survives
    assert batch["tokens"][0].tolist() == [b + 1 for b in first_text[:24]]
    assert batch["labels"][0] == first_label
    short = load_text({"name": "text", "raw_archive": str(path), "content_length": 6}, tmp_path / "data",
                      progress=False)
    assert short.directory != cache.directory and int(short["train"].lengths.max()) == 6


def test_train_holdout_validation_is_the_last_tenth_of_train(imdb, tmp_path):
    path, reviews = imdb
    cache = load_text({"name": "text", "raw_archive": str(path), "validation": "train_holdout"},
                      tmp_path / "data", progress=False)
    assert [len(cache[s]) for s in ("train", "val", "test")] == [9, 1, 10]
    assert cache.manifest["validation"] == "train_holdout"
    last = _tfds_sorted(reviews["train"], "train")[-1][1]
    assert cache["val"].sequence(0).tolist() == [b + 1 for b in last]


def test_missing_archive_without_download_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task\.download=false.*make data TASK=text.*" +
                       IMDB_URL.replace(".", r"\.")):
        load_text({"name": "text", "download": False}, tmp_path / "data", progress=False)
    with pytest.raises(FileNotFoundError, match=r"task\.raw_archive=.*nope\.tar\.gz does not exist"):
        load_text({"name": "text", "raw_archive": str(tmp_path / "nope.tar.gz")}, tmp_path / "data")


def test_corrupt_or_foreign_archive_names_the_file_and_leaves_no_cache(imdb, tmp_path):
    path, _ = imdb
    truncated = tmp_path / "aclImdb_v1.tar.gz"
    truncated.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ArchiveError, match=r"aclImdb_v1\.tar\.gz: cannot be read"):
        load_text({"name": "text", "raw_archive": str(truncated)}, tmp_path / "data", progress=False)
    foreign = tmp_path / "other.tar.gz"
    with tarfile.open(foreign, "w:gz"):
        pass  # a valid but empty tar: no reviews at all
    with pytest.raises(ArchiveError, match=r"other\.tar\.gz: no aclImdb/train/"):
        load_text({"name": "text", "raw_archive": str(foreign)}, tmp_path / "data", progress=False)
    assert [p.name for p in (tmp_path / "data" / "text").iterdir()] == [".raw-sha256.json"]


def test_bad_config_values_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"task\.source='hub'"):
        load_text({"name": "text", "source": "hub"}, tmp_path)
    with pytest.raises(ValueError, match=r"task\.validation='holdout'.*'train_holdout'"):
        load_text({"name": "text", "validation": "holdout"}, tmp_path)


def test_tfds_source_via_data_source_without_tensorflow(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        cache = load_text({"name": "text", "source": "tfds"}, tmp_path / "data", progress=False)
        expected = tfds.data_source("imdb_reviews/plain_text", split="train")[3]
    assert [len(cache[s]) for s in ("train", "val", "test")] == [7, 7, 7]
    text = expected["text"]
    text = text.encode() if isinstance(text, str) else text
    assert cache["train"].sequence(3).tolist() == [b + 1 for b in text]
    assert cache["train"].labels[3] == expected["label"] and cache.manifest["source"]["kind"] == "tfds"


def test_tfds_source_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tfds build imdb_reviews/plain_text --file_format=array_record"):
        load_text({"name": "text", "source": "tfds", "tfds_data_dir": str(tmp_path / "tfds")}, tmp_path / "data")


def test_counts_match_the_task_config(tmp_path):
    cfg = compose_tiny(tmp_path, "task=text")
    assert dict(cfg.task.expected_counts) == {**IMDB_COUNTS, "val": IMDB_COUNTS["test"]}


def test_tiny_training_run(imdb, tmp_path):
    from lra.train import run

    path, _ = imdb
    record = run(compose_tiny(tmp_path, "task=text", f"task.raw_archive={path}", "task.max_length=32"))
    assert record["task"] == "text" and record["val_examples"] == record["test_examples"] == 10
    assert np.isfinite(record["train_loss_final"])


def test_smoke_preset_without_data_fails_with_instructions(tmp_path):
    from lra.train import run

    cfg = compose_tiny(tmp_path, "task=text")  # the smoke preset: never downloads
    with pytest.raises(FileNotFoundError, match=r"task\.download=false\. Run `make data TASK=text`"):
        run(cfg)
