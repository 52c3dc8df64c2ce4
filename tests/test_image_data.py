"""Image (CIFAR-10): TF-exact grayscale, the binary batch reader, the official split in TFDS order,
the pixel-zero-is-padding quirk, the TFDS source and a tiny run."""

from __future__ import annotations

import hashlib

import jax.numpy as jnp
import numpy as np
import pytest

from lra.data.archives import ArchiveError
from lra.data.encodings import rgb_to_grayscale
from lra.data.image import CIFAR_COUNTS, load_image, read_cifar_archive
from tests.conftest import compose_tiny
from tests.lra_fixtures import cifar_batch_bytes, cifar_records, write_cifar_tar


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-binary.tar.gz"
    return path, write_cifar_tar(path, per_batch=4, test=5)


def test_grayscale_matches_tf_by_hand():
    # TF: float32(x) / 255 -> 0.2989 R + 0.5870 G + 0.1140 B -> cast(gray * 255.5), truncating.
    # (10, 200, 30): 123.809 / 255 * 255.5 = 124.05 -> 124 (flooring the weighted sum would give 123).
    # (255, 0, 0): 0.2989 * 255.5 = 76.37 -> 76.   (0, 0, 1): 0.114 / 255 * 255.5 = 0.114 -> 0.
    pixels = np.array([[10, 200, 30], [255, 0, 0], [255, 255, 255], [0, 0, 1], [0, 0, 0]], np.uint8)
    assert rgb_to_grayscale(pixels).tolist() == [124, 76, 255, 0, 0]
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        rgb_to_grayscale(np.zeros((2, 4), np.uint8))


def _tfds_order(n, split):
    return sorted(range(n), key=lambda i: int(hashlib.md5(f"{split}{i}".encode()).hexdigest(), 16))


def test_binary_reader_decodes_planes_and_uses_tfds_order(cifar):
    path, (train_images, train_labels, test_images, test_labels) = cifar
    data = read_cifar_archive(path)
    order = _tfds_order(20, "train")
    np.testing.assert_array_equal(data["train"][0], train_images[order])
    np.testing.assert_array_equal(data["train"][1], train_labels[order])
    np.testing.assert_array_equal(data["test"][0], test_images[_tfds_order(5, "test")])
    # one record by hand: label byte, then the red, green and blue planes, row-major
    raw = cifar_batch_bytes(train_images[:1], train_labels[:1])
    assert raw[0] == train_labels[0] and raw[1 + 32 + 1] == train_images[0, 1, 1, 0]
    assert raw[1 + 1024 + 5] == train_images[0, 0, 5, 1] and raw[1 + 2048 + 1023] == train_images[0, 31, 31, 2]


def test_cache_has_the_official_split_and_gray_tokens(cifar, tmp_path):
    path, (train_images, _, _, _) = cifar
    cache = load_image({"name": "image", "raw_archive": str(path)}, tmp_path / "data", progress=False)
    assert [len(cache[s]) for s in ("train", "val", "test")] == [18, 2, 5]  # train[:90%] / train[90%:] / test
    order = _tfds_order(20, "train")
    expected = rgb_to_grayscale(train_images[order]).reshape(20, 1024)
    np.testing.assert_array_equal(cache["train"].sequence(0), expected[0])
    np.testing.assert_array_equal(cache["val"].sequence(1), expected[19])
    assert cache.vocab_size == 256 and cache["train"].tokens.dtype == np.uint8
    assert set(cache["train"].lengths.tolist()) == {1024}


@pytest.mark.parametrize("member,content,problem", [
    ("data_batch_3.bin", b"\x01" * 3000, r"member cifar-10-batches-bin/data_batch_3\.bin: 3000 bytes is not a whole"),
    ("test_batch.bin", cifar_batch_bytes(cifar_records(2, 5)[0], np.array([3, 10], np.uint8)),
     r"member cifar-10-batches-bin/test_batch\.bin: record 1 has label 10"),
])
def test_corrupt_batches_name_member_and_record_and_leave_no_cache(tmp_path, member, content, problem):
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar_tar(path, per_batch=2, test=2, corrupt={member: content})
    with pytest.raises(ArchiveError, match=problem):
        load_image({"name": "image", "raw_archive": str(path)}, tmp_path / "data", progress=False)
    assert [p.name for p in (tmp_path / "data" / "image").iterdir()] == [".raw-sha256.json"]


def test_missing_members_and_missing_archive(tmp_path):
    import tarfile
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz"):
        pass
    with pytest.raises(ArchiveError, match=r"data_batch_1\.bin.*are missing"):
        read_cifar_archive(path)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-binary\.tar\.gz not found and task\.download=false"):
        load_image({"name": "image", "download": False}, tmp_path / "data")


def test_tfds_source_uses_the_official_slices(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        cache = load_image({"name": "image", "source": "tfds"}, tmp_path / "data", progress=False)
        example = tfds.data_source("cifar10", split="train[90%:]")[2]
    # (the mock ignores slicing and gives 6 examples per requested split)
    assert [len(cache[s]) for s in ("train", "val", "test")] == [6, 6, 6]
    np.testing.assert_array_equal(cache["val"].sequence(2), rgb_to_grayscale(example["image"]).reshape(-1))


def test_counts_and_grid_in_the_task_config(tmp_path):
    cfg = compose_tiny(tmp_path, "task=image")
    assert dict(cfg.task.expected_counts) == CIFAR_COUNTS and list(cfg.task.grid_shape) == [32, 32]
    assert cfg.task.pad_id is None and cfg.task.max_length == 1024


def test_pixel_zero_quirk_masks_black_pixels_and_cls_copies_the_first(tmp_path):
    from flax import nnx

    from lra.build import build_attention, build_model

    tiny = ["task=image", "task.max_length=4", "~task.grid_shape", "model.emb_dim=8", "model.qkv_dim=8",
            "model.mlp_dim=8", "model.num_layers=1", "model.num_heads=2", "model.pooling=cls"]
    plain = compose_tiny(tmp_path, *tiny)  # smoke: quirk off, every pixel is real
    assert not plain.quirks.pixel_zero_is_padding
    assert build_model(plain, 256, build_attention(plain.attention)[1]).pad_id is None
    official = compose_tiny(tmp_path, *tiny, "protocol=lra_official")
    assert official.quirks.pixel_zero_is_padding
    model = build_model(official, 256, build_attention(official.attention)[1])
    tokens = jnp.array([[0, 5, 0, 7], [9, 0, 3, 0]])
    _, mask = nnx.jit(lambda m, t: m.encode(t, deterministic=True))(model, tokens)
    # official: mask = token != 0, and the CLS entry (position 0) copies the first pixel's
    assert mask.tolist() == [[False, False, True, False, True], [True, True, False, True, False]]


def test_tiny_training_run(cifar, tmp_path):
    from lra.train import run

    path, _ = cifar
    record = run(compose_tiny(tmp_path, "task=image", f"task.raw_archive={path}", "model.num_heads=2"))
    assert record["task"] == "image" and record["val_examples"] == 2 and record["test_examples"] == 5
    assert np.isfinite(record["train_loss_final"])
