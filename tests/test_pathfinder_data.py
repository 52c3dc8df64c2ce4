"""Tests for Pathfinder / Path-X: the release reader (on fixtures laid out like the LRA archive),
the seeded split, the cache, the generator's properties, and one tiny training run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from lra.data import pathfinder as P
from lra.data import pathfinder_generator as G
from lra.data.batches import eval_batches
from lra.data.tasks import load_task
from lra.data.token_cache import read_cache
from tests.conftest import compose_config

DIFFICULTY = "curv_contour_length_14"
FIELDS_AFTER_LABEL = "1.0 14 4 2 0.5 1 1"  # continuity ... n_paddle_contrasts, as in snakes2.py


def _pattern(index: int) -> np.ndarray:
    """Distinct, exactly known pixels for fixture image ``index``."""
    return ((np.arange(32 * 32) * 7 + index * 13) % 256).astype(np.uint8).reshape(32, 32)


def _task_cfg(release_dir, **extra) -> dict:
    return {"name": "pathfinder", "num_classes": 2, "max_length": 1024, "pad_id": None, "grid_shape": [32, 32],
            "source": "release", "release_dir": release_dir and str(release_dir), "difficulty": DIFFICULTY, "split_seed": 0,
            "generator": {"seed": 0, "num_train": 1, "num_val": 1, "num_test": 1}, **extra}


def build_release(root: Path, batches: int = 2, per_batch: int = 10, empty: tuple[int, int] | None = (1, 3)) -> dict:
    """A release-shaped folder: pathfinder32/<difficulty>/{metadata/<b>.npy, imgs/<b>/sample_<i>.png}.

    Returns {relative image path: (pattern index, label)} for the non-empty images.
    """
    folder = root / "pathfinder32" / DIFFICULTY
    (folder / "metadata").mkdir(parents=True)
    truth = {}
    for b in range(batches):
        (folder / "imgs" / str(b)).mkdir(parents=True)
        lines = []
        for i in range(per_batch):
            index, label = b * per_batch + i, (b * per_batch + i) % 2
            name = f"sample_{i}.png"
            path = folder / "imgs" / str(b) / name
            if (b, i) == empty:
                path.write_bytes(b"")  # the release's known zero-byte image (quirk D7)
            else:
                Image.fromarray(_pattern(index), mode="L").save(path)
                truth[f"imgs/{b}/{name}"] = (index, label)
            lines.append(f"imgs/{b} {name} {i} {label} {FIELDS_AFTER_LABEL}\n")
        (folder / "metadata" / f"{b}.npy").write_text("".join(lines))
    return truth


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    return root, build_release(root)


def _no_cache_left(cache_root: Path) -> bool:
    task_root = cache_root / "pathfinder"
    return not task_root.exists() or not [p for p in task_root.iterdir() if p.is_dir()]


# --------------------------------------------------------------------------- #
# Release reader, split and cache
# --------------------------------------------------------------------------- #


def test_release_goes_through_the_cache_into_batches(release, tmp_path):
    root, truth = release
    cache = load_task(_task_cfg(root), tmp_path, progress=False)
    manifest = cache.manifest
    assert manifest["source"]["skipped_empty"] == 1
    assert manifest["source"]["skipped_empty_files"] == ["imgs/1/sample_3.png"]
    assert manifest["pad_id"] is None and manifest["grid_shape"] == [32, 32] and cache.vocab_size == 256
    # 19 usable images: floor(0.8 n) / floor(0.1 n) / rest
    assert [len(cache[s]) for s in ("train", "val", "test")] == [15, 1, 3]
    assert read_cache(cache.directory, verify=True).manifest == manifest

    # Every cached row is exactly its PNG's pixels with its metadata label, in split order.
    listing = P.read_release_listing(root / "pathfinder32" / DIFFICULTY)
    parts = P.split_indices(len(listing), 0)
    seen = set()
    for split in ("train", "val", "test"):
        for row, item in enumerate(parts[split].tolist()):
            index, label = truth[listing.relative(item)]
            np.testing.assert_array_equal(cache[split].sequence(row), _pattern(index).reshape(-1))
            assert cache[split].labels[row] == label
            seen.add(index)
    assert len(seen) == 19

    # ... and reaches a batch unchanged, black pixels (0) included: nothing is padding.
    batch = next(eval_batches(cache["test"], batch_size=4, max_length=1024))
    first_index, first_label = truth[listing.relative(int(parts["test"][0]))]
    np.testing.assert_array_equal(batch["tokens"][0], _pattern(first_index).reshape(-1).astype(np.int32))
    assert batch["tokens"][0, 0] == (first_index * 13) % 256 and batch["labels"][0] == first_label
    assert batch["weights"].tolist() == [1, 1, 1, 0]
    assert int((batch["tokens"][0] == 0).sum()) == 4  # pattern value 0 occurs 4 times in 1,024 pixels

    # A second load opens the same cache instead of rebuilding it.
    assert load_task(_task_cfg(root), tmp_path, progress=False).directory == cache.directory


def test_release_archive_is_unpacked_for_pathfinder_only_and_read(release, tmp_path):
    """With no release_dir, task.release_archive (the lra_release.gz tar) supplies pathfinder32/."""
    from tests.lra_fixtures import write_release_tar

    root, truth = release
    archive = write_release_tar(tmp_path / "lra_release.gz", root, prefix="lra_release/lra_release")
    cache_root = tmp_path / "cache"
    cache = load_task(_task_cfg(None, release_archive=str(archive), download=False), cache_root, progress=False)
    assert sum(len(cache[s]) for s in ("train", "val", "test")) == len(truth)
    assert (cache_root / "lra_release" / "extracted-pathfinder32").is_dir()


def test_release_root_may_be_the_doubled_archive_folder_or_the_difficulty_folder(release):
    root, _ = release
    folder = root / "pathfinder32" / DIFFICULTY
    assert P.find_release_folder(root, 32, DIFFICULTY) == folder
    assert P.find_release_folder(folder, 32, DIFFICULTY) == folder
    with pytest.raises(FileNotFoundError, match="pathfinder128"):
        P.find_release_folder(root, 128, DIFFICULTY)
    with pytest.raises(FileNotFoundError, match="release_dir"):
        P.find_release_folder(None, 32, DIFFICULTY)


def test_split_is_seeded_disjoint_and_80_10_10():
    parts = P.split_indices(200_000, seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [160_000, 20_000, 20_000]
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(200_000))
    assert np.array_equal(P.split_indices(200_000, seed=0)["val"], parts["val"])
    assert not np.array_equal(P.split_indices(200_000, seed=1)["val"], parts["val"])


@pytest.mark.parametrize("line, message", [
    ("imgs/0 sample_2.png 2", "expected at least 4"),
    ("imgs/0 sample_2.png 2 2 1.0", "label .* '2' is not 0 or 1"),
    ("imgs/0 sample_2.png 2 yes 1.0", "label .* 'yes' is not 0 or 1"),
    ("imgs/../.. sample_2.png 2 1 1.0", "not a relative path"),
    ("", "empty line"),
    ("imgs/0 sample_99.png 2 1 1.0", "sample_99.png does not exist"),
])
def test_bad_metadata_names_file_and_line_and_writes_nothing(tmp_path, line, message):
    build_release(tmp_path / "rel", batches=1, per_batch=5, empty=None)
    meta = tmp_path / "rel" / "pathfinder32" / DIFFICULTY / "metadata" / "0.npy"
    lines = meta.read_text().splitlines()
    lines[2] = line
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises((P.PathfinderFormatError, FileNotFoundError), match=f"0.npy:3: .*{message}"):
        load_task(_task_cfg(tmp_path / "rel"), tmp_path / "cache", progress=False)
    assert _no_cache_left(tmp_path / "cache")


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20), "not a readable PNG"),
    (lambda p: Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p), "mode RGB"),
    (lambda p: Image.fromarray(np.zeros((16, 32), np.uint8)).save(p), "expected 32x32 pixels, found 32x16"),
])
def test_bad_image_names_the_file_and_leaves_no_cache(tmp_path, damage, message):
    build_release(tmp_path / "rel", batches=1, per_batch=6, empty=None)
    bad = tmp_path / "rel" / "pathfinder32" / DIFFICULTY / "imgs" / "0" / "sample_4.png"
    damage(bad)
    with pytest.raises(P.PathfinderFormatError, match=f"sample_4.png: .*{message}"):
        load_task(_task_cfg(tmp_path / "rel"), tmp_path / "cache", progress=False)
    assert _no_cache_left(tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache" / "pathfinder").iterdir()]  # no temporary directory either


@pytest.mark.parametrize("key, value, message", [
    ("max_length", 1000, "task.max_length must be 1024"),
    ("grid_shape", [16, 64], "task.grid_shape must be"),
    ("pad_id", 0, "task.pad_id must be null"),
    ("source", "tfds", "task.source"),
])
def test_inconsistent_task_config_is_a_clear_error(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        load_task(_task_cfg(tmp_path, **{key: value}), tmp_path, progress=False)


# --------------------------------------------------------------------------- #
# Generator
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def samples32():
    params = G.params_for(32)
    return [G.generate_sample(params, G._image_rng(5, 0, i)) for i in range(64)]


def _rasterise_paths(sample: G.PathfinderSample, scale: int = 4) -> np.ndarray:
    """Every snake drawn as one continuous thin polyline (dashes and the gaps between them),
    ``scale`` times finer than the image; values are snake index + 1."""
    n = sample.params.resolution * scale + 1  # end points lie in [0, resolution)
    canvas = np.zeros((n, n), np.int32)
    for s, snake in enumerate(sample.snakes):
        points = snake.reshape(-1, 2)  # tail0, head0, tail1, head1, ...
        for a, b in zip(points[:-1], points[1:]):
            t = np.linspace(0.0, 1.0, max(int(np.hypot(*(b - a)) * scale * 3), 2))
            yx = np.floor((a + t[:, None] * (b - a)) * scale + 0.5).astype(int)
            canvas[yx[:, 0], yx[:, 1]] = s + 1
    return canvas


def test_generated_positives_join_the_markers_and_negatives_do_not(samples32):
    _check_connectivity(samples32)


def test_generated_path_x_positives_join_the_markers_and_negatives_do_not():
    params = G.params_for(128)
    samples = [G.generate_sample(params, G._image_rng(9, 0, i)) for i in range(16)]
    assert {s.label for s in samples} == {0, 1}
    _check_connectivity(samples)


def _check_connectivity(samples):
    for sample in samples:
        paths = _rasterise_paths(sample)
        components, _ = ndimage.label(paths > 0, structure=np.ones((3, 3)))
        ends = [components[tuple(np.floor(m * 4 + 0.5).astype(int))] for m in sample.markers]
        assert min(ends) > 0, "a marker is not on a path"
        assert (ends[0] == ends[1]) == (sample.label == 1), sample.label
        # the markers are drawn: bright discs at their centres
        for m in sample.markers:
            assert sample.pixels[tuple(np.floor(m + 0.5).astype(int))] >= 100


def test_generated_paths_are_drawn_and_keep_their_distance(samples32):
    sample = samples32[0]
    zone = sample.params.paddle_thickness / 2 + max(sample.margin - 0.5, 0)
    for snake in sample.snakes:
        for tail, head in snake:
            mid = np.floor((tail + head) / 2 + 0.5).astype(int)
            assert sample.pixels[tuple(mid)] > 0
    # dashes of different paths never come closer than two exclusion radii minus a pixel of slack
    dashes = [(s, k, seg) for s, snake in enumerate(sample.snakes) for k, seg in enumerate(snake)]
    for s1, _, (a1, b1) in dashes:
        for s2, _, (a2, b2) in dashes:
            if s1 < s2:
                pts = a1 + np.linspace(0, 1, 9)[:, None] * (b1 - a1)
                d = G._segment_distance(pts[:, 0], pts[:, 1], a2, b2).min()
                assert d > 2 * zone - 1.0


def test_generated_labels_are_balanced_and_pixels_span_0_to_255(samples32):
    labels = np.array([s.label for s in samples32])
    assert abs(labels.mean() - 0.5) < 0.2  # 64 fair coin flips: 3.2 standard deviations
    for sample in samples32:
        assert sample.pixels.dtype == np.uint8 and sample.pixels.shape == (32, 32)
        assert sample.pixels.max() == 255 and sample.pixels.min() == 0
        assert (sample.pixels == 0).mean() > 0.3  # mostly black background
        assert len(sample.snakes[0]) == len(sample.snakes[1]) == 14


def test_generator_is_deterministic_whatever_the_worker_count():
    params = G.params_for(32)
    count = G._CHUNK_IMAGES + 3  # two chunks
    one = list(G.generate_images(params, count, seed=11, split_index=1, workers=1))
    two = list(G.generate_images(params, count, seed=11, split_index=1, workers=2))
    assert [len(labels) for _, labels in one] == [G._CHUNK_IMAGES, 3]
    for (p1, l1), (p2, l2) in zip(one, two):
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_array_equal(l1, l2)
    other = next(G.generate_images(params, 3, seed=12, split_index=1))
    assert not np.array_equal(other[0], one[0][0][:3])


def test_path_x_generator_draws_128px_images_with_full_length_paths():
    sample = G.generate_sample(G.params_for(128), G._image_rng(0, 0, 0))
    assert sample.pixels.shape == (128, 128) and sample.pixels.max() == 255
    assert len(sample.snakes[0]) == len(sample.snakes[1]) == 14 and sample.margin in (2, 3)
    assert math.dist(*sample.markers) > 0


def test_unknown_generator_option_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown Pathfinder generator options"):
        G.params_for(32, {"paddle_lenght": 3})
    with pytest.raises(ValueError, match="no Pathfinder generator preset"):
        G.params_for(64)


# --------------------------------------------------------------------------- #
# End to end
# --------------------------------------------------------------------------- #


def test_tiny_training_run_on_generated_pathfinder(compose):
    from lra.train import run

    cfg = compose("task=pathfinder", "attention=softmax")
    record = run(cfg)
    assert record["task"] == "pathfinder" and record["max_length"] == 1024
    assert record["val_examples"] == 16 and record["test_examples"] == 16
    for key in ("val_accuracy_best", "test_accuracy_final", "test_accuracy_best_val"):
        assert 0.0 <= record[key] <= 1.0
    assert np.isfinite(record["train_loss_final"])
    cache_dirs = list(Path(cfg.paths.data_dir, "pathfinder").iterdir())
    manifest = read_cache(cache_dirs[0]).manifest
    assert manifest["source"]["kind"] == "generator"
    assert [manifest["splits"][s]["count"] for s in ("train", "val", "test")] == [48, 16, 16]
    assert manifest["splits"]["train"]["min_length"] == manifest["splits"]["train"]["max_length"] == 1024


# --------------------------------------------------------------------------- #
# Protocol presets
# --------------------------------------------------------------------------- #


def test_official_presets_match_the_lra_pathfinder_configs():
    pf = compose_config("protocol=lra_official", "task=pathfinder")
    m, o, t = pf.model, pf.optimizer, pf.train
    assert (m.emb_dim, m.num_heads, m.qkv_dim, m.mlp_dim, m.num_layers) == (32, 4, 16, 32, 4)
    assert (m.pos_emb, m.pooling, m.dropout_rate, m.attention_dropout_rate) == ("sinusoidal", "mean", 0.2, 0.1)
    assert (o.schedule.factors, o.schedule.base_learning_rate, o.schedule.warmup_steps) == (
        "constant*linear_warmup*cosine_decay", 1e-3, 312)
    assert (t.steps, t.batch_size, o.weight_decay, o.grad_clip.kind) == (62400, 512, 0.0, "none")
    px = compose_config("protocol=lra_official", "task=pathx")
    assert (px.model.num_layers, px.model.num_heads, px.model.pos_emb) == (1, 2, "learned")
    assert (px.train.steps, px.train.batch_size, px.optimizer.schedule.warmup_steps) == (500000, 64, 2500)
    assert (px.optimizer.grad_clip.kind, px.optimizer.grad_clip.max) == ("global_norm", 1.0)
    for cfg in (pf, px):
        assert cfg.task.pad_id is None and cfg.quirks.pixel_zero_is_padding is True
        assert cfg.task.max_length == cfg.task.grid_shape[0] * cfg.task.grid_shape[1]
    lineage = compose_config("protocol=pytorch_lineage", "task=pathfinder")
    assert (lineage.train.steps, lineage.train.batch_size, lineage.optimizer.schedule.warmup_steps) == (62400, 256, 312)
    assert lineage.optimizer.schedule.max_learning_rate == 1e-4 and lineage.model.pos_emb == "learned"
