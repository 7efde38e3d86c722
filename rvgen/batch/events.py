"""What workers tell the parent: small picklable records, one per thing that happened.

Workers (in this process, in worker processes, or on a Dask cluster) only ever emit these;
the parent turns them into the display, the log file and the summary. ``worker`` names the
worker (``cpu``, ``cuda:1``, ``cpu#2`` when a device has several workers).
"""

from __future__ import annotations

from dataclasses import dataclass

from rvgen.batch.jobs import Job


@dataclass(frozen=True)
class WorkerReady:
    worker: str
    device: str
    threads: int | None = None  # torch threads of a CPU worker process
    pid: int | None = None  # the worker's process


@dataclass(frozen=True)
class WorkerFailed:
    """A worker that could not start (its device is broken, the backbone will not build)."""

    worker: str
    reason: str
    details: str | None = None


@dataclass(frozen=True)
class ImageStarted:
    worker: str
    job: Job


@dataclass(frozen=True)
class Step:
    worker: str
    job: Job
    iteration: int
    iterations: int
    loss: float


@dataclass(frozen=True)
class ImageDone:
    worker: str
    job: Job
    loss: float
    iterations: int
    seconds: float


@dataclass(frozen=True)
class ImageFailed:
    worker: str
    job: Job
    reason: str
    details: str | None = None


@dataclass(frozen=True)
class ImageAbandoned:
    """The run was stopped while this image was being made; nothing was written for it."""

    worker: str
    job: Job


Event = WorkerReady | WorkerFailed | ImageStarted | Step | ImageDone | ImageFailed | ImageAbandoned
