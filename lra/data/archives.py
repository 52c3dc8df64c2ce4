"""Downloading and unpacking the data archives of the LRA tasks (release archive, IMDb, CIFAR-10).

``download(url, dest)``
    Fetches ``url`` into ``dest`` with a progress bar.  Bytes arrive in ``dest + ".part"``; an
    interrupted download keeps that file and the next call resumes it with an HTTP ``Range``
    request (a server that ignores ``Range`` and answers 200 restarts it from byte 0).  ``dest``
    itself appears, by an atomic rename, only once every announced byte has arrived (and the size
    matches ``expected_bytes`` when given), so a file under the final name is always complete.

``extract_tar(archive, target, select=...)``
    Unpacks a (gzipped) tar into a hidden temporary sibling of ``target`` and renames it into
    place only when every member is out (``lra/atomic_files.py``).  A member whose path is absolute or leaves the target
    through ``..``, a symbolic or hard link that points outside it, and device or FIFO members are
    refused with :class:`ArchiveError` naming the archive and the member, before anything of the
    archive is kept.  Python's own ``filter="data"`` (PEP 706) is applied on top.

Nothing here knows about a particular task; ``lra/data/lra_release.py`` and the task loaders call it.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from lra.atomic_files import building_directory, install_directory
from lra.data.preparation import progress_bar

__all__ = ["ArchiveError", "DownloadError", "download", "extract_tar"]

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed or was cut short (the partial file is kept for resuming)."""


class ArchiveError(RuntimeError):
    """An archive is unreadable or holds a member that may not be extracted (message names both)."""




def _content_range_start_total(header: str | None) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None when '*')."""
    if not header or not header.startswith("bytes "):
        raise DownloadError(f"server answered 206 without a usable Content-Range ({header!r})")
    span, _, total = header[len("bytes "):].partition("/")
    start = int(span.split("-")[0])
    return start, (None if total.strip() == "*" else int(total))


def download(url: str, dest: str | os.PathLike, *, expected_bytes: int | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part`` if present); return ``dest``.

    An existing ``dest`` is trusted and returned at once.  Raises :class:`DownloadError` naming
    the URL on HTTP or network errors and when fewer bytes arrive than the server announced; the
    partial file then stays for the next call to resume.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "lra-harness"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have and expected_bytes in (None, have):
            os.replace(part, dest)  # the partial file already holds every byte
            return dest
        raise DownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"download of {url} failed: {error}. Check the network or fetch the file by "
                            f"hand and put it at {dest}") from error
    with response:
        length = response.headers.get("Content-Length")
        if have and response.status == 206:
            start, total = _content_range_start_total(response.headers.get("Content-Range"))
            if start != have:
                raise DownloadError(f"download of {url}: asked to resume at byte {have}, server sent from {start}")
            mode = "ab"
        else:  # 200: the server sends everything (it may ignore Range); start over
            have, mode = 0, "wb"
            total = int(length) if length is not None else None
        if total is None and length is not None:
            total = have + int(length)
        if expected_bytes is not None and total is not None and total != expected_bytes:
            raise DownloadError(f"download of {url}: server announces {total} bytes, expected {expected_bytes}")
        received = have
        with progress_bar(progress, bytes_=True) as bar, open(part, mode) as out:
            task = bar.add_task(f"downloading {dest.name}", total=total, completed=have)
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(task, completed=received)
            except (OSError, ValueError) as error:  # connection reset, IncompleteRead
                raise DownloadError(f"download of {url} interrupted after {received} bytes ({error}); "
                                    f"run again to resume from {part}") from error
    want = total if total is not None else expected_bytes
    if want is not None and received != want:
        raise DownloadError(f"download of {url} interrupted: {received} of {want} bytes in {part}; "
                            "run again to resume")
    os.replace(part, dest)
    return dest


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse absolute paths, '..' escapes, links leaving the target, and special files."""
    name = member.name
    normal = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or normal == ".." or \
            normal.startswith("../"):
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the target folder; refused")
    if member.issym() or member.islnk():
        link = member.linkname
        base = posixpath.dirname(normal) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise ArchiveError(f"{archive}: link member {name!r} points outside the target folder "
                               f"({link!r}); refused")
    elif not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{archive}: member {name!r} is a device, FIFO or other special file; refused")


def extract_tar(archive: str | os.PathLike, target: str | os.PathLike, *,
                select: Callable[[str], bool] | None = None, progress: bool = True,
                extra_files: dict[str, str] | None = None) -> Path:
    """Extract the members of ``archive`` for which ``select(name)`` is true into ``target``.

    ``target`` must not exist yet; it appears complete or not at all, with ``extra_files``
    (name -> text, e.g. a record of the archive it came from) written beside the members.  Raises
    :class:`ArchiveError` for an unreadable or corrupt archive or a refused member.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise FileExistsError(f"extraction target {target} already exists")
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    with building_directory(target) as tmp:
        with progress_bar(progress, bytes_=True) as bar, open(archive, "rb") as raw:
            task = bar.add_task(f"extracting {archive.name}", total=archive.stat().st_size)
            try:
                with tarfile.open(fileobj=raw, mode="r:*") as tar:
                    for member in tar:
                        bar.update(task, completed=raw.tell())
                        _check_member(archive, member)
                        if select is None or select(member.name):
                            tar.extract(member, tmp, filter="data")
            except (tarfile.TarError, EOFError, OSError, ValueError) as error:
                raise ArchiveError(f"{archive}: cannot be read as a (gzipped) tar archive: {error}") from error
            bar.update(task, completed=archive.stat().st_size)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if not install_directory(tmp, target):
            raise FileExistsError(f"extraction target {target} appeared while extracting (another process)")
    return target
