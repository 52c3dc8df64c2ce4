"""Shared pieces of long data-preparation steps (downloads, extraction, generation, cache writes).

``progress_bar`` is the one rich progress bar style of every data step; ``default_workers`` is how
many processes the generators use when the config leaves ``workers`` unset.
"""

from __future__ import annotations

import os


def progress_bar(enabled: bool, *, bytes_: bool = False):
    """A rich progress bar for long data steps (byte counts with transfer speed when ``bytes_``)."""
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TransferSpeedColumn)

    counts = (DownloadColumn(), TransferSpeedColumn()) if bytes_ else (MofNCompleteColumn(),)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
                    disable=not enabled)


def default_workers() -> int:
    """Worker processes for data generation: the CPUs this process may use, at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))
