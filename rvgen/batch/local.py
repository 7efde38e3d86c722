"""Workers on this machine: one in this process, or one joblib (loky) process per worker.

- one worker (:func:`run_inline`): in this process, with no start-up cost and nothing to
  pickle;
- several workers (``--gpus 0,1``, ``--devices cpu --workers 2``, :func:`run_processes`): one
  loky process per worker (:func:`process_main`), all taking jobs from one shared queue, so a
  slow image on one device never holds back the others; events come back through a second
  queue.

The parent owns the signals (:mod:`rvgen.batch.signals`): SIGINT or SIGTERM sets a stop flag,
workers abandon their current image, and stopped workers get :data:`GRACE_SECONDS` before
they are killed; a second signal kills them at once. The parent never has a signal raised in
it while it runs worker processes (it reads the signals between events), so however many
arrive, the run ends with its summary.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from rvgen.batch.events import WorkerFailed, WorkerReady
from rvgen.batch.jobs import Job
from rvgen.batch.sidecar import RunKey
from rvgen.batch.signals import Stopped, ignore_stop_signals, signal_of, stop_signals
from rvgen.batch.summary import Tracker, WorkerSpec
from rvgen.batch.worker import Worker, failure
from rvgen.plugins import Registry
from rvgen.recipe import Recipe

GRACE_SECONDS = 30.0  # how long stopped workers get to abandon their image before they are killed
POOL_DONE = "rvgen:pool-done"
POLL_SECONDS = 0.05  # how often the parent of worker processes looks for a signal while no event comes
KILL_WAIT_SECONDS = 5.0  # after killing the workers, how long to wait for the pool to notice


def run_inline(recipe: Recipe, key: RunKey, jobs: Sequence[Job], spec: WorkerSpec, tracker: Tracker,
               registry: Registry | None, keep_images: bool = False) -> None:
    """All of ``jobs`` with one worker in this process (whose torch threads are as they were after)."""
    threads = torch.get_num_threads()
    try:
        with stop_signals():
            try:
                worker = Worker(recipe, key, spec.device, spec.name, tracker, registry=registry,
                                keep_images=keep_images, threads=spec.threads)
            except Exception as exc:
                tracker(WorkerFailed(spec.name, *failure(exc)))
                return
            tracker(WorkerReady(spec.name, spec.device, worker.threads, os.getpid()))
            worker.run(jobs)
    except (KeyboardInterrupt, Stopped) as exc:
        tracker.summary.signal = signal_of(exc)
        tracker.abandon_current()  # stopped between an image's start and the worker's own report
    finally:
        torch.set_num_threads(threads)


PARENT_CHECK = 0.5  # seconds between a worker process's checks that the run that started it is alive


def exit_with_parent() -> None:
    """End this process as soon as the one that started it is gone (a run killed with SIGKILL
    cannot tell its workers): a worker or queue manager left behind would go on using the
    CPU and hold the run's terminal or pipes open. Ending it at any moment loses nothing:
    results are written to temporary names and renamed (the next run removes leftovers)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK)
        os._exit(0)

    threading.Thread(target=watch, name="rvgen-parent-watch", daemon=True).start()


def child_init() -> None:
    """What every process a run starts does first: leave signals to the parent, die with it."""
    ignore_stop_signals()
    exit_with_parent()


def process_main(
    recipe: Recipe,
    key: RunKey,
    device: str,
    name: str,
    threads: int | None,
    jobs: Any,
    events: Any,
    stop: Any,
    keep_images: bool = False,
) -> None:
    """Entry point of a worker process: ``jobs`` and ``events`` are queues shared with the
    parent (``None`` in ``jobs`` means no more work), ``stop`` an event the parent sets.

    Signals are the parent's business: it hears Ctrl-C and SIGTERM and sets ``stop``, and
    the worker abandons its image at the next check.
    """
    child_init()
    try:
        worker = Worker(recipe, key, device, name, events.put, stop.is_set, keep_images=keep_images, threads=threads)
    except BaseException as exc:
        events.put(WorkerFailed(name, *failure(exc)))
        return
    events.put(WorkerReady(name, device, worker.threads, os.getpid()))

    def queued() -> Iterable[Job]:
        while True:
            job = jobs.get()
            if job is None:
                return
            yield job

    try:
        worker.run(queued())
    except Stopped:
        pass


def kill_workers() -> None:
    """SIGKILL this process's loky worker processes, the ones still starting included."""
    import multiprocessing

    from joblib.externals.loky.backend.process import LokyProcess

    for process in multiprocessing.active_children():
        if isinstance(process, LokyProcess) and process.pid is not None:
            try:
                os.kill(process.pid, getattr(signal, "SIGKILL", signal.SIGTERM))
            except OSError:  # already gone
                pass


def run_processes(recipe: Recipe, key: RunKey, jobs: Sequence[Job], workers: Sequence[WorkerSpec],
                  tracker: Tracker, keep_images: bool = False) -> None:
    """All of ``jobs`` with one loky process per worker, taking jobs from one queue."""
    from multiprocessing.managers import SyncManager

    manager = SyncManager()
    manager.start(child_init)  # Ctrl-C reaches the whole process group; the parent decides
    try:
        job_queue, event_queue, stop = manager.Queue(), manager.Queue(), manager.Event()
        for job in jobs:
            job_queue.put(job)
        for _ in workers:
            job_queue.put(None)
        pool = _Pool(recipe, key, workers, job_queue, event_queue, stop, keep_images)
        _follow(pool, tracker)
        tracker.abandon_current()
        if pool.failures and tracker.summary.signal is None:
            exc = pool.failures[0]
            tracker.summary.problems.append(
                f"a worker process died ({type(exc).__name__}); the images it and the others were on "
                "are not written; rerun to finish")
    finally:
        manager.shutdown()


class _Pool:
    """The worker processes, run by joblib in a thread, and a second thread that moves their
    events from the manager's queue to :attr:`events`, so signals never cut a read short."""

    def __init__(self, recipe: Recipe, key: RunKey, workers: Sequence[WorkerSpec], jobs: Any, events: Any,
                 stop: Any, keep_images: bool):
        self.stop = stop
        self.events: queue.Queue = queue.Queue()
        self.failures: list[BaseException] = []
        self._done = threading.Event()
        calls = [(recipe, key, w.device, w.name, w.threads, jobs, events, stop, keep_images) for w in workers]
        threading.Thread(target=self._run, args=(calls,), name="rvgen-pool", daemon=True).start()
        threading.Thread(target=self._forward, args=(events,), name="rvgen-events", daemon=True).start()

    def _run(self, calls: list[tuple]) -> None:
        from joblib import Parallel, delayed

        try:
            Parallel(n_jobs=len(calls), backend="loky")(delayed(process_main)(*args) for args in calls)
        except BaseException as exc:  # a worker process died (kill -9, out of host memory)
            self.failures.append(exc)
        finally:
            self._done.set()

    def _forward(self, events: Any) -> None:
        """Every event a worker sent is in the queue before its task returns, so an empty queue
        once the pool is done means there are no more; then :data:`POOL_DONE`."""
        while True:
            finished = self._done.is_set()
            try:
                self.events.put(events.get(timeout=0.1))
            except queue.Empty:
                if finished:
                    break
            except (EOFError, OSError):  # the manager is gone
                break
        self.events.put(POOL_DONE)

    def ask_to_stop(self) -> None:
        try:
            self.stop.set()
        except (EOFError, OSError):  # the manager is gone: there is nobody to tell
            pass


def _follow(pool: _Pool, tracker: Tracker) -> None:
    """Hand the pool's events to ``tracker`` until it is done, reading signals between events
    (nothing is raised here): the first asks the workers to stop and gives them
    :data:`GRACE_SECONDS`; a second, or the grace running out, kills them."""
    deadline = killed = None
    with stop_signals(raising=False) as signals:
        while True:
            now = time.monotonic()
            if signals.count and deadline is None:
                tracker.summary.signal = signals.first
                deadline = now + GRACE_SECONDS
                pool.ask_to_stop()
            if killed is None and (signals.count > 1 or (deadline is not None and now > deadline)):
                kill_workers()  # asked twice (or the grace is over): stop now
                killed = now
            if killed is not None and now - killed > KILL_WAIT_SECONDS:
                return
            try:
                event = pool.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if isinstance(event, str) and event == POOL_DONE:
                return
            tracker(event)
