"""Stopping a run: the parent hears the signals, workers only learn that they must stop.

SIGINT (Ctrl-C) and SIGTERM both stop a run; what is being made is abandoned (nothing is
written for it) and the run exits with the status :data:`EXIT_FOR_SIGNAL` gives. Worker
processes and the queue manager ignore both (:func:`ignore_stop_signals`): Ctrl-C reaches
the whole process group, and the parent decides.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stopped(BaseException):
    """The run was asked to stop (SIGINT or SIGTERM): abandon the current image."""


class Interrupted(Stopped):
    """SIGINT or SIGTERM, raised in the main thread by :func:`stop_signals`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread.

    SIGINT is not left to Python's KeyboardInterrupt: when a KeyboardInterrupt happens to be
    raised inside code a C extension runs through ``PyRun_*``, CPython remembers it as
    unhandled and, at exit, kills the process with SIGINT even though rvgen caught it and
    asked to exit 130 (about one Ctrl-C in five on CPU). An exception of our own is not
    remembered that way.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in EXIT_FOR_SIGNAL}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def signal_of(exc: BaseException) -> int:
    """The signal behind a stop: SIGTERM's number for :class:`Interrupted`, else SIGINT."""
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def ignore_stop_signals() -> None:
    """Make this process ignore SIGINT and SIGTERM (a worker process, the queue manager)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
