"""Task registry: a task config's ``name`` -> the function that prepares (once) and opens its cache.

Each loader takes the task config as a plain dict and the cache root, builds the on-disk cache on
first use (with progress) and returns a ``TokenCache`` with ``train``/``val``/``test`` splits;
``load_task`` then checks it (checksums, id and label ranges: ``token_cache.validate_cache``) and
refuses an empty split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from lra.data.encodings import BYTE_VOCAB, PIXEL_VOCAB
from lra.data.image import load_image
from lra.data.listops import load_listops, vocab_for
from lra.data.pathfinder import load_pathfinder
from lra.data.retrieval import load_retrieval
from lra.data.text import load_text
from lra.data.token_cache import CacheError, TokenCache, validate_cache

LOADERS: dict[str, Callable[..., TokenCache]] = {
    "listops": load_listops,
    "text": load_text,
    "retrieval": load_retrieval,
    "image": load_image,
    "pathfinder": load_pathfinder,  # Pathfinder-32
    "pathx": load_pathfinder,       # Path-X = Pathfinder-128
}


def load_task(task_cfg: Mapping, cache_root: str | Path, progress: bool = True) -> TokenCache:
    name = task_cfg.get("name")
    if name not in LOADERS:
        raise ValueError(f"task.name={name!r} has no data loader; known tasks: {sorted(LOADERS)}")
    cache = LOADERS[name](dict(task_cfg), cache_root, progress=progress)
    num_classes = task_cfg.get("num_classes")
    validate_cache(cache, int(num_classes) if num_classes is not None else None)
    for split in ("train", "val", "test"):
        if split in cache and len(cache[split]) == 0:
            raise CacheError(f"token cache {cache.directory}: the {split} split is empty (source: "
                             f"{cache.manifest.get('source')}); check the task's data files")
    return cache


def batch_length(task_cfg: Mapping) -> int:
    """Tokens per batch row: ``max_length``, twice that for two-document tasks (``dual_encoder``)."""
    return int(task_cfg["max_length"]) * (2 if task_cfg.get("dual_encoder") else 1)


def task_vocab_size(task_cfg: Mapping) -> int:
    """The token vocabulary size the task's loader produces, from its config alone (no data read):
    ListOps by tokenizer, byte tasks (Text, Retrieval) pad + 256 bytes, pixel tasks 256 gray levels."""
    name = task_cfg.get("name")
    if name == "listops":
        return len(vocab_for(task_cfg.get("tokenizer", "fixed")))
    if name in ("text", "retrieval"):
        return len(BYTE_VOCAB)
    if name in ("image", "pathfinder", "pathx"):
        return len(PIXEL_VOCAB)
    raise ValueError(f"task.name={name!r} has no known vocabulary; known tasks: {sorted(LOADERS)}")
