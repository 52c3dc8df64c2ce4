"""Builders of tiny data files in the real on-disk formats of the LRA tasks (no network)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def aan_line(label: str, text1: str, text2: str, ids=("a1", "b2")) -> str:
    return f"{label}\t{ids[0]}\t{ids[1]}\t{text1}\t{text2}\n"


def write_aan_files(folder: Path, counts=(12, 6, 5)) -> dict[str, list[tuple[int, str, str]]]:
    """``new_aan_pairs.{train,eval,test}.tsv`` with real columns; returns the pairs written per split."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for (split, fname), count in zip((("train", "train"), ("val", "eval"), ("test", "test")), counts):
        rows = []
        with open(folder / f"new_aan_pairs.{fname}.tsv", "w", encoding="utf-8") as f:
            for i in range(count):
                label = i % 2
                text1 = f"paper {split} {i} on attention é" + "x" * (7 * i)
                text2 = f"cited {i} ü" + "y" * (5 * i)
                f.write(aan_line(f"{label}.0" if i % 3 else str(label), text1, text2, (f"P{i}", f"Q{i}")))
                rows.append((label, text1, text2))
        written[split] = rows
    return written


def write_release_tar(path: Path, source: Path, prefix: str = "lra_release") -> Path:
    """A gzipped tar of ``source``'s content under ``prefix/`` (the release's layout)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=prefix)
    return path


def write_imdb_tar(path: Path, per_class: int = 3) -> dict[str, list[tuple[str, bytes, int]]]:
    """An aclImdb_v1.tar.gz look-alike; returns {split: [(member, stripped text, label)]}."""
    reviews: dict[str, list[tuple[str, bytes, int]]] = {"train": [], "test": []}
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "aclImdb/README", b"not a review")
        add_bytes(tar, "aclImdb/train/unsup/0_0.txt", b"unlabelled, skipped")
        add_bytes(tar, "aclImdb/train/urls_pos.txt", b"http://example")
        for split in ("train", "test"):
            for label, cls in enumerate(("neg", "pos")):
                for i in range(per_class):
                    text = f"  {split} {cls} review {i}: caf\u00e9 <br />great {'!' * i}\n".encode()
                    name = f"aclImdb/{split}/{cls}/{i}_{7 + label}.txt"
                    add_bytes(tar, name, text)
                    reviews[split].append((name, text.strip(), label))
    return reviews


def cifar_records(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random CIFAR-10 binary records: (images (n, 32, 32, 3) uint8, labels)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


def cifar_batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R plane, G plane, B plane
    return np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes()


def write_cifar_tar(path: Path, per_batch: int = 4, test: int = 5, corrupt: dict | None = None):
    """A cifar-10-binary.tar.gz look-alike; returns (train images, train labels, test images, test labels)
    in file order. ``corrupt`` = {member basename: bytes} replaces a member's content."""
    batches = [cifar_records(per_batch, seed) for seed in range(5)]
    test_batch = cifar_records(test, 99)
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n")
        for i, batch in enumerate(batches, start=1):
            name = f"data_batch_{i}.bin"
            add_bytes(tar, f"cifar-10-batches-bin/{name}", (corrupt or {}).get(name, cifar_batch_bytes(*batch)))
        add_bytes(tar, "cifar-10-batches-bin/test_batch.bin",
                  (corrupt or {}).get("test_batch.bin", cifar_batch_bytes(*test_batch)))
    train_images = np.concatenate([b[0] for b in batches])
    train_labels = np.concatenate([b[1] for b in batches])
    return train_images, train_labels, test_batch[0], test_batch[1]
