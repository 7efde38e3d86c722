"""A worker: one device, one :class:`~rvgen.pipeline.Pipeline`, images until none are left.

The backbone, the losses and the recipe's fixed targets (the style image's Grams, built
once) live as long as the worker. A CPU worker runs with the torch threads its spec gives
(:func:`rvgen.batch.runner.worker_specs`), the same for every worker, since a CPU result
depends on them. For each job the worker loads the input, optimises, and
writes the result and its sidecar atomically (a clip, frame by frame, through
:class:`~rvgen.batch.clip.ClipMaker`); everything it has to say goes out as
:mod:`rvgen.batch.events` through ``emit``. One image failing is an :class:`ImageFailed`
event, never the end of the worker. The same class runs in the parent process and in worker
processes (:mod:`rvgen.batch.local`); a Dask task (:mod:`rvgen.batch.remote`) shares its
:func:`failure` and :func:`done`.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Sequence

import torch

from rvgen.batch.clip import ClipMaker
from rvgen.batch.events import (
    Event,
    ImageAbandoned,
    ImageDone,
    ImageFailed,
    ImageStarted,
    PartDone,
    Step,
)
from rvgen.batch.jobs import Job
from rvgen.batch.sidecar import RunKey, write_result
from rvgen.batch.signals import StepGate, Stopped
from rvgen.batch.steps import write_step
from rvgen.engine import Progress, Result
from rvgen.errors import RvgenError
from rvgen.params import clip
from rvgen.pipeline import Pipeline
from rvgen.plugins import Registry
from rvgen.recipe import Recipe

MAX_TAKE = 64  # most jobs a GPU worker takes from the queue at once


REASON_CHARS = 300  # the longest reason a failure line shows


def failure(exc: BaseException, device: str | None = None, size: int | None = None) -> tuple[str, str | None]:
    """What to report of ``exc``: ``(reason, details)``, the reason one line. An rvgen error is
    its message and has no details; anything else has its traceback as details. Running out
    of memory (the device's or the computer's) says so and what to try, with the device and
    the output size when given; a number out of range says so; any other error is ``Type:``
    and the first line of its message (never the C++ frames torch appends)."""
    at = f" at {size} px" if size is not None else ""
    if isinstance(exc, torch.OutOfMemoryError):
        where = f" on {device}" if device is not None else ""
        return f"out of memory{where}{at}; try a smaller output.size", _traceback(exc)
    if isinstance(exc, RvgenError):
        return _one_line(str(exc)), None
    if isinstance(exc, MemoryError):
        return f"out of memory (the computer's RAM){at}; try a smaller output.size or fewer workers", _traceback(exc)
    if isinstance(exc, OverflowError):
        return "a number out of range for the computation; check the recipe's sizes and values", _traceback(exc)
    return _one_line(f"{type(exc).__name__}: {exc}"), _traceback(exc)


def _one_line(text: str) -> str:
    """The first line of ``text`` (torch appends C++ frames after it), at most REASON_CHARS long."""
    return clip(text.strip().split("\n", 1)[0].split("Exception raised from", 1)[0].strip(), REASON_CHARS)


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def done(worker: str, job: Job, result: Result, keep_image: bool = False) -> ImageDone:
    """The event for a written result (with the image as a float32 CPU tensor if ``keep_image``)."""
    image = result.image.detach().float().cpu() if keep_image else None
    return ImageDone(worker, job, result.loss, result.iterations, result.seconds, dict(result.parts),
                     [(int(i), float(loss)) for i, loss in result.history], image)


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
        keep_images: bool = False,
        threads: int | None = None,
    ):
        self.recipe, self.key, self.device, self.name = recipe, key, device, name
        self.emit, self.should_stop, self.keep_images = emit, should_stop, keep_images
        if device == "cpu" and threads:
            torch.set_num_threads(threads)  # for this process: one worker per process
        # What a CPU result depends on besides the recipe (recorded in its sidecar); None elsewhere.
        self.threads = torch.get_num_threads() if device == "cpu" else None
        self.registry = registry
        self.pipeline = Pipeline(recipe, device, registry)
        self.clips: ClipMaker | None = None  # built for the first clip job
        self.steps: dict[Job, list] = {}  # the step images written of each job (output.save_every)

    def _reporter(self, jobs: Sequence[Job]) -> Callable[[int, Progress], None]:
        """Progress of image ``index`` of ``jobs``: a Step event (and a stop check) at most
        every STEP_INTERVAL seconds (:class:`~rvgen.batch.signals.StepGate`) for the worker as a whole."""
        gate = StepGate(self.should_stop)

        def callback(index: int, progress: Progress) -> None:
            if progress.image is not None:
                self._save_step(jobs[index], progress)
            if gate():
                self.emit(Step(self.name, jobs[index], progress.iteration, progress.iterations, progress.loss,
                               progress.level))

        return callback

    def _save_step(self, job: Job, progress: Progress) -> None:
        """``output.save_every``: the image at this iteration, beside the output (never over a
        file rvgen did not make: :func:`rvgen.batch.steps.write_step`)."""
        path = write_step(self.recipe, job, progress.image, progress.iteration, progress.iterations)
        if path is not None:
            self.steps.setdefault(job, []).append(path)

    def _drop_steps(self, job: Job) -> None:
        """Forget the job's step images; remove them unless ``output.keep_steps``."""
        for path in self.steps.pop(job, []):
            if not self.recipe.output["keep_steps"]:
                path.unlink(missing_ok=True)

    def _fail(self, job: Job, exc: BaseException) -> None:
        self.steps.pop(job, None)  # a failed image keeps the steps it wrote, to see where it went
        self.emit(ImageFailed(self.name, job, *failure(exc, self.device, self.recipe.output["size"])))

    def _finish(self, job: Job, outcome: Result | RvgenError) -> None:
        if isinstance(outcome, RvgenError):
            self.steps.pop(job, None)
            self.emit(ImageFailed(self.name, job, *failure(outcome)))
            return
        try:
            write_result(self.recipe, self.key, job, outcome, self.device, self.threads,
                         self.pipeline.synth.numerics)
        except Exception as exc:
            self._fail(job, exc)
        else:
            self._drop_steps(job)
            self.emit(done(self.name, job, outcome, self.keep_images))

    def _attempt(self, job: Job, make: Callable[[], Result], finish: Callable[[Result], None]) -> None:
        """One job, start to finish: ``make`` it, then ``finish`` the result; failures become
        events, a stop propagates (the job abandoned)."""
        self.emit(ImageStarted(self.name, job))
        try:
            result = make()
        except (Stopped, KeyboardInterrupt):
            self.emit(ImageAbandoned(self.name, job))
            raise
        except Exception as exc:  # one bad image never stops the others
            self._fail(job, exc)
        else:
            finish(result)

    def make(self, job: Job) -> None:
        """One image job, start to finish."""
        report = self._reporter([job])

        def make() -> Result:
            content = self.pipeline.load(job.source)
            guides = self.pipeline.guides(job.rel, content)
            return self.pipeline.synth.run(content, job.variation, lambda progress: report(0, progress),
                                           **({"guides": guides} if guides else {}))

        self._attempt(job, make, lambda result: self._finish(job, result))

    def make_clip(self, job: Job) -> None:
        """A clip job (or this worker's part of one), frame by frame
        (:class:`~rvgen.batch.clip.ClipMaker`), its video and sidecar written at the end by
        the part that ends last (the frames made so far are kept when it stops or fails)."""
        made = 0

        def make() -> Result | None:
            nonlocal made
            if self.clips is None:
                self.clips = ClipMaker(Pipeline(self.recipe, self.device, self.registry, clips=True), self.key,
                                       self.name, self.device, self.threads, self.emit, self.should_stop)
            before = self.clips.made
            try:
                return self.clips.make(job)
            finally:
                made = self.clips.made - before

        def finish(result: Result | None) -> None:
            if result is None:  # another part of the clip writes it
                self.emit(PartDone(self.name, job, made))
            else:
                self.emit(done(self.name, job, result, self.keep_images))

        self._attempt(job, make, finish)

    def make_batch(self, jobs: Sequence[Job]) -> None:
        """Several jobs optimised together (grouped by size, split further if memory runs out).
        An image that fails alone is recorded alone; if a batch fails as a whole for another
        reason, its images are made one by one so the error lands on the image causing it.
        Clips are made one by one, each frame after the one before."""
        for job in [job for job in jobs if job.clip]:
            self.make_clip(job)
        jobs = [job for job in jobs if not job.clip]
        if not jobs:
            return
        if len(jobs) == 1:
            return self.make(jobs[0])
        ready, contents, guides = [], [], []
        for job in jobs:
            try:
                content = self.pipeline.load(job.source)
                guide = self.pipeline.guides(job.rel, content)
            except Exception as exc:
                self.emit(ImageStarted(self.name, job))
                self._fail(job, exc)
            else:
                ready.append(job)
                contents.append(content)
                guides.append(guide)
        running: set[int] = set()

        def on_batch(chunk: list[int]) -> None:
            for i in chunk:
                running.add(i)
                self.emit(ImageStarted(self.name, ready[i]))

        variations = [job.variation for job in ready]
        finished: set[int] = set()
        try:
            for index, outcome in self.pipeline.results(contents, variations, self._reporter(ready), on_batch,
                                                        guides):
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
        """Jobs until none are left, as many at a time as a batch holds; a clip ends a take
        (its frames are made one by one, and its other parts are left to other workers)."""
        jobs = iter(jobs)
        take = self.pipeline.batch_size(MAX_TAKE)
        while True:
            if self.should_stop():
                raise Stopped
            batch = []
            for job in jobs:
                batch.append(job)
                if job.clip or len(batch) >= take:
                    break
            if not batch:
                return
            self.make_batch(batch)
