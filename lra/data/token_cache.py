"""On-disk cache of tokenised sequences, shared by the LRA tasks.

A cache directory holds, for every split ``<split>``:

``<split>.tokens.npy``
    A flat 1-D array with all sequences of the split concatenated, stored in
    the smallest unsigned integer dtype that can hold every id of the vocab.
``<split>.offsets.npy``
    ``int64``, length ``n + 1``; sequence ``i`` is
    ``tokens[offsets[i]:offsets[i + 1]]``.
``<split>.labels.npy``
    ``int32``, length ``n``.

plus ``manifest.json`` describing the content (format version, task, source,
tokenizer name and version, vocab, generation/reading parameters, per-split
counts and length statistics, and the sha256 and byte size of every array
file).

Ids are the tokenizer's ids; id 0 is reserved for padding, which is what
:meth:`TokenSplit.gather` pads with (pixel tasks have no padding: their
sequences are all full length and the manifest's ``pad_id`` is ``None``).

Writes are atomic: :func:`write_cache` fills a hidden temporary sibling
directory and renames it into place only once every file and the manifest are
complete (``lra/atomic_files.py``), so an interrupted write never leaves a
half-written cache behind. Leftover temporary directories of dead writers are
removed by the next write.
Reads are cheap: :func:`read_cache` memory-maps the arrays and checks only
sizes and shapes unless ``verify=True`` asks for a full sha256 check.
:func:`validate_cache` is what every run calls (``lra.data.tasks.load_task``):
once per process and cache, every file's sha256 against the manifest (memoised
in ``.verified.json`` by size, mtime and inode, so an unchanged file is hashed
once), token ids below the vocabulary size and labels within the task's
classes. A cache that fails is a :class:`CacheError` naming the file, never a
run that trains on it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lra.atomic_files import best_effort_write_text, building_directory, install_directory
from lra.digest import json_sha256, path_sha256

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CacheError",
    "TokenCache",
    "TokenSplit",
    "file_sha256",
    "open_or_build",
    "params_key",
    "read_cache",
    "token_dtype_for",
    "validate_cache",
    "write_cache",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Size of the hand-written .npy header of the tokens file (fixed, so it can be
# rewritten in place once the total length is known).
_NPY_HEADER_BYTES = 128
_WRITE_BUFFER = 1 << 20


class CacheError(RuntimeError):
    """A token cache is missing, incomplete, corrupt or of another format."""


def token_dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids ``0 .. vocab_size - 1``."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


@dataclass(eq=False)
class TokenSplit:
    """One split of a cache: ragged token sequences plus labels.

    ``tokens`` is a read-only memory map; ``offsets`` and ``labels`` are small
    and memory-mapped too.  Sequence ``i`` is ``tokens[offsets[i]:offsets[i+1]]``.
    """

    name: str
    tokens: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    _flat: np.ndarray = field(init=False, repr=False)
    _offs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Plain-ndarray views: slicing an np.memmap goes through the subclass
        # machinery, which costs several microseconds per slice.
        self._flat = self.tokens.view(np.ndarray)
        self._offs = np.asarray(self.offsets, dtype=np.int64).view(np.ndarray)

    def __len__(self) -> int:
        return len(self._offs) - 1

    @cached_property
    def lengths(self) -> np.ndarray:
        """Length of every sequence (``int64``, shape ``(n,)``)."""
        return np.diff(self._offs)

    def sequence(self, index: int) -> np.ndarray:
        """Sequence ``index`` (a read-only view into the memory map)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for split {self.name!r} of size {n}")
        index %= n
        return self._flat[self._offs[index] : self._offs[index + 1]]

    def gather(
        self,
        indices: Iterable[int] | np.ndarray,
        max_length: int,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Copy the chosen sequences into a right-padded ``int32`` batch.

        Each row holds one sequence truncated to ``max_length`` and padded with
        id 0.  ``out`` (shape ``(len(indices), max_length)``, dtype ``int32``)
        is reused when given.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = idx[(idx < 0) | (idx >= n)][0]
            raise IndexError(f"index {bad} out of range for split {self.name!r} of size {n}")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        shape = (idx.size, int(max_length))
        if out is None:
            out = np.zeros(shape, dtype=np.int32)
        else:
            if out.shape != shape or out.dtype != np.int32:
                raise ValueError(f"out must be int32 of shape {shape}, got {out.dtype} {out.shape}")
            out.fill(0)
        starts = self._offs[idx]
        ends = np.minimum(self._offs[idx + 1], starts + max_length)
        flat = self._flat
        for row, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
            out[row, : e - s] = flat[s:e]
        return out


@dataclass(eq=False)
class TokenCache:
    """A cache read by :func:`read_cache`: the manifest and one split per name."""

    directory: Path
    manifest: dict[str, Any]
    splits: dict[str, TokenSplit]

    def __getitem__(self, split: str) -> TokenSplit:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(
                f"split {split!r} not in cache {self.directory} (has {sorted(self.splits)})"
            ) from None

    def __contains__(self, split: object) -> bool:
        return split in self.splits

    @property
    def vocab(self) -> list[str]:
        return list(self.manifest["vocab"])

    @property
    def vocab_size(self) -> int:
        return len(self.manifest["vocab"])

    @property
    def content_sha256(self) -> str:
        """What the cache holds, wherever it lies: a hash of the vocabulary and of every array
        file's sha256 in the manifest (no file is read)."""
        files = {name: {kind: info["sha256"] for kind, info in meta["files"].items()}
                 for name, meta in self.manifest["splits"].items()}
        return json_sha256({"vocab": self.manifest["vocab"], "files": files})


def read_cache(directory: str | os.PathLike, verify: bool = False) -> TokenCache:
    """Open the cache in ``directory`` with memory-mapped arrays.

    Always checks that the manifest exists and has the expected format version,
    and that every array file exists with the recorded byte size, dtype and
    shape.  ``verify=True`` also recomputes every file's sha256.  Any problem
    raises :class:`CacheError` naming the directory.
    """
    d = Path(directory)
    if not d.is_dir():
        raise CacheError(f"token cache {d}: directory does not exist")
    mpath = d / MANIFEST_NAME
    if not mpath.is_file():
        raise CacheError(f"token cache {d}: {MANIFEST_NAME} is missing (incomplete or foreign directory)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"token cache {d}: {MANIFEST_NAME} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise CacheError(f"token cache {d}: {MANIFEST_NAME} is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(
            f"token cache {d}: format version {version!r}, this code reads version {FORMAT_VERSION}; "
            "delete the directory to rebuild it"
        )
    try:
        split_meta = manifest["splits"]
        dtype = np.dtype(manifest["token_dtype"])
        if not isinstance(split_meta, dict):
            raise TypeError("'splits' is not an object")
    except (KeyError, TypeError) as exc:
        raise CacheError(f"token cache {d}: malformed manifest ({exc})") from exc

    splits: dict[str, TokenSplit] = {}
    for name, meta in split_meta.items():
        arrays = {}
        try:
            files = meta["files"]
            count = int(meta["count"])
            for kind, want_dtype in (("tokens", dtype), ("offsets", np.dtype(np.int64)), ("labels", np.dtype(np.int32))):
                info = files[kind]
                path = d / info["name"]
                if not path.is_file():
                    raise CacheError(f"token cache {d}: file {info['name']} of split {name!r} is missing")
                size = path.stat().st_size
                if size != info["bytes"]:
                    raise CacheError(
                        f"token cache {d}: file {info['name']} has {size} bytes, manifest says {info['bytes']}"
                    )
                if verify:
                    digest = path_sha256(path)
                    if digest != info["sha256"]:
                        raise CacheError(
                            f"token cache {d}: checksum mismatch for {info['name']} "
                            f"(sha256 {digest}, manifest says {info['sha256']})"
                        )
                try:
                    arr = np.load(path, mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise CacheError(f"token cache {d}: cannot load {info['name']}: {exc}") from exc
                if arr.dtype != want_dtype or arr.ndim != 1:
                    raise CacheError(
                        f"token cache {d}: {info['name']} is {arr.dtype}{arr.shape}, expected 1-D {want_dtype}"
                    )
                arrays[kind] = arr
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"token cache {d}: malformed manifest entry for split {name!r} ({exc})") from exc
        tok, off, lab = arrays["tokens"], arrays["offsets"], arrays["labels"]
        if len(off) != count + 1 or len(lab) != count or (count and int(off[-1]) != len(tok)) or int(off[0]) != 0:
            raise CacheError(
                f"token cache {d}: split {name!r} arrays are inconsistent "
                f"(count {count}, offsets {len(off)}, labels {len(lab)}, tokens {len(tok)})"
            )
        splits[name] = TokenSplit(name=name, tokens=tok, offsets=off, labels=lab)
    return TokenCache(directory=d, manifest=manifest, splits=splits)


VERIFIED_MEMO = ".verified.json"
_validated: set[tuple] = set()  # (directory, file stamps, num_classes) checked by this process


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def validate_cache(cache: TokenCache, num_classes: int | None = None) -> TokenCache:
    """Check a cache's content before a run uses it; raises :class:`CacheError` naming the file.

    - every array file's sha256 equals the manifest's (hashed once per file version: the result
      is memoised in ``<cache>/.verified.json`` by size, mtime and inode);
    - every token id is below the vocabulary size (the largest id is memoised the same way);
    - every label is in ``0 .. num_classes - 1`` (when given).

    Done once per process and cache; an unchanged cache costs a few ``stat`` calls afterwards.
    """
    d = Path(cache.directory)
    entries = [(name, kind, info) for name, meta in cache.manifest["splits"].items()
               for kind, info in meta["files"].items()]
    stamps = tuple(tuple(_stamp(d / info["name"])) for _, _, info in entries)
    key = (str(d.resolve()), stamps, num_classes)
    if key in _validated:
        return cache
    memo_path = d / VERIFIED_MEMO
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    vocab_size, changed = cache.vocab_size, False
    for (name, kind, info), stamp in zip(entries, stamps):
        entry = memo.get(info["name"])
        known = isinstance(entry, dict) and entry.get("stamp") == list(stamp)
        if not (known and entry.get("sha256") == info["sha256"]):
            digest = path_sha256(d / info["name"])
            if digest != info["sha256"]:
                raise CacheError(f"token cache {d}: checksum mismatch for {info['name']} (sha256 {digest}, "
                                 f"manifest says {info['sha256']}): the file changed after the cache was written; "
                                 "delete the directory to rebuild it")
            entry = {"stamp": list(stamp), "sha256": digest}
            if kind == "tokens":
                tokens = cache[name].tokens
                entry["max"] = int(tokens.max()) if len(tokens) else -1
            memo[info["name"]], changed = entry, True
        if kind == "tokens" and entry.get("max", -1) >= vocab_size:
            raise CacheError(f"token cache {d}: {info['name']} holds token id {entry['max']}, but the manifest's "
                             f"vocabulary has {vocab_size} entries (ids 0..{vocab_size - 1}); the cache is corrupt "
                             "or was written by another tokenizer: delete the directory to rebuild it")
    if num_classes is not None:
        for name, split in cache.splits.items():
            labels = np.asarray(split.labels)
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
                raise CacheError(f"token cache {d}: split {name!r} has label {int(labels[bad])} at example {bad}, "
                                 f"outside the task's {num_classes} classes (0..{num_classes - 1}); the cache "
                                 "does not belong to this task or is corrupt: delete the directory to rebuild it")
    if changed:  # a read-only cache is checked again by the next process; nothing is wrong
        best_effort_write_text(memo_path, json.dumps(memo, indent=1))
    _validated.add(key)
    return cache


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    """A version-1.0 .npy header of exactly ``_NPY_HEADER_BYTES`` bytes."""
    descr = np.lib.format.dtype_to_descr(dtype)
    text = "{'descr': %r, 'fortran_order': False, 'shape': (%d,), }" % (descr, length)
    room = _NPY_HEADER_BYTES - 10 - 1  # magic(6) + version(2) + len(2), trailing newline
    if len(text) > room:
        raise ValueError("npy header too long")  # impossible for 1-D arrays
    text = text.ljust(room) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _write_split(
    tmp: Path,
    name: str,
    sequences: Iterable[np.ndarray],
    labels: np.ndarray,
    dtype: np.dtype,
    vocab_size: int,
) -> dict[str, Any]:
    tok_name, off_name, lab_name = f"{name}.tokens.npy", f"{name}.offsets.npy", f"{name}.labels.npy"
    offsets = [0]
    total = 0
    min_len: int | None = None
    max_len = 0
    with open(tmp / tok_name, "wb", buffering=_WRITE_BUFFER) as f:
        f.write(_npy_header(dtype, 0))
        for i, seq in enumerate(sequences):
            arr = np.asarray(seq)
            if arr.ndim != 1:
                raise ValueError(f"split {name!r}: sequence {i} is not 1-D (shape {arr.shape})")
            if arr.size:
                if arr.dtype.kind not in "iu":
                    raise ValueError(f"split {name!r}: sequence {i} has non-integer dtype {arr.dtype}")
                lo, hi = int(arr.min()), int(arr.max())
                if lo < 0 or hi >= vocab_size:
                    raise ValueError(
                        f"split {name!r}: sequence {i} has ids in [{lo}, {hi}], outside the vocab of size {vocab_size}"
                    )
            n = int(arr.size)
            f.write(arr.astype(dtype, copy=False).tobytes())
            total += n
            offsets.append(total)
            max_len = max(max_len, n)
            min_len = n if min_len is None else min(min_len, n)
        f.flush()
        f.seek(0)
        f.write(_npy_header(dtype, total))
    count = len(offsets) - 1
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise ValueError(f"split {name!r}: {count} sequences but labels have shape {labels.shape}")
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"split {name!r}: labels must be integers, got {labels.dtype}")
    np.save(tmp / off_name, np.asarray(offsets, dtype=np.int64))
    np.save(tmp / lab_name, labels.astype(np.int32))
    files = {}
    for kind, fname in (("tokens", tok_name), ("offsets", off_name), ("labels", lab_name)):
        p = tmp / fname
        files[kind] = {"name": fname, "bytes": p.stat().st_size, "sha256": path_sha256(p)}
    return {
        "count": count,
        "num_tokens": total,
        "min_length": min_len if min_len is not None else 0,
        "max_length": max_len,
        "mean_length": (total / count) if count else 0.0,
        "files": files,
    }


def write_cache(
    directory: str | os.PathLike,
    splits: Mapping[str, tuple[Iterable[np.ndarray], np.ndarray]],
    manifest_extra: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a cache atomically and return its directory.

    ``splits`` maps a split name to ``(sequences, labels)`` where ``sequences``
    is any iterable of 1-D integer arrays (consumed once, streamed to disk) and
    ``labels`` an integer array with one entry per sequence (read only after
    ``sequences`` is consumed, so a generator may fill a list as it goes).

    ``manifest_extra`` must contain ``"task"`` (str) and ``"vocab"`` (list of
    token strings, index = id, id 0 = padding); it usually also holds
    ``"source"`` (dict), ``"tokenizer"`` (``{"name", "version"}``) and
    ``"params"`` (dict) and ``"pad_id"`` (default 0; ``None`` where no id is
    padding, as for pixels); any further JSON-serialisable keys are stored as
    they are.

    Everything is written into a hidden temporary sibling directory which is
    renamed to ``directory`` only once complete.  If ``directory`` already
    exists, :class:`FileExistsError` is raised unless ``overwrite`` is true.
    If another process completed the same directory first, its copy is kept
    and ours is discarded.
    """
    target = Path(directory)
    extra = dict(manifest_extra)
    if "task" not in extra or "vocab" not in extra:
        raise ValueError("manifest_extra needs at least 'task' and 'vocab'")
    vocab = [str(t) for t in extra["vocab"]]
    if not vocab:
        raise ValueError("vocab must not be empty")
    for name in splits:
        if not name or "/" in name or name.startswith(".") or name != name.strip():
            raise ValueError(f"bad split name {name!r}")
    if target.exists() and not overwrite:
        raise FileExistsError(f"token cache {target} already exists")
    dtype = token_dtype_for(len(vocab))

    with building_directory(target) as tmp:
        split_meta = {}
        for name, (sequences, labels) in splits.items():
            split_meta[name] = _write_split(tmp, name, sequences, labels, dtype, len(vocab))
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "task": extra.pop("task"),
            "source": extra.pop("source", {}),
            "tokenizer": extra.pop("tokenizer", {}),
            "params": extra.pop("params", {}),
            "vocab": vocab,
            "vocab_size": len(vocab),
            "pad_id": extra.pop("pad_id", 0),  # None for pixel tasks: every id is a real token
            "token_dtype": dtype.name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "splits": split_meta,
        }
        extra.pop("vocab")
        for k, v in extra.items():
            manifest.setdefault(k, v)
        text = json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False)
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        # Another writer that finished first keeps its copy (ours is discarded).
        install_directory(tmp, target, overwrite=overwrite, complete=MANIFEST_NAME)
    return target


# --------------------------------------------------------------------------- #
# Building a task's cache once
# --------------------------------------------------------------------------- #


def file_sha256(path: Path, memo_path: Path) -> str:
    """sha256 of a file, memoised by (size, mtime_ns, inode) in ``memo_path``."""
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = path_sha256(path)
    memo[key] = {"stamp": stamp, "sha256": digest}
    best_effort_write_text(memo_path, json.dumps(memo, indent=1))  # the memo only saves time
    return digest


def params_key(prefix: str, params: Mapping[str, Any]) -> str:
    """Cache directory name: a readable ``prefix`` plus a hash of every content parameter."""
    return f"{prefix}-{json_sha256(params)[:12]}"


def open_or_build(
    directory: str | os.PathLike,
    params: Mapping[str, Any],
    build: Callable[[Any], tuple[Mapping[str, tuple[Iterable[np.ndarray], Any]], Mapping[str, Any]]],
    progress: bool = True,
    *,
    bytes_: bool = True,
) -> TokenCache:
    """Open the cache in ``directory``, or build it first with ``build(bar) -> (splits, manifest_extra)``.

    Every task loader ends here: it resolves its config into ``params`` (every parameter that
    changes the content; the directory name is usually ``params_key(prefix, params)``) and a
    ``build`` function that reads or generates the data.  ``bar`` is a rich progress bar (byte
    counts, or plain counts with ``bytes_=False``) that stays live while the splits are written,
    so ``splits`` may hold generators that read their source lazily; a split's labels may be a
    list or array that its generator fills, since :func:`write_cache` reads the labels after the
    sequences.  ``params`` is stored as the manifest's ``params``; the cache that comes back,
    found or just built (or completed first by another process), must carry exactly these
    ``params``, else :class:`CacheError`.  Building goes through :func:`write_cache`, so an
    interrupted or failing build leaves nothing behind.
    """
    from lra.data.preparation import progress_bar

    directory = Path(directory)
    if directory.exists():
        log.info("%s: using cache %s", directory.parent.name, directory)
    else:
        log.info("%s: building cache %s", directory.parent.name, directory)
        with progress_bar(progress, bytes_=bytes_) as bar:
            splits, manifest_extra = build(bar)
            try:
                write_cache(directory, splits, {**manifest_extra, "params": json.loads(json.dumps(params, default=str))})
            except FileExistsError:
                log.info("%s: another process completed %s first; using its copy", directory.parent.name, directory)
    return read_matching_cache(directory, params)


def read_matching_cache(directory: str | os.PathLike, params: Mapping[str, Any]) -> TokenCache:
    """Open an existing cache built from exactly ``params`` (its manifest's ``params``), else CacheError."""
    cache = read_cache(directory)
    if cache.manifest.get("params") != json.loads(json.dumps(params, default=str)):
        raise CacheError(f"token cache {directory}: manifest parameters do not match the requested ones; "
                         "delete the directory to rebuild it")
    return cache
