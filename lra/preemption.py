"""Preemption: the signals that stop a run early, and how its process says so.

SIGTERM / SIGINT (and SLURM's SIGUSR2 under submitit) do not kill a run: ``StopRequest`` notes the
signal, the training loop saves a checkpoint after the current step and raises ``Preempted``, and
the entry point (``lra.train``) exits with ``EXIT_PREEMPTED``. Rerunning the same command resumes
from that checkpoint (``lra.checkpointing``).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): "temporary failure, try again" - rerun to continue


class Preempted(Exception):
    """Raised by the training loop after it saved a checkpoint on SIGTERM/SIGINT."""

    def __init__(self, step: int, signal_name: str, directory: Path | None):
        self.step, self.signal_name, self.directory = step, signal_name, directory
        where = f"checkpoint saved in {directory}" if directory else "checkpointing is off: nothing saved"
        super().__init__(f"{signal_name} at step {step}: {where}; rerun the same command to continue")


class StopRequest:
    """SIGTERM / SIGINT set ``requested`` (the signal's name); the loop checkpoints and stops.

    A second signal of the same kind falls through to the previous handler (Ctrl-C twice
    interrupts at once). Under submitit (Hydra's SLURM launcher), whose SIGUSR2 handler requeues
    the job before the time limit, SIGUSR2 is caught too and submitit's handler runs after the
    checkpoint is saved, on leaving the block. Handlers can only be installed from the main
    thread; elsewhere this is inert and ``requested`` stays None.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    CHAINED = (signal.SIGUSR2,)  # only when a Python handler (submitit's) is already installed

    def __init__(self):
        self.requested: str | None = None
        self._signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested is not None:  # second signal: behave as if we were not here
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
            return
        self.requested, self._signum = signal.Signals(signum).name, signum
        log.warning("%s received: saving a checkpoint after the current step, then stopping", self.requested)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            chained = [s for s in self.CHAINED if callable(signal.getsignal(s))]
            for signum in (*self.SIGNALS, *chained):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if self._signum in self.CHAINED and callable(previous.get(self._signum)):
            previous[self._signum](self._signum, None)  # e.g. submitit: requeue the job, then exit
