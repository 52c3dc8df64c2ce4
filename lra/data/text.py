"""Text: byte-level IMDb sentiment classification (LRA Sec. 3.2; Maas et al., ACL 2011).

Data: TFDS ``imdb_reviews`` (config ``plain_text``): 25,000 train and 25,000 test reviews, labels
neg = 0 / pos = 1.  There is no validation split; the official harness
(``lra_benchmarks/text_classification/input_pipeline.py``) validates on the **test** split, so
best-validation selection on Text is selection on test (reference quirk D5).  The cache stores
that choice as ``validation: test`` in its manifest and its ``val`` split is a copy of ``test``;
``task.validation: train_holdout`` validates on the last 10% of train instead (TFDS order).

Sources (``task.source``):

``raw`` (no TensorFlow)
    ``aclImdb_v1.tar.gz`` (http://ai.stanford.edu/~amaas/data/sentiment/, 84,125,825 bytes), the
    archive the TFDS builder reads.  As the builder does, a review is the member
    ``aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt`` with surrounding whitespace stripped
    (``bytes.strip``); examples are put in TFDS's order (``lra/data/tfds_sources.py``).
``tfds``
    A prepared ``array_record`` copy read with ``tfds.data_source``.

Encoding (TFDS ``ByteTextEncoder``, LRA issue #61; ``lra/data/encodings.py``): UTF-8 bytes + 1, so ids 1..256 and 0 =
padding, vocab 257.  The cache keeps whole reviews (or the first ``task.content_length`` bytes);
batches truncate/pad them to ``task.max_length`` (1,000 in the official config, 4K in the paper).
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.archives import ArchiveError
from lra.data.encodings import BYTE_TOKENIZER, BYTE_VOCAB, encode_bytes
from lra.data.tfds_sources import choose_source, tfds_order, tfds_split
from lra.data.token_cache import TokenCache, open_or_build, params_key

__all__ = ["IMDB_COUNTS", "IMDB_SIZE", "IMDB_URL", "load_text", "read_imdb_archive"]

log = logging.getLogger(__name__)

IMDB_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SIZE = 84_125_825  # bytes (TFDS imdb_reviews checksums.tsv)
#: Reviews per TFDS split (train and test; each half negative, half positive).
IMDB_COUNTS: dict[str, int] = {"train": 25_000, "test": 25_000}
LABELS = ("neg", "pos")  # TFDS ClassLabel order: id = index
HOLDOUT_SPLIT = 0.9  # validation=train_holdout: train[:90%] trains, train[90%:] validates
_MEMBER = re.compile(r"^aclImdb/(train|test)/(neg|pos)/\d+_\d+\.txt$")


def read_imdb_archive(path: str | os.PathLike, bar=None) -> dict[str, tuple[list[bytes], np.ndarray]]:
    """``{"train": (reviews, labels), "test": ...}`` from ``aclImdb_v1.tar.gz``, in TFDS's order.

    Raises :class:`~lra.data.archives.ArchiveError` naming the archive when it cannot be read or
    holds no reviews of a split.
    """
    path = Path(path)
    found: dict[str, list[tuple[str, bytes, int]]] = {"train": [], "test": []}
    task = bar.add_task(f"Text: reading {path.name}", total=path.stat().st_size) if bar is not None else None
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            for member in tar:
                match = _MEMBER.match(member.name)
                if not match or not member.isfile():
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                found[match.group(1)].append((member.name, handle.read().strip(), LABELS.index(match.group(2))))
                if bar is not None and len(found["train"]) % 500 == 0:
                    bar.update(task, completed=raw.tell())
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(f"{path}: cannot be read as the aclImdb tar.gz archive: {error}") from error
    out = {}
    for split, items in found.items():
        if not items:
            raise ArchiveError(f"{path}: no aclImdb/{split}/{{neg,pos}}/*.txt reviews; is it aclImdb_v1.tar.gz "
                               f"({IMDB_URL})?")
        if len(items) != IMDB_COUNTS[split]:
            log.warning("Text: %s has %d %s reviews; IMDb has %d", path, len(items), split, IMDB_COUNTS[split])
        order = tfds_order([name for name, _, _ in items], split)
        out[split] = ([items[i][1] for i in order], np.array([items[i][2] for i in order], np.int32))
    if bar is not None:
        bar.update(task, completed=path.stat().st_size)
    return out


def _read_tfds(data_dir: str | None, bar) -> dict[str, tuple[list[bytes], np.ndarray]]:
    out = {}
    for split in ("train", "test"):
        source = tfds_split("imdb_reviews/plain_text", split, data_dir)
        task = bar.add_task(f"Text: reading TFDS imdb_reviews {split}", total=len(source))
        texts, labels = [], []
        for i in range(len(source)):
            example = source[i]
            text = example["text"]
            texts.append(text.encode("utf-8") if isinstance(text, str) else bytes(text))
            labels.append(int(example["label"]))
            if i % 1000 == 0:
                bar.update(task, completed=i)
        bar.update(task, completed=len(source))
        out[split] = (texts, np.array(labels, np.int32))
    return out


def load_text(task_cfg: Mapping[str, Any], cache_root: str | os.PathLike, progress: bool = True) -> TokenCache:
    """Build (first time) or open the Text cache for ``task_cfg``.

    Keys: ``source`` (raw | tfds), ``raw_archive``, ``download``, ``tfds_data_dir``,
    ``content_length`` (bytes kept per review; null = all), ``validation`` (``test`` as the
    official harness, or ``train_holdout``).
    """
    if task_cfg.get("name", "text") != "text":
        raise ValueError(f"load_text got a config for task {task_cfg.get('name')!r}")
    validation = task_cfg.get("validation", "test")
    if validation not in ("test", "train_holdout"):
        raise ValueError(f"task.validation={validation!r}: 'test' (the official harness: IMDb has no validation "
                         "split) or 'train_holdout' (the last 10% of train in TFDS order, held out)")
    content = task_cfg.get("content_length")
    content = None if content is None else int(content)
    source = choose_source(task_cfg, cache_root, task="text", filename="aclImdb_v1.tar.gz", url=IMDB_URL,
                           size=IMDB_SIZE, tfds_name="imdb_reviews/plain_text", progress=progress)
    params: dict[str, Any] = {"source": source.kind, "encoding": BYTE_TOKENIZER["name"],
                              "encoding_version": BYTE_TOKENIZER["version"], "content_length": content,
                              "validation": validation, **source.params}

    def build(bar):
        reviews = (read_imdb_archive(source.archive, bar) if source.kind == "raw"
                   else _read_tfds(source.tfds_data_dir, bar))
        splits = {split: ([encode_bytes(t, content) for t in texts], labels)
                  for split, (texts, labels) in reviews.items()}
        if validation == "test":  # IMDb has no validation split: the official harness validates on test
            splits["val"] = splits["test"]
        else:  # train[:90%] / train[90%:], cut as TFDS percent slices are
            sequences, labels = splits["train"]
            cut = round(HOLDOUT_SPLIT * len(labels))
            splits["train"], splits["val"] = (sequences[:cut], labels[:cut]), (sequences[cut:], labels[cut:])
        return ({s: splits[s] for s in ("train", "val", "test")},
                {"task": "text", "source": source.describe(), "vocab": BYTE_VOCAB, "validation": validation,
                 "note": ("val is a copy of the IMDb test split, as in the official LRA harness (quirk D5)"
                          if validation == "test" else "val is the last 10% of the IMDb train split (TFDS order)"),
                 "tokenizer": dict(BYTE_TOKENIZER)})

    return open_or_build(Path(cache_root).expanduser() / "text" / params_key(source.kind, params), params, build,
                         progress)
