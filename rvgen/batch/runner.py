"""Running jobs: workers on devices, their events back to the parent, one summary at the end.

Three ways to run, one event stream:

- one worker: in this process (no start-up cost, nothing to pickle);
- several workers (``--gpus 0,1``, ``--devices cpu --workers 2``): one joblib (loky) process
  per worker, all taking jobs from one shared queue, so a slow image on one device never
  holds back the others; events come back through a second queue;
- ``--backend dask``: each job is a task on an existing Dask cluster, through joblib's dask
  backend; inputs travel as bytes and results come back to be written here, so the cluster
  needs no shared disk.

The parent owns the signals: SIGINT or SIGTERM sets a stop flag, workers abandon their
current image (nothing is written for it), and the run ends with exit status 130 or 143.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rvgen import imageio
from rvgen.batch.events import (
    Event,
    ImageAbandoned,
    ImageDone,
    ImageFailed,
    ImageStarted,
    WorkerFailed,
    WorkerReady,
)
from rvgen.batch.jobs import Job
from rvgen.batch.state import RunKey
from rvgen.batch.worker import (
    Stopped,
    Worker,
    make_remote,
    process_main,
    start_failure,
    write_result,
)
from rvgen.pipeline import load_references
from rvgen.errors import ImageError, RecipeError, UsageError
from rvgen.plugins import Registry
from rvgen.recipe import Recipe

GRACE_SECONDS = 30.0  # how long stopped workers get to abandon their image before they are killed
EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    device: str
    threads: int | None = None  # torch threads for a CPU worker process


@dataclass(frozen=True)
class RunInfo:
    """What the reporters are told before the first image."""

    jobs: Sequence[Job]  # to do in this run
    skipped: int  # already finished, from an earlier run
    ignored: Sequence[str]  # files in the input folder that are not images
    workers: Sequence[WorkerSpec]
    output: str


@dataclass
class Summary:
    total: int
    skipped: int = 0
    done: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    abandoned: list[Job] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # run-level: a worker that did not start
    seconds: float = 0.0
    signal: int | None = None  # the signal that stopped the run

    @property
    def not_started(self) -> int:
        return self.total - len(self.done) - len(self.failed)

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return EXIT_FOR_SIGNAL.get(self.signal, 128 + int(self.signal))
        return 1 if self.failed or self.not_started else 0


class Reporter(Protocol):
    def start(self, run: RunInfo) -> None: ...
    def handle(self, event: Event) -> None: ...
    def finish(self, summary: Summary) -> None: ...


class Tracker:
    """Keeps the summary from the events and passes each on to the reporter."""

    def __init__(self, summary: Summary, reporter: Reporter):
        self.summary, self.reporter = summary, reporter
        self.current: dict[str, Job] = {}  # worker -> the job it is on

    def __call__(self, event: Event) -> None:
        s = self.summary
        if isinstance(event, ImageStarted):
            self.current[event.worker] = event.job
        elif isinstance(event, ImageDone):
            s.done.append(event.job)
            self.current.pop(event.worker, None)
        elif isinstance(event, ImageFailed):
            s.failed.append((event.job, event.reason))
            self.current.pop(event.worker, None)
        elif isinstance(event, ImageAbandoned):
            s.abandoned.append(event.job)
            self.current.pop(event.worker, None)
        elif isinstance(event, WorkerFailed):
            s.problems.append(f"worker {event.worker} did not start: {event.reason}")
        self.reporter.handle(event)

    def abandon_current(self) -> None:
        """Workers that were killed: their images were not finished."""
        for worker, job in list(self.current.items()):
            self(ImageAbandoned(worker, job))


class Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` in the main thread, as SIGINT raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_of(exc: BaseException) -> int:
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def prepare(recipe: Recipe, registry: Registry | None = None) -> RunKey:
    """Check the task's reference images open (a broken style image is a recipe error, before
    any work) and make the run's key from the recipe and their hashes."""
    sources = {}
    for name, (source, _) in recipe.references(registry).items():
        try:
            imageio.load_image(source, 16)
        except ImageError as exc:
            raise RecipeError(f"task.{name}: {exc}") from None
        sources[name] = str(source)
    return RunKey.of(recipe.digest(), sources)


def run_batch(
    recipe: Recipe,
    run: RunInfo,
    reporter: Reporter,
    key: RunKey | None = None,
    registry: Registry | None = None,
    scheduler: str | None = None,
) -> Summary:
    """Make every job of ``run`` with its workers (or on the Dask ``scheduler``); failures are
    recorded and the others go on. Returns the summary; never raises for one image."""
    key = key or prepare(recipe, registry)
    summary = Summary(total=len(run.jobs), skipped=run.skipped)
    tracker = Tracker(summary, reporter)
    start = time.perf_counter()
    reporter.start(run)
    if run.jobs:
        if scheduler is not None:
            _run_dask(recipe, key, run.jobs, tracker, scheduler)
        elif len(run.workers) == 1:
            _run_inline(recipe, key, run.jobs, run.workers[0], tracker, registry)
        else:
            _run_processes(recipe, key, run.jobs, run.workers, tracker)
    summary.seconds = time.perf_counter() - start
    reporter.finish(summary)
    return summary


def _run_inline(recipe: Recipe, key: RunKey, jobs: Sequence[Job], spec: WorkerSpec,
                tracker: Tracker, registry: Registry | None) -> None:
    try:
        with stop_signals():
            try:
                worker = Worker(recipe, key, spec.device, spec.name, tracker, registry=registry)
            except Exception as exc:
                tracker(start_failure(spec.name, exc))
                return
            tracker(WorkerReady(spec.name, spec.device, pid=os.getpid()))
            worker.run(jobs)
    except (KeyboardInterrupt, Interrupted, Stopped) as exc:
        tracker.summary.signal = signal_of(exc)


POOL_DONE = "rvgen:pool-done"


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run_processes(recipe: Recipe, key: RunKey, jobs: Sequence[Job], workers: Sequence[WorkerSpec],
                   tracker: Tracker) -> None:
    from multiprocessing.managers import SyncManager

    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    manager = SyncManager()
    manager.start(_ignore_signals)  # Ctrl-C reaches the whole process group; the parent decides
    try:
        job_queue, event_queue, stop = manager.Queue(), manager.Queue(), manager.Event()
        for job in jobs:
            job_queue.put(job)
        for _ in workers:
            job_queue.put(None)
        local: queue.Queue = queue.Queue()
        pool_done = threading.Event()
        failure: list[BaseException] = []

        def pool() -> None:
            try:
                Parallel(n_jobs=len(workers), backend="loky")(
                    delayed(process_main)(recipe, key, w.device, w.name, w.threads, job_queue, event_queue, stop)
                    for w in workers
                )
            except BaseException as exc:  # a worker process died (kill -9, out of host memory)
                failure.append(exc)
            finally:
                pool_done.set()

        def forward() -> None:
            """Move events from the manager's queue to ours, so signals never cut a read short.
            Every event a worker sent is in the queue before its task returns, so an empty
            queue once the pool is done means there are no more."""
            while True:
                done = pool_done.is_set()
                try:
                    local.put(event_queue.get(timeout=0.1))
                except queue.Empty:
                    if done:
                        break
                except (EOFError, OSError):  # the manager is gone
                    break
            local.put(POOL_DONE)

        threading.Thread(target=pool, name="rvgen-pool", daemon=True).start()
        threading.Thread(target=forward, name="rvgen-events", daemon=True).start()
        deadline = None
        with stop_signals():
            while True:
                try:
                    event = local.get(timeout=0.5)
                except queue.Empty:
                    if deadline is not None and time.monotonic() > deadline:
                        get_reusable_executor().shutdown(wait=False, kill_workers=True)
                        break
                    continue
                except (KeyboardInterrupt, Interrupted) as exc:
                    if tracker.summary.signal is not None:  # asked twice: stop now
                        get_reusable_executor().shutdown(wait=False, kill_workers=True)
                        break
                    tracker.summary.signal = signal_of(exc)
                    stop.set()
                    deadline = time.monotonic() + GRACE_SECONDS
                    continue
                if event == POOL_DONE:
                    break
                tracker(event)
        tracker.abandon_current()
        if failure and tracker.summary.signal is None:
            exc = failure[0]
            tracker.summary.problems.append(
                f"a worker process died ({type(exc).__name__}); the images it and the others were on "
                "are not written; rerun to finish")
    finally:
        manager.shutdown()


def _read_input(job: Job) -> bytes | None:
    return None if imageio.is_sample(job.source) else Path(job.source).read_bytes()


def _remote_failure(job: Job, reason: str) -> tuple:
    return job, "failed", reason, None, "dask"


def _run_dask(recipe: Recipe, key: RunKey, jobs: Sequence[Job], tracker: Tracker, scheduler: str) -> None:
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--backend dask needs Dask: pip install 'rvgen[dask]'") from None
    from joblib import Parallel, delayed, parallel_config

    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from None
    try:
        references = load_references(recipe.references())
        tracker(WorkerReady("dask", scheduler))

        def tasks() -> Iterator:
            for job in jobs:
                try:
                    data = _read_input(job)
                except OSError as exc:
                    yield delayed(_remote_failure)(job, f"{job.source}: cannot read ({exc.strerror or exc})")
                    continue
                yield delayed(make_remote)(recipe, job, data, references)

        try:
            with stop_signals(), parallel_config(backend="dask", wait_for_workers_timeout=60):
                for job, status, payload, details, device in Parallel(return_as="generator_unordered")(tasks()):
                    worker = f"dask:{device}"
                    if status == "done":
                        try:
                            write_result(recipe, key, job, payload, device)
                        except ImageError as exc:
                            tracker(ImageFailed(worker, job, str(exc)))
                            continue
                        tracker(ImageDone(worker, job, payload.loss, payload.iterations, payload.seconds))
                    else:
                        tracker(ImageFailed(worker, job, payload, details))
        except (KeyboardInterrupt, Interrupted) as exc:
            tracker.summary.signal = signal_of(exc)
    finally:
        client.close()


def worker_specs(devices: Sequence[str], per_device: int = 1, cpu_count: int | None = None) -> list[WorkerSpec]:
    """``per_device`` workers on each device; CPU workers split the cores between them."""
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    specs = []
    for device in devices:
        for i in range(per_device):
            name = device if per_device == 1 else f"{device}#{i + 1}"
            specs.append(WorkerSpec(name, device))
    cpu_workers = sum(1 for s in specs if s.device == "cpu")
    if len(specs) > 1 and cpu_workers:
        threads = max(1, (cpu_count or 1) // cpu_workers)
        specs = [WorkerSpec(s.name, s.device, threads if s.device == "cpu" else None) for s in specs]
    return specs


def remove_leftovers(folder: Path) -> int:
    """Delete temporary files a killed run left behind (``.NAME.XXXX.tmp``); call with the lock held."""
    count = 0
    if folder.is_dir():
        for path in folder.rglob(".*.tmp"):
            path.unlink(missing_ok=True)
            count += 1
    return count

