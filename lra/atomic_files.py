"""Writes that are all-or-nothing: a reader (or a killed writer) never sees a half-written file or folder.

Files: :func:`atomic_write_text` / :func:`atomic_write_bytes` write a temporary sibling, fsync it and
rename it into place (optionally refusing to replace an existing file); :func:`best_effort_write_text`
does the same for a memo whose loss costs only time.

Folders: :func:`building_directory` hands out a hidden temporary sibling of the target
(``.<name>.tmp-<host>-<pid>-<random>``), removes it if the block fails, and :func:`install_directory`
renames it into place (an existing target is kept, or with ``overwrite`` moved aside to
``.<name>.old-...`` and removed once the new one is in). Temporary siblings of writers that died are
removed by the next writer (:func:`clean_stale_siblings`). The token caches, the unpacked data
archives and the result records all go through this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def _process_umask() -> int:
    """The umask, read without changing it (os.umask would briefly set it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(directory: str | Path, *, strict: bool = True) -> None:
    """Flush a folder's entries (a rename into it survives a crash); ``strict=False`` ignores a
    filesystem that cannot do it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, fsync it, then move it into place.

    With ``exclusive=True`` an existing ``path`` is never replaced: FileExistsError instead, decided
    atomically by the filesystem (a hard link), so two writers cannot both succeed.
    """
    _atomic_write(path, text, exclusive)


def atomic_write_bytes(path: str | Path, data: bytes, *, exclusive: bool = False) -> None:
    """``atomic_write_text`` for bytes (e.g. a PNG image)."""
    _atomic_write(path, data, exclusive)


def atomic_save_figure(path: str | Path, figure, dpi: int = 110) -> Path:
    """Render a matplotlib figure to PNG and write it atomically; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _atomic_write(path: str | Path, content: str | bytes, exclusive: bool) -> None:
    """Errors name ``path`` (a full disk is ``[Errno 28] No space left on device: '<path>'``)."""
    path = Path(path)
    try:
        _write_then_move(path, content, exclusive)
    except OSError as error:
        if error.filename is not None:
            raise
        if error.errno is None:
            raise type(error)(f"{error} (writing {path})") from error
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


def _write_then_move(path: Path, content: str | bytes, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:  # owns fd from here: closed on any error below
            os.chmod(tmp, 0o666 & ~_process_umask())  # mkstemp makes 0600; use what open() would
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path):
    """An advisory inter-process lock (flock) held for the duration of the block."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def best_effort_write_text(path: str | Path, text: str) -> bool:
    """Replace ``path`` by ``text`` through a temporary sibling, for memos whose loss only costs
    time: any OSError (a read-only folder) is swallowed. Returns whether the write happened."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False


# --------------------------------------------------------------------------- #
# Folders
# --------------------------------------------------------------------------- #

# Temporary folders of writers that died are removed once older than this when their owner cannot
# be checked (another host).
STALE_SECONDS = 24 * 3600


def _sibling(target: Path, kind: str) -> Path:
    """``.<name>.<kind>-<host>-<pid>-<random>`` beside ``target``."""
    return target.parent / f".{target.name}.{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_siblings(target: str | Path) -> None:
    """Remove the temporary and set-aside folders of ``target`` whose writer died (same host, no such
    process) or that are older than ``STALE_SECONDS`` (a writer on another host)."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return
    host = socket.gethostname()
    for prefix in (f".{target.name}.tmp-", f".{target.name}.old-"):
        for p in parent.glob(prefix + "*"):
            if not p.is_dir():
                continue
            parts = p.name[len(prefix):].rsplit("-", 2)  # <host>-<pid>-<random>; host may contain '-'
            stale = False
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                stale = int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1]))
            if not stale:
                try:
                    stale = time.time() - p.stat().st_mtime > STALE_SECONDS
                except OSError:
                    continue
            if stale:
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def building_directory(target: str | Path) -> Iterator[Path]:
    """A fresh hidden temporary sibling of ``target`` to fill; removed if the block raises (and, if
    :func:`install_directory` has not moved it, when the block ends). Stale siblings left by dead
    writers are cleaned first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(target)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once installed


def install_directory(tmp: str | Path, target: str | Path, *, overwrite: bool = False,
                      complete: str | None = None) -> bool:
    """Move the finished folder ``tmp`` to ``target`` (fsyncing both levels).

    An existing ``target`` is replaced only with ``overwrite`` (moved aside first, so readers see
    the old or the new folder, never neither for long, and removed after); otherwise ``tmp`` is
    discarded and False returned (another writer finished first). ``complete`` names a file whose
    presence marks a finished ``target``: losing a rename race to one counts as finished by the
    other writer. Returns True when ``tmp`` became ``target``.
    """
    tmp, target = Path(tmp), Path(target)
    fsync_directory(tmp, strict=False)
    if target.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        old = _sibling(target, "old")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(tmp, target)
        except OSError:
            if complete is not None and (target / complete).is_file():
                shutil.rmtree(tmp, ignore_errors=True)  # lost a race; the other copy is complete
                return False
            raise
    fsync_directory(target.parent, strict=False)
    return True
