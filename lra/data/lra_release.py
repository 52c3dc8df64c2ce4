"""The LRA release archive ``lra_release.gz``: find, download and unpack the folders a task reads.

The archive (https://storage.googleapis.com/long-range-arena/lra_release.gz, about 7.7 GB, 18.6 GB
unpacked) is a gzip-compressed *tar* despite its name (LRA issue #12).  Unpacked, its folders sit
one or two ``lra_release/`` levels down (the layout the S4, Nystromformer and Skyformer loaders
expect is ``lra_release/lra_release/<folder>``)::

    listops-1000/   basic_{train,val,test}.tsv                        (ListOps)
    tsv_data/       new_aan_pairs.{train,eval,test}.tsv               (Retrieval, AAN)
    pathfinder{32,64,128,256}/curv_{baseline,contour_length_9,contour_length_14}/...  (Pathfinder)

:func:`release_root` returns the folder that holds a wanted sub-folder (``needs``), trying in turn:

1. ``task.release_dir``: an unpacked release (the folder itself, or one or two ``lra_release/``
   levels above it, or the wanted sub-folder itself);
2. an earlier extraction under ``<data_dir>/lra_release/extracted-<needs>/``, if it came from the
   archive of step 3 (or that archive is not on disk any more): each extraction records the path,
   size and sha256 of its archive in ``.archive.json``; a different archive is extracted anew
   (into a new folder that then replaces the old one, so readers never see a mix);
3. the archive at ``task.release_archive`` (default ``<data_dir>/downloads/lra_release.gz``,
   downloaded with resume from ``task.release_url`` when ``task.download`` is true), of which only
   the members under ``<needs>/`` are unpacked, atomically, into the folder of step 2.

Archive checksums are memoised by size, mtime and inode (``<data_dir>/lra_release/.archive-sha256.json``),
so the 7.7 GB archive is hashed once.

Any task can call it; the Pathfinder loader asks for ``needs="pathfinder32"`` the way the
Retrieval loader asks for ``needs="tsv_data"``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from lra.atomic_files import install_directory
from lra.data.archives import download, extract_tar
from lra.data.token_cache import file_sha256

log = logging.getLogger(__name__)

__all__ = ["RELEASE_URL", "release_help", "release_root"]

RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
_LEVELS = ((), ("lra_release",), ("lra_release", "lra_release"))
ARCHIVE_RECORD = ".archive.json"  # in an extraction folder: which archive it came from


def release_help(needs: str) -> str:
    """Where to get the release, for error messages."""
    return (f"Get the LRA release archive {RELEASE_URL} (about 7.7 GB; a gzipped tar despite its name) and "
            f"set task.release_archive=/path/to/lra_release.gz, or unpack it (tar -xzf lra_release.gz) and set "
            f"task.release_dir to the folder that contains {needs}/, or set task.download=true to let "
            f"`make data` fetch it (resumable) into <data_dir>/downloads/.")


def _find_root(path: Path, needs: str) -> Path | None:
    candidates = [path.joinpath(*level) for level in _LEVELS]
    if path.name == needs:
        candidates.insert(0, path.parent)
    for candidate in candidates:
        if (candidate / needs).is_dir():
            return candidate
    return None


def release_root(task_cfg: Mapping[str, Any], data_dir: str | os.PathLike, *, needs: str,
                 progress: bool = True) -> Path:
    """The unpacked release folder that contains ``<needs>/`` (see the module docstring for the order).

    Keys read from ``task_cfg``: ``release_dir``, ``release_archive``, ``release_url``, ``download``.
    Raises ``FileNotFoundError`` naming the config key and where to get the data when nothing is found.
    """
    if "/" in needs or needs in ("", ".", ".."):
        raise ValueError(f"needs must be one folder name of the release, got {needs!r}")
    release_dir = task_cfg.get("release_dir")
    if release_dir:
        given = Path(release_dir).expanduser()
        root = _find_root(given, needs)
        if root is None:
            raise FileNotFoundError(f"task.release_dir={given}: no {needs}/ folder in it, nor in lra_release/ or "
                                    f"lra_release/lra_release/ below it. " + release_help(needs))
        return root

    release_cache = Path(data_dir).expanduser() / "lra_release"
    extracted = release_cache / f"extracted-{needs}"
    configured = task_cfg.get("release_archive")
    archive = Path(configured).expanduser() if configured else Path(data_dir).expanduser() / "downloads" / "lra_release.gz"
    root = _find_root(extracted, needs) if extracted.is_dir() else None
    if root is not None:
        if not archive.is_file():
            return root  # the archive was removed after extraction: nothing to compare with
        identity = _archive_identity(archive, release_cache)
        recorded = _recorded_archive(extracted)
        if recorded is not None and recorded.get("sha256") == identity["sha256"]:
            return root
        log.warning("%s was extracted from %s, not from %s (sha256 %s...): extracting that archive anew",
                    extracted, "an unrecorded archive" if recorded is None else
                    f"{recorded.get('path')} (sha256 {str(recorded.get('sha256'))[:16]}...)", archive,
                    identity["sha256"][:16])
        return _extract(archive, extracted, needs, identity, progress, replace=True)

    if not archive.is_file():
        if configured:
            raise FileNotFoundError(f"task.release_archive={archive} does not exist. " + release_help(needs))
        if not task_cfg.get("download", False):
            raise FileNotFoundError(f"no LRA release found for {needs}/ (task.release_dir and task.release_archive "
                                    f"are unset, {archive} does not exist, task.download=false). " + release_help(needs))
        download(task_cfg.get("release_url") or RELEASE_URL, archive, progress=progress)
    return _extract(archive, extracted, needs, _archive_identity(archive, release_cache), progress, replace=False)


def _archive_identity(archive: Path, release_cache: Path) -> dict[str, Any]:
    return {"path": str(archive.resolve()), "bytes": archive.stat().st_size,
            "sha256": file_sha256(archive, release_cache / ".archive-sha256.json")}


def _recorded_archive(extracted: Path) -> dict | None:
    try:
        recorded = json.loads((extracted / ARCHIVE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _extract(archive: Path, extracted: Path, needs: str, identity: dict, progress: bool, *, replace: bool) -> Path:
    """Unpack ``<needs>/`` of ``archive`` into ``extracted``, with a record of the archive; with
    ``replace``, into a new sibling that replaces the existing extraction once complete."""
    def wanted(name: str) -> bool:
        return needs in PurePosixPath(name).parts[:3]

    target = extracted.with_name(f".{extracted.name}.new-{uuid.uuid4().hex[:8]}") if replace else extracted
    try:
        extract_tar(archive, target, select=wanted, progress=progress,
                    extra_files={ARCHIVE_RECORD: json.dumps(identity, indent=1) + "\n"})
    except FileExistsError:  # another process extracted it meanwhile
        pass
    if _find_root(target, needs) is None:
        shutil.rmtree(target, ignore_errors=True)
        raise FileNotFoundError(f"{archive} holds no {needs}/ folder (looked one and two lra_release/ levels "
                                f"down); is it the LRA release archive? " + release_help(needs))
    if replace:
        install_directory(target, extracted, overwrite=True)
    return _find_root(extracted, needs)
