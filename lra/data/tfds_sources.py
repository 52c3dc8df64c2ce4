"""The TFDS datasets of LRA (``imdb_reviews``, ``cifar10``) without TensorFlow, in TFDS's own order.

Two sources give the same examples:

``tfds``
    A TFDS dataset already prepared in the ``array_record`` file format, read with
    ``tfds.data_source`` (tensorflow-datasets 4.9.10 + the ``array_record`` package; no
    TensorFlow).  Preparing needs TensorFlow once, e.g.
    ``tfds build imdb_reviews --file_format=array_record`` (TFDS's default TFRecord format has no
    random access and is refused by ``data_source``).

``raw``
    The archive TFDS itself downloads (``aclImdb_v1.tar.gz``, ``cifar-10-binary.tar.gz``), parsed
    directly.  Examples are put in the order TFDS's writer gives them: TFDS sorts a split's
    examples by the 128-bit md5 of the split name followed by the example key
    (``tensorflow_datasets/core/hashing.py``, ``shuffle.py``; the key is the member path for IMDb
    and the running index for CIFAR-10).  So slices such as CIFAR-10's ``train[:90%]`` select the
    same images as in the official pipeline [derived from the TFDS 4.9.10 source; not checked
    against a TensorFlow-prepared copy].

:func:`choose_source` is the one place where a TFDS task (Text, Image) turns ``task.source`` into
one of the two: the archive (found, or downloaded) and its sha256 (memoised by size, mtime and
inode in ``<data_dir>/<task>/.raw-sha256.json``), or the TFDS name and folder; both go into the
cache's parameters, so another archive or TFDS copy gets a cache of its own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.archives import download
from lra.data.token_cache import file_sha256

__all__ = ["TaskSource", "choose_source", "raw_archive", "tfds_order", "tfds_split"]


def tfds_order(keys: Sequence[str | int], split: str) -> np.ndarray:
    """Indices that put ``keys`` in TFDS's order for ``split``: ascending md5(split + str(key))."""
    salt = hashlib.md5(split.encode("utf-8"))

    def hashed(key) -> int:
        h = salt.copy()
        h.update(str(key).encode("utf-8"))
        return int(h.hexdigest(), 16)

    return np.array(sorted(range(len(keys)), key=lambda i: hashed(keys[i])), dtype=np.int64)


def raw_archive(task_cfg: Mapping[str, Any], data_dir: str | os.PathLike, *, filename: str, url: str,
                size: int, progress: bool = True) -> Path:
    """The raw archive: ``task.raw_archive``, else ``<data_dir>/downloads/<filename>``, downloaded
    (with resume) when missing and ``task.download`` is true."""
    configured = task_cfg.get("raw_archive")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"task.raw_archive={path} does not exist. Get {filename} from {url} "
                                    f"({size:,} bytes).")
        return path
    path = Path(data_dir).expanduser() / "downloads" / filename
    if path.is_file():
        return path
    if not task_cfg.get("download", False):
        raise FileNotFoundError(
            f"{path} not found and task.download=false. Run `make data TASK={task_cfg.get('name')}` "
            f"(downloads {filename}, {size / 1e6:.0f} MB, from {url}), or fetch it yourself and set "
            f"task.raw_archive=/path/to/{filename}, or use task.source=tfds with a prepared TFDS copy.")
    return download(url, path, expected_bytes=size, progress=progress)


def tfds_split(name: str, split: str, data_dir: str | None):
    """``tfds.data_source(name, split)`` with an error that says how to prepare the data."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # TFDS raises several types (NotImplementedError, AssertionError, ...)
        where = data_dir or "~/tensorflow_datasets (TFDS default)"
        raise FileNotFoundError(
            f"TFDS dataset {name!r} split {split!r} cannot be read from task.tfds_data_dir={where}: {error}. "
            f"Prepare it once where TensorFlow is installed with `tfds build {name} --file_format=array_record "
            f"--data_dir=<dir>` and set task.tfds_data_dir=<dir>, or use task.source=raw (no TensorFlow).") from error


@dataclass(frozen=True)
class TaskSource:
    """Where a TFDS task's examples come from: ``kind`` ``raw`` (``archive``) or ``tfds``
    (``tfds_name`` in ``tfds_data_dir``); ``params`` is the part of the cache parameters that
    names it."""

    kind: str
    url: str
    tfds_name: str
    archive: Path | None
    tfds_data_dir: str | None
    params: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """The manifest's ``source`` entry."""
        if self.kind == "raw":
            return {"kind": "raw", "url": self.url, "path": str(self.archive.resolve()), **self.params["archive"]}
        return {"kind": "tfds", **self.params["tfds"]}


def choose_source(task_cfg: Mapping[str, Any], data_dir: str | os.PathLike, *, task: str, filename: str, url: str,
                  size: int, tfds_name: str, progress: bool = True) -> TaskSource:
    """``task.source`` (``raw``, the default, or ``tfds``) of task ``task`` resolved: the raw archive
    (:func:`raw_archive`, hashed once per file version) or the TFDS dataset ``tfds_name`` in
    ``task.tfds_data_dir``.  An unknown ``task.source`` is a ValueError naming the key."""
    source = task_cfg.get("source", "raw")
    if source not in ("raw", "tfds"):
        raise ValueError(f"task.source={source!r}: {task.capitalize()} reads 'raw' ({filename}) or 'tfds'")
    if source == "raw":
        archive = raw_archive(task_cfg, data_dir, filename=filename, url=url, size=size, progress=progress)
        memo = Path(data_dir).expanduser() / task / ".raw-sha256.json"
        return TaskSource("raw", url, tfds_name, archive, None,
                          {"archive": {"name": archive.name, "sha256": file_sha256(archive, memo)}})
    data_dir_tfds = task_cfg.get("tfds_data_dir")
    return TaskSource("tfds", url, tfds_name, None, data_dir_tfds,
                      {"tfds": {"name": tfds_name, "data_dir": data_dir_tfds}})
