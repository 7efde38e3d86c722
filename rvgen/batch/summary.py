"""What a run is told and what it tells: the plan the reporters see before the first image
(:class:`RunInfo`, with its :class:`WorkerSpec` list), the reporters' calls
(:class:`Reporter`), and the :class:`Summary` the :class:`Tracker` keeps from the events,
whose exit code the command ends with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from rvgen.batch.events import (
    Event,
    ImageAbandoned,
    ImageDone,
    ImageFailed,
    ImageStarted,
    PartDone,
    WorkerFailed,
)
from rvgen.batch.jobs import Job
from rvgen.batch.signals import EXIT_FOR_SIGNAL


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
        """Jobs no worker took: neither finished nor abandoned part way."""
        return self.total - len(self.done) - len(self.failed) - len(self.abandoned)

    @property
    def unfinished(self) -> int:
        """Jobs without a result: abandoned part way or not started."""
        return len(self.abandoned) + self.not_started

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return EXIT_FOR_SIGNAL.get(self.signal, 128 + int(self.signal))
        return 1 if self.failed or self.unfinished else 0


class Reporter(Protocol):
    def start(self, run: RunInfo) -> None: ...
    def handle(self, event: Event) -> None: ...
    def finish(self, summary: Summary) -> None: ...


class Tracker:
    """Keeps the summary from the events and passes each on to the reporter.

    The parts of a clip (:attr:`~rvgen.batch.jobs.Job.part`) are one job to the summary and
    the reporters: events reach them with the whole job, and each job ends once. A part that
    fails or is abandoned after the clip already ended (its other part failed, or the run
    was stopped) is passed on as a :class:`PartDone`."""

    def __init__(self, summary: Summary, reporter: Reporter):
        self.summary, self.reporter = summary, reporter
        self.current: dict[str, Job] = {}  # worker -> the job it is on
        self.ended: set[Job] = set()

    def __call__(self, event: Event) -> None:
        s = self.summary
        job = getattr(event, "job", None)
        if job is not None and job.part is not None:
            event = replace(event, job=job.whole)
        if isinstance(event, (ImageDone, ImageFailed, ImageAbandoned)):
            self.current.pop(event.worker, None)
            if event.job in self.ended:
                event = PartDone(event.worker, event.job)
            else:
                self.ended.add(event.job)
        if isinstance(event, ImageStarted):
            self.current[event.worker] = event.job
        elif isinstance(event, PartDone):
            self.current.pop(event.worker, None)
        elif isinstance(event, ImageDone):
            s.done.append(event.job)
        elif isinstance(event, ImageFailed):
            s.failed.append((event.job, event.reason))
        elif isinstance(event, ImageAbandoned):
            s.abandoned.append(event.job)
        elif isinstance(event, WorkerFailed):
            s.problems.append(f"worker {event.worker} did not start: {event.reason}")
        self.reporter.handle(event)

    def abandon_current(self) -> None:
        """Workers that were killed: their images were not finished."""
        for worker, job in list(self.current.items()):
            self(ImageAbandoned(worker, job))
