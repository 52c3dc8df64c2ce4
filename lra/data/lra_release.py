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
2. an earlier extraction under ``<data_dir>/lra_release/extracted-<needs>/``;
3. the archive at ``task.release_archive`` (default ``<data_dir>/downloads/lra_release.gz``,
   downloaded with resume from ``task.release_url`` when ``task.download`` is true), of which only
   the members under ``<needs>/`` are unpacked, atomically, into the folder of step 2.

Any task can call it; the Pathfinder loader asks for ``needs="pathfinder32"`` the way the
Retrieval loader asks for ``needs="tsv_data"``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from lra.data.archives import download, extract_tar

__all__ = ["RELEASE_URL", "release_help", "release_root"]

RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
_LEVELS = ((), ("lra_release",), ("lra_release", "lra_release"))


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

    extracted = Path(data_dir).expanduser() / "lra_release" / f"extracted-{needs}"
    root = _find_root(extracted, needs) if extracted.is_dir() else None
    if root is not None:
        return root

    configured = task_cfg.get("release_archive")
    archive = Path(configured).expanduser() if configured else Path(data_dir).expanduser() / "downloads" / "lra_release.gz"
    if not archive.is_file():
        if configured:
            raise FileNotFoundError(f"task.release_archive={archive} does not exist. " + release_help(needs))
        if not task_cfg.get("download", False):
            raise FileNotFoundError(f"no LRA release found for {needs}/ (task.release_dir and task.release_archive "
                                    f"are unset, {archive} does not exist, task.download=false). " + release_help(needs))
        download(task_cfg.get("release_url") or RELEASE_URL, archive, progress=progress)

    def wanted(name: str) -> bool:
        return needs in PurePosixPath(name).parts[:3]

    try:
        extract_tar(archive, extracted, select=wanted, progress=progress)
    except FileExistsError:  # another process extracted it meanwhile
        pass
    root = _find_root(extracted, needs)
    if root is None:
        shutil.rmtree(extracted, ignore_errors=True)
        raise FileNotFoundError(f"{archive} holds no {needs}/ folder (looked one and two lra_release/ levels "
                                f"down); is it the LRA release archive? " + release_help(needs))
    return root
