"""Running a folder's jobs: pick the back end, keep the summary, report, clean up.

:func:`run_jobs` is the entry point of ``rvgen run``: every job of a :class:`RunInfo` on its
workers, with one event stream and one :class:`Summary` whatever the back end:

- one worker: in this process; several: one process per worker (:mod:`rvgen.batch.local`);
- ``--backend dask``: tasks on a Dask cluster (:mod:`rvgen.batch.remote`).

Around it: :func:`prepare` (the run's key, after checking the reference images open),
:func:`worker_specs` (the workers for ``--gpus``/``--devices``/``--workers``/``--threads``) and
:func:`remove_leftovers` (temporary files a killed run left). Signals:
:mod:`rvgen.batch.signals`; sidecars: :mod:`rvgen.batch.sidecar`; reporters:
:mod:`rvgen.batch.reporters`.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rvgen.batch.jobs import split_clips
from rvgen.batch.local import run_inline, run_processes
from rvgen.batch.remote import run_dask
from rvgen.batch.sidecar import RunKey
from rvgen.batch.signals import stop_signals
from rvgen.batch.summary import Reporter, RunInfo, Summary, Tracker, WorkerSpec
from rvgen.imageio import is_temporary
from rvgen.pipeline import preflight
from rvgen.plugins import Registry
from rvgen.recipe import Recipe


def prepare(recipe: Recipe, registry: Registry | None = None) -> RunKey:
    """Check the task's reference images open and are large enough, and what else needs the
    network (:func:`rvgen.pipeline.preflight`: a recipe error, before any work), and make the
    run's key from the recipe, their hashes and the versions of the plugins it uses."""
    sources = {name: str(source) for name, (source, _) in recipe.references(registry).items()}
    preflight(recipe, registry)
    return RunKey.of(recipe.digest(), sources, recipe.execution.precision, recipe.execution.layout,
                     recipe.plugins(registry), guides=recipe.build_task(registry).guide_patterns())


def run_jobs(
    recipe: Recipe,
    run: RunInfo,
    reporter: Reporter,
    key: RunKey | None = None,
    registry: Registry | None = None,
    scheduler: str | None = None,
    keep_images: bool = False,
) -> Summary:
    """Make every job of ``run`` with its workers (or on the Dask ``scheduler``); failures are
    recorded and the others go on. Returns the summary; never raises for one image.

    With ``keep_images``, each :class:`~rvgen.batch.events.ImageDone` the reporter gets carries
    the result as a float32 CPU tensor (1, 3, H, W) in ``image``, whatever the back end."""
    key = key or prepare(recipe, registry)
    summary = Summary(total=len(run.jobs), skipped=run.skipped)
    tracker = Tracker(summary, reporter)
    start = time.perf_counter()
    # Every SIGINT and SIGTERM from here to the summary is recorded, never lost and never
    # raised in the middle of the reporters: the summary and the log's end are always written.
    # A clip with workers to spare goes out in parts, its shots shared among them.
    jobs = split_clips(run.jobs, 1 if scheduler is not None else len(run.workers), uuid.uuid4().hex[:16])
    if len(run.workers) > max(1, len(jobs)):  # a worker with nothing to do would only cost its start
        run = replace(run, workers=list(run.workers[:max(1, len(jobs))]))
    with stop_signals(raising=False) as signals:
        reporter.start(run)
        if run.jobs:
            if scheduler is not None:
                run_dask(recipe, key, jobs, tracker, scheduler, keep_images)
            elif len(run.workers) == 1:
                run_inline(recipe, key, jobs, run.workers[0], tracker, registry, keep_images)
            else:
                run_processes(recipe, key, jobs, run.workers, tracker, keep_images)
        if summary.signal is None:
            summary.signal = signals.first
        summary.seconds = time.perf_counter() - start
        reporter.finish(summary)
    return summary


MAX_CPU_WORKERS = 8
"""CPU workers the default fills the cores with at one torch thread each; past this many cores,
each image gets more threads instead (every worker holds its own network and images)."""


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads(cpu_count: int | None = None) -> int:
    """The torch threads each CPU worker runs each image with by default: one, up to
    :data:`MAX_CPU_WORKERS` cores; on more, as many as make that many workers fill the cores.
    Images made side by side on one thread each go through a folder faster than images made
    one after another on several (on 2 cores, 16 images: 2 workers x 1 thread 271 images an
    hour, 1 x 2 threads 236; docs/benchmarks.md); an image's pixels depend on its threads,
    so this never depends on the folder."""
    return max(1, (cpu_count or cores()) // MAX_CPU_WORKERS)


def worker_specs(devices: Sequence[str], per_device: int | None = None, cpu_count: int | None = None,
                 threads: int | None = None) -> list[WorkerSpec]:
    """``per_device`` workers on each device (default: one per GPU, and on the CPU as many as
    the cores hold at ``threads`` each).

    A CPU result depends on the number of torch threads that made it (reductions, convolutions
    and matrix products are split differently), so every CPU worker runs each image with the
    same ``threads`` (default :func:`cpu_threads`) however many workers there are: the same
    recipe gives the same pixels with ``--workers 1`` or ``--workers 8``.
    """
    cpu_count = cpu_count or cores()
    threads = threads or cpu_threads(cpu_count)
    specs = []
    for device in devices:
        count = per_device or (max(1, cpu_count // threads) if device == "cpu" else 1)
        for i in range(count):
            name = device if count == 1 else f"{device}#{i + 1}"
            specs.append(WorkerSpec(name, device, threads if device == "cpu" else None))
    return specs


def remove_leftovers(folder: Path) -> int:
    """Delete the temporary files a killed run left in ``folder`` and its sub-folders: only
    rvgen's own (:func:`rvgen.imageio.is_temporary`), never a user's file. Links to folders are
    not followed and hidden folders not entered (rvgen writes in neither). Call with the lock held."""
    count = 0
    for parent, dirs, files in os.walk(folder):  # followlinks=False
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            path = Path(parent) / name
            try:
                if is_temporary(name) and stat.S_ISREG(path.lstat().st_mode):
                    path.unlink()
                    count += 1
            except FileNotFoundError:
                pass
    return count
