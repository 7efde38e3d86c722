"""Stopping a run: the parent hears the signals, workers only learn that they must stop.

SIGINT (Ctrl-C) and SIGTERM both stop a run; what is being made is abandoned (nothing is
written for it) and the run exits with the status :data:`EXIT_FOR_SIGNAL` gives. Worker
processes and the queue manager ignore both (:func:`ignore_stop_signals`): Ctrl-C reaches
the whole process group, and the parent decides.

For the whole of a run (:func:`stop_signals`), every SIGINT and SIGTERM is recorded in one
:class:`StopSignals`, however many arrive and however fast. Only code that asks for it
(``raising=True``: a worker in the parent process) has the *first* one raised as
:class:`Interrupted`; every later one is only recorded, so a second Ctrl-C can never land
in the middle of the cleanup of the first and cut the summary short. The parent of worker
processes raises nothing at all: it reads :attr:`StopSignals.count` between events.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
STEP_INTERVAL = 0.25  # seconds between progress events (and stop checks) per worker


class Stopped(BaseException):
    """The run was asked to stop (SIGINT or SIGTERM): abandon the current image."""


class Interrupted(Stopped):
    """SIGINT or SIGTERM, raised in the main thread by :func:`stop_signals`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StepGate:
    """When a worker's progress callback reports: ``gate()`` is True at most every
    ``interval`` seconds, and then first checks ``should_stop`` (raising :class:`Stopped`), so
    a stop is heard within an interval and progress events stay few."""

    def __init__(self, should_stop: Callable[[], bool], interval: float = STEP_INTERVAL):
        self.should_stop, self.interval = should_stop, interval
        self.last = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        if self.should_stop():
            raise Stopped
        return True


class StopSignals:
    """The stop signals a run received, in order; ``raising`` while the first one is to be raised."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.raising = False

    @property
    def count(self) -> int:
        return len(self.received)

    @property
    def first(self) -> int | None:
        """The signal that stopped the run, or None."""
        return self.received[0] if self.received else None

    def on_signal(self, signum: int, frame) -> None:
        # Only a list append and, once, a raise: safe wherever the main thread happens to be.
        self.received.append(signum)
        if self.raising and len(self.received) == 1:
            raise Interrupted(signum)


_current: StopSignals | None = None


@contextmanager
def stop_signals(raising: bool = True) -> Iterator[StopSignals]:
    """Record SIGINT and SIGTERM (in the main thread; elsewhere nothing is installed).

    With ``raising``, the first of them raises :class:`Interrupted` in the main thread (at once
    on entry if one already arrived), so code that never looks at the record still stops.
    Nested uses share the outer record: a signal recorded by the outer one counts as the
    first, and later ones never raise. Python's KeyboardInterrupt is not used: when one happens
    to be raised inside code a C extension runs through ``PyRun_*``, CPython remembers it as
    unhandled and, at exit, kills the process with SIGINT even though rvgen caught it and
    asked to exit 130 (about one Ctrl-C in five on CPU). An exception of our own is not
    remembered that way.
    """
    global _current
    if threading.current_thread() is not threading.main_thread():
        yield StopSignals()
        return
    outer = _current
    state = outer or StopSignals()
    was_raising = state.raising
    previous = None
    if outer is None:
        previous = {signum: signal.signal(signum, state.on_signal) for signum in EXIT_FOR_SIGNAL}
        _current = state
    try:
        if raising:
            if state.received:
                raise Interrupted(state.received[0])
            state.raising = True
        yield state
    finally:
        state.raising = was_raising
        if previous is not None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            _current = None


def signal_of(exc: BaseException) -> int:
    """The signal behind a stop: the one :class:`Interrupted` carries, else SIGINT."""
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def ignore_stop_signals() -> None:
    """Make this process ignore SIGINT and SIGTERM (a worker process, the queue manager)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
