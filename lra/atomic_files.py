"""Writes that are all-or-nothing: a reader (or a killed writer) never sees a half-written file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
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
        _fsync_directory(path.parent)
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
