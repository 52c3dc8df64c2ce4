"""Content hashes used to name things by what they hold: data caches, run fingerprints, source files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces; non-JSON values (paths, dtypes) as ``str``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def json_sha256(value: Any) -> str:
    """sha256 (hex) of ``canonical_json(value)``: equal for equal configs, whatever their key order."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def path_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
