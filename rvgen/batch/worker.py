"""A worker: one device, one :class:`~rvgen.pipeline.Pipeline`, images until none are left.

The backbone, the losses and the recipe's fixed targets (the style image's Grams, built
once) live as long as the worker. For each job the worker loads the input, optimises, and
writes the result and its sidecar atomically; everything it has to say goes out as
:mod:`rvgen.batch.events` through ``emit``. One image failing is an :class:`ImageFailed`
event, never the end of the worker. The same code runs in the parent process (one worker),
in joblib's worker processes (several devices) and on Dask workers.
"""

from __future__ import annotations

import os
import platform
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

import torch

import rvgen
from rvgen import imageio
from rvgen.batch.events import (
    Event,
    ImageAbandoned,
    ImageDone,
    ImageFailed,
    ImageStarted,
    Step,
    WorkerFailed,
    WorkerReady,
)
from rvgen.batch.jobs import Job
from rvgen.batch.state import RunKey, input_identity
from rvgen.engine import Progress, Result
from rvgen.errors import RvgenError
from rvgen.pipeline import Pipeline
from rvgen.plugins import Registry
from rvgen.recipe import Recipe

STEP_INTERVAL = 0.25  # seconds between progress events (and stop checks) per worker
MAX_TAKE = 64  # most jobs a GPU worker takes from the queue at once


class Stopped(BaseException):
    """The run was asked to stop (SIGINT or SIGTERM): abandon the current image."""


def sidecar(recipe: Recipe, key: RunKey, job: Job, result: Result, device: str) -> dict[str, Any]:
    return {
        "input": {"name": job.rel, "source": job.source, **input_identity(job.source)},
        "variation": job.variation,
        "recipe": {"source": recipe.source, "digest": key.recipe, "resolved": recipe.to_dict()},
        "references": dict(key.references),
        "size": list(result.image.shape[-2:][::-1]),
        "loss": {"initial": result.initial_loss, "final": result.loss, "terms": result.parts},
        "iterations": result.iterations,
        "seconds": round(result.seconds, 3),
        "device": device,
        "versions": {"rvgen": rvgen.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def write_result(recipe: Recipe, key: RunKey, job: Job, result: Result, device: str) -> None:
    """The image first, then its sidecar: a sidecar is only ever beside a complete image."""
    imageio.save_image(result.image, job.output, recipe.output["format"], recipe.output["quality"])
    imageio.write_json(sidecar(recipe, key, job, result, device), job.sidecar)


def failure_reason(exc: BaseException, device: str, size: int) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return f"out of memory on {device} at {size} px; try a smaller output.size"
    if isinstance(exc, RvgenError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Worker:
    def __init__(
        self,
        recipe: Recipe,
        key: RunKey,
        device: str,
        name: str,
        emit: Callable[[Event], None],
        should_stop: Callable[[], bool] = lambda: False,
        registry: Registry | None = None,
    ):
        self.recipe, self.key, self.device, self.name = recipe, key, device, name
        self.emit, self.should_stop = emit, should_stop
        self.pipeline = Pipeline(recipe, device, registry)

    def _reporter(self, jobs: Sequence[Job]) -> Callable[[int, Progress], None]:
        """Progress of image ``index`` of ``jobs``: a Step event (and a stop check) at most
        every STEP_INTERVAL seconds for the worker as a whole."""
        last = [time.monotonic()]

        def callback(index: int, progress: Progress) -> None:
            now = time.monotonic()
            if now - last[0] < STEP_INTERVAL:
                return
            last[0] = now
            if self.should_stop():
                raise Stopped
            self.emit(Step(self.name, jobs[index], progress.iteration, progress.iterations, progress.loss))

        return callback

    def _fail(self, job: Job, exc: BaseException) -> None:
        details = None if isinstance(exc, RvgenError) else traceback.format_exc()
        self.emit(ImageFailed(self.name, job, failure_reason(exc, self.device, self.recipe.output["size"]), details))

    def _finish(self, job: Job, outcome: Result | RvgenError) -> None:
        if isinstance(outcome, RvgenError):
            self.emit(ImageFailed(self.name, job, str(outcome)))
            return
        try:
            write_result(self.recipe, self.key, job, outcome, self.device)
        except Exception as exc:
            self._fail(job, exc)
        else:
            self.emit(ImageDone(self.name, job, outcome.loss, outcome.iterations, outcome.seconds))

    def make(self, job: Job) -> None:
        """One job, start to finish; failures become events, a stop propagates."""
        self.emit(ImageStarted(self.name, job))
        report = self._reporter([job])
        try:
            content = self.pipeline.load(job.source)
            result = self.pipeline.synth.run(content, job.variation, lambda progress: report(0, progress))
        except (Stopped, KeyboardInterrupt):
            self.emit(ImageAbandoned(self.name, job))
            raise
        except Exception as exc:  # one bad image never stops the others
            self._fail(job, exc)
        else:
            self._finish(job, result)

    def make_batch(self, jobs: Sequence[Job]) -> None:
        """Several jobs optimised together (grouped by size, split further if memory runs out).
        An image that fails alone is recorded alone; if a batch fails as a whole for another
        reason, its images are made one by one so the error lands on the image causing it."""
        if len(jobs) == 1:
            return self.make(jobs[0])
        ready, contents = [], []
        for job in jobs:
            try:
                contents.append(self.pipeline.load(job.source))
            except Exception as exc:
                self.emit(ImageStarted(self.name, job))
                self._fail(job, exc)
            else:
                ready.append(job)
        running: set[int] = set()

        def on_batch(chunk: list[int]) -> None:
            for i in chunk:
                running.add(i)
                self.emit(ImageStarted(self.name, ready[i]))

        variations = [job.variation for job in ready]
        finished: set[int] = set()
        try:
            for index, outcome in self.pipeline.results(contents, variations, self._reporter(ready), on_batch):
                running.discard(index)
                finished.add(index)
                self._finish(ready[index], outcome)
        except (Stopped, KeyboardInterrupt):
            for i in sorted(running):
                self.emit(ImageAbandoned(self.name, ready[i]))
            raise
        except Exception:
            for i, job in enumerate(ready):
                if i not in finished:
                    self.make(job)

    def run(self, jobs: Iterable[Job]) -> None:
        jobs = iter(jobs)
        take = self.pipeline.batch_size(MAX_TAKE)
        while True:
            if self.should_stop():
                raise Stopped
            batch = list(islice(jobs, take))
            if not batch:
                return
            self.make_batch(batch)


def start_failure(name: str, exc: BaseException) -> WorkerFailed:
    if isinstance(exc, RvgenError):
        return WorkerFailed(name, str(exc))
    return WorkerFailed(name, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def process_main(
    recipe: Recipe,
    key: RunKey,
    device: str,
    name: str,
    threads: int | None,
    jobs: Any,
    events: Any,
    stop: Any,
) -> None:
    """Entry point of a worker process: ``jobs`` and ``events`` are queues shared with the
    parent (``None`` in ``jobs`` means no more work), ``stop`` an event the parent sets.

    Signals are the parent's business: it hears Ctrl-C and SIGTERM and sets ``stop``, and
    the worker abandons its image at the next check.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if threads:
        torch.set_num_threads(threads)
    try:
        worker = Worker(recipe, key, device, name, events.put, stop.is_set)
    except BaseException as exc:
        events.put(start_failure(name, exc))
        return
    events.put(WorkerReady(name, device, torch.get_num_threads() if device == "cpu" else None, os.getpid()))

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


_CACHED: dict[tuple[str, str], Pipeline] = {}


def make_remote(
    recipe: Recipe, job: Job, data: bytes | None, references: Mapping[str, torch.Tensor]
) -> tuple[Job, str, Any, str | None, str]:
    """One job on a Dask worker, which may not share our disks: the input comes as bytes
    (``None`` for a scikit-image sample) and the result goes back to the parent, which writes
    it. The synthesizer is kept per worker process, keyed by the recipe.

    Returns ``(job, "done", Result, None, device)`` or ``(job, "failed", reason, details, device)``.
    """
    import io

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = recipe.output["size"]
    try:
        cache_key = (recipe.digest(), device)
        pipeline = _CACHED.get(cache_key)
        if pipeline is None:
            pipeline = Pipeline(recipe, device, references=references)
            _CACHED.clear()
            _CACHED[cache_key] = pipeline
        source = job.source if data is None else io.BytesIO(data)
        content = imageio.load_image(source, size, name=job.rel)
        result = pipeline.synth.run(content, job.variation)
        result.image = result.image.cpu()
        return job, "done", result, None, device
    except Exception as exc:
        details = None if isinstance(exc, RvgenError) else traceback.format_exc()
        return job, "failed", failure_reason(exc, device, size), details, device
