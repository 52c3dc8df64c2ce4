"""Retrieval (ACL Anthology Network): do two papers cite each other?  Byte-level, two documents.

Files (LRA release, ``tsv_data/``): ``new_aan_pairs.{train,eval,test}.tsv``, tab-separated, no
header, five columns ``label  id1  id2  text1  text2`` (the official reader,
``lra_benchmarks/matching/input_pipeline.py``, splits on every tab without quote handling and
parses ``label`` as a float that it casts to int).  Splits: train 147,086 / val (``eval``) 18,090 /
test 17,437 pairs (Nystromformer ``lra_config.py``, Skyformer ``config.py``, S4 ``aan.yaml``).

Encoding (as the official pipeline; ``lra/data/encodings.py``): each document's UTF-8 bytes + 1 (ids 1..256, 0 = padding,
vocab 257), cut to its first ``content_length`` bytes (default ``max_length``, 4,000 in every
protocol; the official code first cuts to 10,000 bytes and then to 4,000, which is the same).

Cache layout (one row per pair, so the generic batching needs no change): document 1 padded with
0 to ``max_length``, followed by document 2 (not padded; batching pads the row to
``2 * max_length``).  The dual encoder (``lra/model.py`` ``DualEncoder``) splits each row at
``max_length`` and encodes both halves with one shared tower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.encodings import BYTE_TOKENIZER, BYTE_VOCAB, encode_bytes
from lra.data.lra_release import release_root
from lra.data.token_cache import TokenCache, file_sha256, open_or_build, params_key

__all__ = ["AANFormatError", "RELEASE_COUNTS", "RELEASE_FILES", "encode_pair", "load_retrieval", "read_aan_tsv"]

log = logging.getLogger(__name__)

#: Split -> file name inside the release's ``tsv_data/``.
RELEASE_FILES: dict[str, str] = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
                                 "test": "new_aan_pairs.test.tsv"}
#: Pairs per split in the LRA release.
RELEASE_COUNTS: dict[str, int] = {"train": 147_086, "val": 18_090, "test": 17_437}


class AANFormatError(ValueError):
    """An AAN pairs TSV is malformed (the message names file and line)."""


def encode_pair(text1: bytes, text2: bytes, max_length: int, content_length: int | None = None) -> np.ndarray:
    """One cache row: document 1 padded with 0 to ``max_length``, then document 2 (both cut)."""
    keep = max_length if content_length is None else min(content_length, max_length)
    first, second = encode_bytes(text1, keep), encode_bytes(text2, keep)
    row = np.zeros(max_length + len(second), np.uint16)
    row[: len(first)] = first
    row[max_length:] = second
    return row


def read_aan_tsv(path: str | os.PathLike, limit: int | None = None) -> Iterator[tuple[int, bytes, bytes]]:
    """Yield ``(label, text1, text2)`` per line of an AAN pairs TSV (at most ``limit`` lines).

    Raises :class:`AANFormatError` naming the file and 1-based line for a line without exactly
    five tab-separated columns or with a label that is not 0 or 1.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"AAN file {path} does not exist") from None
    with handle:
        for lineno, line in enumerate(handle, start=1):
            if limit is not None and lineno > limit:
                return
            cols = line.rstrip(b"\r\n").split(b"\t")
            if len(cols) != 5:
                raise AANFormatError(f"{path}:{lineno}: expected 5 tab-separated columns "
                                     f"(label, id1, id2, text1, text2), found {len(cols)}")
            try:
                value = float(cols[0])
            except ValueError:
                value = None
            if value not in (0.0, 1.0):
                raise AANFormatError(f"{path}:{lineno}: label {cols[0][:20].decode('utf-8', 'replace')!r} "
                                     "is not 0 or 1")
            yield int(value), cols[3], cols[4]


def _resolve(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    if task_cfg.get("name", "retrieval") != "retrieval":
        raise ValueError(f"load_retrieval got a config for task {task_cfg.get('name')!r}")
    source = task_cfg.get("source", "release")
    if source != "release":
        raise ValueError(f"task.source={source!r}: Retrieval (AAN) comes only from the LRA release ('release')")
    max_length = int(task_cfg["max_length"])
    content = task_cfg.get("content_length")
    limit = task_cfg.get("read_limit")
    if max_length < 1 or (content is not None and int(content) < 1) or (limit is not None and int(limit) < 1):
        raise ValueError("task.max_length, task.content_length and task.read_limit must be positive")
    return {"max_length": max_length, "content_length": None if content is None else int(content),
            "read_limit": None if limit is None else int(limit)}


def load_retrieval(task_cfg: Mapping[str, Any], cache_root: str | os.PathLike, progress: bool = True) -> TokenCache:
    """Build (first time) or open the Retrieval cache for ``task_cfg``.

    Keys: ``max_length`` (per document), ``content_length`` (bytes kept per document, default
    ``max_length``), ``read_limit`` (read only the first N pairs of each file; smoke presets),
    and the release keys of :func:`lra.data.lra_release.release_root`.
    """
    cfg = _resolve(task_cfg)
    root = release_root(task_cfg, cache_root, needs="tsv_data", progress=progress)
    files = {split: root / "tsv_data" / name for split, name in RELEASE_FILES.items()}
    for split, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"AAN file {path} (split {split}) not found in the release at {root}")
    task_root = Path(cache_root).expanduser() / "retrieval"
    memo = task_root / ".release-sha256.json"
    params = {"source": "release", "encoding": BYTE_TOKENIZER["name"], "encoding_version": BYTE_TOKENIZER["version"], **cfg,
              "files": {s: {"name": p.name, "sha256": file_sha256(p, memo)} for s, p in files.items()}}

    def pairs(split: str, path: Path, labels: list[int], bar) -> Iterator[np.ndarray]:
        """Rows of one file, streamed into the cache (labels are collected on the way)."""
        task = bar.add_task(f"Retrieval: reading {path.name}", total=path.stat().st_size)
        done = 0
        for label, text1, text2 in read_aan_tsv(path, cfg["read_limit"]):
            labels.append(label)
            done += len(text1) + len(text2)
            if len(labels) % 1000 == 0:
                bar.update(task, completed=done)
            yield encode_pair(text1, text2, cfg["max_length"], cfg["content_length"])
        bar.update(task, completed=path.stat().st_size)
        if cfg["read_limit"] is None and len(labels) != RELEASE_COUNTS[split]:
            log.warning("Retrieval: %s has %d pairs; the LRA release has %d", path, len(labels), RELEASE_COUNTS[split])

    def build(bar):
        splits = {}
        for split, path in files.items():
            labels: list[int] = []  # write_cache reads labels after consuming the rows
            splits[split] = (pairs(split, path, labels, bar), labels)
        source = {"kind": "release", "description": "LRA release archive, tsv_data/new_aan_pairs.*.tsv",
                  "files": {s: {"path": str(p.resolve()), **params["files"][s]} for s, p in files.items()}}
        layout = (f"row = document 1 padded with 0 to {cfg['max_length']}, then document 2 "
                  f"(split at {cfg['max_length']})")
        return splits, {"task": "retrieval", "source": source, "vocab": BYTE_VOCAB, "layout": layout,
                        "tokenizer": dict(BYTE_TOKENIZER)}

    return open_or_build(task_root / params_key(f"release-L{cfg['max_length']}", params), params, build, progress)
