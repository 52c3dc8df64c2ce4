"""Image: CIFAR-10 as a sequence of 1,024 grayscale pixels (LRA Sec. 3.4; Krizhevsky 2009).

Data: TFDS ``cifar10`` 3.0.2 with the official split (``lra_benchmarks/image/input_pipeline.py``):
train = ``train[:90%]`` (45,000), val = ``train[90%:]`` (5,000), test = ``test`` (10,000).

Sources (``task.source``):

``raw`` (no TensorFlow)
    ``cifar-10-binary.tar.gz`` (https://www.cs.toronto.edu/~kriz/, 170,052,171 bytes), the
    archive the TFDS builder reads: ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and
    ``test_batch.bin``, each record one label byte then 3,072 pixel bytes (1,024 red, 1,024
    green, 1,024 blue, row-major).  The binary format is parsed directly; nothing is unpickled.
    Examples are put in TFDS's order (key = running index over the batch files), so
    ``train[:90%]`` picks the same images as the official pipeline (``lra/data/tfds_sources.py``).
``tfds``
    A prepared ``array_record`` copy read with ``tfds.data_source`` and its ``train[:90%]`` slices.

Encoding (``lra/data/encodings.py``): TensorFlow's ``tf.image.rgb_to_grayscale`` bit for bit (quirk
D9): uint8 -> float32 times 1/255, weights (0.2989, 0.5870, 0.1140) in float32, back to uint8 by
multiplying by 255.5 and truncating.  The 32 x 32 pixels, row-major, are the tokens (vocab 256,
no normalisation).  Pixel tasks have no padding: ``task.pad_id`` is null, unless the protocol
turns on ``quirks.pixel_zero_is_padding`` (D1), under which black pixels are masked as in the
official and PyTorch-lineage code.
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
from lra.data.encodings import GRAYSCALE_TOKENIZER, PIXEL_VOCAB, rgb_to_grayscale
from lra.data.tfds_sources import choose_source, tfds_order, tfds_split
from lra.data.token_cache import TokenCache, open_or_build, params_key

__all__ = ["CIFAR_COUNTS", "CIFAR_SIZE", "CIFAR_URL", "load_image", "read_cifar_archive"]

log = logging.getLogger(__name__)

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_SIZE = 170_052_171  # bytes (TFDS url_checksums/cifar10.txt)
#: Images per split of the official LRA split of TFDS cifar10.
CIFAR_COUNTS: dict[str, int] = {"train": 45_000, "val": 5_000, "test": 10_000}
TRAIN_FRACTION = 0.9  # train[:90%] / train[90%:]
RECORD_BYTES = 1 + 3 * 32 * 32
NUM_CLASSES = 10
_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_MEMBER = re.compile(r"^cifar-10-batches-bin/(data_batch_[1-5]|test_batch)\.bin$")


def _parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch -> (images uint8 (n, 32, 32, 3), labels int32)."""
    if not data or len(data) % RECORD_BYTES:
        raise ArchiveError(f"{where}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte records")
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise ArchiveError(f"{where}: record {int(bad[0])} has label {int(labels[bad[0]])}, not in 0..9")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def read_cifar_archive(path: str | os.PathLike, bar=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": ...}`` (TFDS splits, TFDS order) from the binary archive."""
    path = Path(path)
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    task = bar.add_task(f"Image: reading {path.name}", total=path.stat().st_size) if bar is not None else None
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            for member in tar:
                match = _MEMBER.match(member.name)
                if match and member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    batches[match.group(1)] = _parse_batch(handle.read(), f"{path}: member {member.name}")
                    if bar is not None:
                        bar.update(task, completed=raw.tell())
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(f"{path}: cannot be read as the CIFAR-10 binary tar.gz archive: {error}") from error
    missing = [f"cifar-10-batches-bin/{name}.bin" for name in (*(f[:-4] for f in _TRAIN_FILES), "test_batch")
               if name not in batches]
    if missing:
        raise ArchiveError(f"{path}: members {', '.join(missing)} are missing; is it cifar-10-binary.tar.gz "
                           f"({CIFAR_URL})?")
    train = [batches[f[:-4]] for f in _TRAIN_FILES]
    out = {"train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
           "test": batches["test_batch"]}
    for split, (images, labels) in out.items():
        order = tfds_order(range(len(labels)), split)  # TFDS key = running index
        out[split] = (images[order], labels[order])
    if bar is not None:
        bar.update(task, completed=path.stat().st_size)
    return out


def _read_tfds(data_dir: str | None, bar) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, tfds_name in (("train", "train[:90%]"), ("val", "train[90%:]"), ("test", "test")):
        source = tfds_split("cifar10", tfds_name, data_dir)
        task = bar.add_task(f"Image: reading TFDS cifar10 {tfds_name}", total=len(source))
        images = np.empty((len(source), 32, 32, 3), np.uint8)
        labels = np.empty(len(source), np.int32)
        for i in range(len(source)):
            example = source[i]
            images[i], labels[i] = example["image"], int(example["label"])
            if i % 1000 == 0:
                bar.update(task, completed=i)
        bar.update(task, completed=len(source))
        out[split] = (images, labels)
    return out


def _split_train(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """TFDS train / test -> the official train[:90%] / train[90%:] / test."""
    images, labels = data["train"]
    cut = round(TRAIN_FRACTION * len(labels))  # TFDS percent slices round to the closest example
    return {"train": (images[:cut], labels[:cut]), "val": (images[cut:], labels[cut:]), "test": data["test"]}


def load_image(task_cfg: Mapping[str, Any], cache_root: str | os.PathLike, progress: bool = True) -> TokenCache:
    """Build (first time) or open the Image cache.  Keys: ``source`` (raw | tfds), ``raw_archive``,
    ``download``, ``tfds_data_dir``."""
    if task_cfg.get("name", "image") != "image":
        raise ValueError(f"load_image got a config for task {task_cfg.get('name')!r}")
    source = choose_source(task_cfg, cache_root, task="image", filename="cifar-10-binary.tar.gz", url=CIFAR_URL,
                           size=CIFAR_SIZE, tfds_name="cifar10", progress=progress)
    params: dict[str, Any] = {"source": source.kind, "encoding": GRAYSCALE_TOKENIZER["name"],
                              "encoding_version": GRAYSCALE_TOKENIZER["version"],
                              "split": "train[:90%] / train[90%:] / test", **source.params}

    def build(bar):
        data = (_split_train(read_cifar_archive(source.archive, bar)) if source.kind == "raw"
                else _read_tfds(source.tfds_data_dir, bar))
        for split, (_, labels) in data.items():
            if len(labels) != CIFAR_COUNTS[split]:
                log.warning("Image: %s split has %d images; the official split has %d", split, len(labels),
                            CIFAR_COUNTS[split])
        splits = {split: (rgb_to_grayscale(images).reshape(len(images), -1), labels)
                  for split, (images, labels) in data.items()}
        return splits, {"task": "image", "source": source.describe(), "vocab": PIXEL_VOCAB, "grid_shape": [32, 32],
                        "padding": "none: every row has 1,024 pixels and id 0 is a black pixel (task.pad_id null)",
                        "tokenizer": dict(GRAYSCALE_TOKENIZER)}

    return open_or_build(Path(cache_root).expanduser() / "image" / params_key(source.kind, params), params, build,
                         progress)
