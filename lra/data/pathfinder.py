"""Pathfinder-32 and Path-X: are the two marker circles joined by one dashed path? (LRA Sec. 2.2.5)

Tokens are the grayscale pixels 0-255 in row-major order, with no offset and no padding:
vocab 256, 1,024 tokens at 32x32 (task ``pathfinder``), 16,384 at 128x128 (task ``pathx``).
Pixel 0 is black, not padding, so the task configs set ``pad_id: null``; the official and PyTorch
harnesses masked it anyway (quirk D1, ``quirks.pixel_zero_is_padding``).  Labels: 1 = connected.

Sources (``task.source``)
-------------------------
``release``: the LRA release archive, ``<release_dir>/pathfinder{32,128}/<difficulty>/`` with
    ``metadata/<batch>.npy`` and ``imgs/<batch>/sample_<i>.png``.  LRA uses the ``hard``
    difficulty, ``curv_contour_length_14`` (maintainer, LRA issue #11).  Despite its extension a
    metadata file is text (quirk D8): one image per line, space-separated fields, field 0 the
    image folder relative to the difficulty folder, field 1 the file name, field 3 the label
    (``drewlinsley/pathfinder`` ``snakes2.py``; the LRA TFDS builder reads the same fields).
    Zero-byte images (one is known, ``pathfinder32/curv_baseline/imgs/0/sample_172.png``, quirk
    D7) are skipped and counted in the manifest; a malformed line, a bad label, a missing image
    or an undecodable PNG is an error naming the metadata file and line (or the image).
``generator``: the built-in generator (:mod:`lra.data.pathfinder_generator`) with LRA's parameters,
    seeded and independent of the worker count.  Its images follow the published process but are
    not the released images (docs/pathfinder.md).

Split
-----
The release has no split.  The official pipeline slices its TFDS build 80/10/10 in Beam order,
Nystromformer and Skyformer shuffle with an unseeded ``random.shuffle`` (quirk D6), S4 uses
``random_split`` seeded with 42.  Here: images are listed in a canonical order (metadata files
by batch number, then line order), empties dropped, then permuted by
``numpy.random.default_rng(split_seed)``; the first ``floor(0.8 n)`` are train, the next
``floor(0.1 n)`` val, the rest test (200,000 images -> 160,000 / 20,000 / 20,000).  The manifest
records the seed and a sha256 of each split's file list.  Generated data needs no permutation:
every image is drawn independently, and split ``s`` image ``i`` has its own random stream.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.encodings import PIXEL_TOKENIZER, PIXEL_VOCAB
from lra.data.lra_release import release_root
from lra.data.preparation import default_workers, progress_bar
from lra.data.pathfinder_generator import GENERATOR_VERSION, generate_images, params_for
from lra.data.token_cache import TokenCache, open_or_build, params_key

__all__ = [
    "DIFFICULTIES",
    "PathfinderFormatError",
    "RESOLUTIONS",
    "ReleaseListing",
    "decode_image",
    "find_release_folder",
    "load_pathfinder",
    "read_release_listing",
    "split_indices",
]

log = logging.getLogger(__name__)

#: Task name -> image side.
RESOLUTIONS: dict[str, int] = {"pathfinder": 32, "pathx": 128}
DIFFICULTIES = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")
SPLITS = ("train", "val", "test")
NUM_CLASSES = 2
LABEL_FIELD = 3
#: Bumped whenever reading the release gives different tokens or splits.
READER_VERSION = 1

_RELEASE_HELP = (
    "Get it from the LRA release archive https://storage.googleapis.com/long-range-arena/lra_release.gz "
    "(about 7.7 GB; a gzip-compressed tar despite its name: `tar -xzf lra_release.gz`), then set "
    "task.release_dir to the extracted folder that holds pathfinder32/ and pathfinder128/ "
    "(lra_release/lra_release/ in the archive)."
)


class PathfinderFormatError(ValueError):
    """A release metadata line or image is malformed (the message names file and line)."""


# --------------------------------------------------------------------------- #
# Release files
# --------------------------------------------------------------------------- #


def find_release_folder(release_dir: str | os.PathLike | None, resolution: int, difficulty: str) -> Path:
    """The ``pathfinder<resolution>/<difficulty>`` folder under ``release_dir``.

    ``release_dir`` may be the extracted archive root (with or without the doubled
    ``lra_release/`` level), the ``pathfinder<resolution>`` folder, or the difficulty folder itself.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"task.difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if release_dir is None:
        raise FileNotFoundError(f"Pathfinder source 'release' needs task.release_dir. {_RELEASE_HELP}")
    root = Path(release_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Pathfinder task.release_dir {root} does not exist. {_RELEASE_HELP}")
    sub = Path(f"pathfinder{resolution}") / difficulty
    for candidate in (root / sub, root / "lra_release" / sub, root / difficulty, root):
        if (candidate / "metadata").is_dir():
            return candidate
    raise FileNotFoundError(
        f"Pathfinder release folder not found: no {sub}/metadata under {root} "
        f"(nor under {root / 'lra_release'}). {_RELEASE_HELP}"
    )


def _batch_order(path: Path) -> tuple[int, int | str]:
    stem = path.stem
    return (0, int(stem)) if stem.isdigit() else (1, stem)


class ReleaseListing:
    """The usable images of a release folder in canonical order, with their labels."""

    def __init__(self, folder: Path, paths: list[Path], labels: np.ndarray, empty: list[str],
                 metadata_sha256: str):
        self.folder, self.paths, self.labels = folder, paths, labels
        self.empty = empty  # relative paths of the zero-byte images that were skipped
        self.metadata_sha256 = metadata_sha256

    def __len__(self) -> int:
        return len(self.paths)

    def relative(self, index: int) -> str:
        return self.paths[index].relative_to(self.folder).as_posix()


_SAFE_PART = re.compile(r"^[^/\\]+$")


def read_release_listing(folder: str | os.PathLike, progress: bool = False) -> ReleaseListing:
    """Parse every ``metadata/*.npy`` text file of a difficulty folder and check its images exist.

    Raises :class:`PathfinderFormatError` (``file:line: what``) for a line with fewer than 4
    fields, an image path that leaves the folder, or a label other than 0/1, and
    :class:`FileNotFoundError` (``file:line: ...``) for an image that does not exist.  Blank lines
    at the end of a file are allowed; elsewhere they are errors.  Zero-byte images are skipped.
    """
    folder = Path(folder)
    meta_files = sorted((p for p in (folder / "metadata").iterdir() if p.suffix == ".npy" and p.is_file()),
                        key=_batch_order)
    if not meta_files:
        raise FileNotFoundError(f"Pathfinder release folder {folder}: metadata/ holds no *.npy files")
    digest = hashlib.sha256()
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"Pathfinder: scanning {folder.name}", total=len(meta_files))
        for meta in meta_files:
            raw = meta.read_bytes()
            digest.update(meta.name.encode() + b"\0" + raw + b"\0")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PathfinderFormatError(
                    f"{meta}: not a text file ({exc}); Pathfinder metadata .npy files are plain text (quirk D8)"
                ) from None
            lines = text.split("\n")
            while lines and not lines[-1].strip():
                lines.pop()
            for lineno, line in enumerate(lines, start=1):
                where = f"{meta}:{lineno}"
                fields = line.rstrip("\r").split(" ")
                if not line.strip():
                    raise PathfinderFormatError(f"{where}: empty line")
                if len(fields) <= LABEL_FIELD:
                    raise PathfinderFormatError(
                        f"{where}: expected at least {LABEL_FIELD + 1} space-separated fields "
                        f"(folder, file, index, label, ...), found {len(fields)}: {line[:80]!r}"
                    )
                subdir, name, label = fields[0], fields[1], fields[LABEL_FIELD]
                parts = [*subdir.split("/"), name]
                if any(not part or not _SAFE_PART.match(part) or part in (".", "..") for part in parts):
                    raise PathfinderFormatError(
                        f"{where}: image path {subdir!r}/{name!r} is not a relative path inside {folder}")
                if label not in ("0", "1"):
                    raise PathfinderFormatError(f"{where}: label (field {LABEL_FIELD}) {label!r} is not 0 or 1")
                path = folder.joinpath(*parts)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    raise FileNotFoundError(f"{where}: image {path} does not exist") from None
                if size == 0:
                    empty.append(path.relative_to(folder).as_posix())
                    continue
                paths.append(path)
                labels.append(int(label))
            bar.update(task, advance=1)
    return ReleaseListing(folder, paths, np.array(labels, np.int32), empty, digest.hexdigest())


def decode_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """Pixels of a PNG as a flat ``uint8`` array of ``resolution ** 2`` grayscale values.

    8-bit grayscale images (mode ``L``, as the release stores them) are read as they are; any
    other mode is an error, so that no silent colour conversion changes pixel values.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.format != "PNG":
                raise PathfinderFormatError(f"{path}: expected a PNG image, found {image.format}")
            if image.mode != "L":
                raise PathfinderFormatError(f"{path}: expected 8-bit grayscale (mode L), found mode {image.mode}")
            if image.size != (resolution, resolution):
                raise PathfinderFormatError(
                    f"{path}: expected {resolution}x{resolution} pixels, found {image.size[0]}x{image.size[1]}"
                )
            return np.asarray(image, dtype=np.uint8).reshape(-1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, PathfinderFormatError):
            raise
        raise PathfinderFormatError(f"{path}: not a readable PNG image ({exc})") from None


def split_indices(count: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded 80/10/10 split of ``count`` items: train ``floor(0.8 n)``, val ``floor(0.1 n)``, test the rest."""
    order = np.random.default_rng(seed).permutation(count)
    n_train, n_val = count * 8 // 10, count // 10
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


# --------------------------------------------------------------------------- #
# Loading with a cache
# --------------------------------------------------------------------------- #

_COUNT_KEYS = ("seed", "num_train", "num_val", "num_test", "workers")


def _resolve_config(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dict(task_cfg)
    name = cfg.get("name")
    if name not in RESOLUTIONS:
        raise ValueError(f"load_pathfinder got task.name={name!r}; expected one of {sorted(RESOLUTIONS)}")
    resolution = RESOLUTIONS[name]
    grid = cfg.get("grid_shape")
    if grid is None or [int(v) for v in grid] != [resolution, resolution]:
        raise ValueError(f"task.grid_shape must be [{resolution}, {resolution}] for task {name}, got {grid}")
    if int(cfg.get("max_length", 0)) != resolution * resolution:
        raise ValueError(
            f"task.max_length must be {resolution * resolution} (= {resolution}x{resolution} pixels) for task "
            f"{name}, got {cfg.get('max_length')}"
        )
    if cfg.get("pad_id") is not None:
        raise ValueError(f"task.pad_id must be null for task {name}: pixel 0 is black, not padding")
    source = cfg.get("source", "generator")
    if source not in ("generator", "release"):
        raise ValueError(f"task.source must be 'generator' or 'release', got {source!r}")
    gen_in = dict(cfg.get("generator") or {})
    counts = {key: gen_in.pop(key) for key in _COUNT_KEYS if key in gen_in}
    for key in ("seed", "num_train", "num_val", "num_test"):
        if key not in counts or int(counts[key]) < 0:
            raise ValueError(f"task.generator.{key} must be a non-negative integer, got {counts.get(key)!r}")
    try:
        params = params_for(resolution, gen_in)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task.generator: {exc}") from None
    workers = counts.get("workers")
    return {
        "name": name,
        "resolution": resolution,
        "source": source,
        "release_dir": cfg.get("release_dir"),
        "difficulty": cfg.get("difficulty", "curv_contour_length_14"),
        "split_seed": int(cfg.get("split_seed", 0)),
        "params": params,
        "counts": {k: int(counts[k]) for k in ("seed", "num_train", "num_val", "num_test")},
        "workers": default_workers() if workers is None else int(workers),
    }


def _rows_with_progress(rows: Iterator[np.ndarray], bar, task) -> Iterator[np.ndarray]:
    bar.start_task(task)
    for row in rows:
        yield row
        bar.update(task, advance=1)


def _advance(bar, task):
    """Progress callback for generated chunks: the split's clock starts with its first chunk."""
    def advance(count: int) -> None:
        bar.start_task(task)
        bar.update(task, advance=count)
    return advance


def _generated_split(cfg: dict, split_index: int, count: int, labels: np.ndarray, on_chunk) -> Iterator[np.ndarray]:
    """Rows of one generated split; fills ``labels`` in place as the images come."""
    done = 0
    for pixels, chunk_labels in generate_images(cfg["params"], count, seed=cfg["counts"]["seed"],
                                                split_index=split_index, workers=cfg["workers"],
                                                on_chunk=on_chunk):
        labels[done:done + len(chunk_labels)] = chunk_labels
        done += len(chunk_labels)
        yield from pixels


def load_pathfinder(task_cfg: Mapping[str, Any], cache_root: str | os.PathLike, progress: bool = True) -> TokenCache:
    """Build (first time) or open the token cache of task ``pathfinder`` or ``pathx``.

    ``task_cfg`` keys: ``name``, ``grid_shape``, ``max_length``, ``pad_id`` (checked for
    consistency), ``source`` (``generator`` | ``release``), ``release_dir``, ``difficulty`` and
    ``split_seed`` (release), ``generator`` (``seed``, ``num_train``, ``num_val``, ``num_test``,
    optional ``workers`` which does not change the content, and any
    :class:`~lra.data.pathfinder_generator.PathfinderParams` field to override).

    The cache lives in ``cache_root/<name>/<key>/`` where ``<key>`` hashes every parameter that
    changes its content (for the release: the metadata files' sha256 and every image's relative
    path and size).  Writing is atomic: an error (a corrupt PNG, an interruption) leaves no cache.
    """
    cfg = _resolve_config(task_cfg)
    name, resolution = cfg["name"], cfg["resolution"]
    task_root = Path(cache_root).expanduser() / name
    key: dict[str, Any] = {"source": cfg["source"], "resolution": resolution, "vocab_size": len(PIXEL_VOCAB)}
    listing = None
    if cfg["source"] == "generator":
        key.update(generator=asdict(cfg["params"]), counts=cfg["counts"], generator_version=GENERATOR_VERSION)
        directory = task_root / params_key(f"gen-seed{cfg['counts']['seed']}", key)
    else:
        release_dir = cfg["release_dir"] or release_root(task_cfg, cache_root, needs=f"pathfinder{resolution}",
                                                         progress=progress)
        folder = find_release_folder(release_dir, resolution, cfg["difficulty"])
        listing = read_release_listing(folder, progress=progress)
        files = hashlib.sha256()
        for i, path in enumerate(listing.paths):
            files.update(f"{listing.relative(i)}\0{path.stat().st_size}\n".encode())
        key.update(difficulty=cfg["difficulty"], split_seed=cfg["split_seed"], reader_version=READER_VERSION,
                   metadata_sha256=listing.metadata_sha256, images_sha256=files.hexdigest())
        directory = task_root / params_key(f"release-{cfg['difficulty']}-split{cfg['split_seed']}", key)

    def build(bar):
        if listing is None:
            counts = cfg["counts"]
            sizes = {"train": counts["num_train"], "val": counts["num_val"], "test": counts["num_test"]}
            splits = {}
            for index, split in enumerate(SPLITS):
                task = bar.add_task(f"{name}: generating {split}", total=sizes[split], start=False)
                labels = np.zeros(sizes[split], np.int32)  # filled while write_cache consumes the rows
                rows = _generated_split(cfg, index, sizes[split], labels, on_chunk=_advance(bar, task))
                splits[split] = (rows, labels)
            source = {
                "kind": "generator",
                "description": "seeded re-implementation of drewlinsley/pathfinder snakes2.py with LRA's parameters "
                               "(lra_benchmarks/data/pathfinder.py)",
                "generator_version": GENERATOR_VERSION,
            }
        else:
            if listing.empty:
                log.warning("%s: skipped %d zero-byte image(s): %s", name, len(listing.empty),
                            ", ".join(listing.empty[:5]))
            parts = split_indices(len(listing), cfg["split_seed"])
            splits = {}
            split_lists = {}
            for split in SPLITS:
                idx = parts[split]
                names = "\n".join(listing.relative(i) for i in idx.tolist())
                split_lists[split] = {"count": int(idx.size),
                                      "files_sha256": hashlib.sha256(names.encode()).hexdigest()}
                task = bar.add_task(f"{name}: decoding {split}", total=int(idx.size), start=False)
                rows = (decode_image(listing.paths[i], resolution) for i in idx.tolist())
                splits[split] = (_rows_with_progress(rows, bar, task), listing.labels[idx])
            source = {
                "kind": "release",
                "description": f"LRA release archive, pathfinder{resolution}/{cfg['difficulty']}",
                "folder": str(listing.folder.resolve()),
                "num_images": len(listing) + len(listing.empty),
                "skipped_empty": len(listing.empty),
                "skipped_empty_files": listing.empty,
                "split": {"method": "numpy default_rng(split_seed).permutation; 80/10/10 floor",
                          "split_seed": cfg["split_seed"], **split_lists},
            }
        return splits, {"task": name, "source": source, "tokenizer": dict(PIXEL_TOKENIZER), "vocab": list(PIXEL_VOCAB),
                        "pad_id": None, "grid_shape": [resolution, resolution]}

    cache = open_or_build(directory, key, build, progress, bytes_=False)
    if listing is not None:
        log.info("%s: %d images (%d zero-byte skipped)", name, len(listing), len(listing.empty))
    return cache
