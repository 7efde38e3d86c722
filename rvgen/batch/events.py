"""What workers tell the parent: small picklable records, one per thing that happened.

Workers (in this process, in worker processes, or on a Dask cluster) only ever emit these;
the parent turns them into the display, the log file and the summary. ``worker`` names the
worker (``cpu``, ``cuda:1``, ``cpu#2`` when a device has several workers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rvgen.batch.jobs import Job
from rvgen.engine.optimize import Level


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
    """An image's progress: ``iteration`` of ``iterations`` counted over all pyramid levels,
    and where that is (``level``: which level, its size, the iteration there; None for one
    level). A clip's also says which frame: ``frames`` (the frame being made, from 0, of
    how many), ``passes`` (which pass of how many, with ``video.passes`` > 1) and ``eta``
    (seconds left for the worker's share of the clip, once a frame was made)."""

    worker: str
    job: Job
    iteration: int
    iterations: int
    loss: float
    level: Level | None = None
    frames: tuple[int, int] | None = None
    eta: float | None = None
    passes: tuple[int, int] | None = None

    @property
    def stage(self) -> str:
        """'level 2/3, 192 px: iteration 40/50', or 'iteration 40/300' for a single scale;
        a clip's is preceded by 'frame 12/48, ETA 2m10s: ' ('pass 2/3, frame 12/48, ...' with passes)."""
        level = self.level
        if level is None or level.count <= 1:
            stage = f"iteration {self.iteration}/{self.iterations}"
        else:
            stage = f"level {level.index}/{level.count}, {level.side} px: iteration {level.iteration}/{level.iterations}"
        if self.frames is None:
            return stage
        eta = "" if self.eta is None else f", ETA {duration(self.eta)}"
        sweep = "" if self.passes is None else f"pass {self.passes[0]}/{self.passes[1]}, "
        return f"{sweep}frame {self.frames[0] + 1}/{self.frames[1]}{eta}: {stage}"


def duration(seconds: float) -> str:
    """'45s', '2m10s', '1h05m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True)
class ImageDone:
    """An image written with its sidecar. ``parts`` (the per-term losses) and ``history`` (a
    short ``(iteration, loss)`` list) are the result's; ``image`` is the result as a float32
    CPU tensor (1, 3, H, W) when the run keeps images (``run_jobs(..., keep_images=True)``),
    else None."""

    worker: str
    job: Job
    loss: float
    iterations: int
    seconds: float
    parts: dict[str, float] = field(default_factory=dict, compare=False)
    history: list[tuple[int, float]] = field(default_factory=list, compare=False)
    image: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __reduce__(self):
        """Pickle the image by value, as a NumPy array: a multiprocessing queue would otherwise
        send a tensor through torch's shared-memory reductions, which outlive neither the worker
        nor the queue's manager."""
        image = None if self.image is None else self.image.numpy()
        return _image_done, (self.worker, self.job, self.loss, self.iterations, self.seconds, self.parts,
                             self.history, image)


def _image_done(worker, job, loss, iterations, seconds, parts, history, image: np.ndarray | None) -> ImageDone:
    return ImageDone(worker, job, loss, iterations, seconds, parts, history,
                     None if image is None else torch.from_numpy(image))


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


@dataclass(frozen=True)
class PartDone:
    """A worker made its share of a clip's shots (``frames``: the frame passes it made now);
    another part of the clip writes the video (:mod:`rvgen.batch.clip`)."""

    worker: str
    job: Job
    frames: int = 0


Event = WorkerReady | WorkerFailed | ImageStarted | Step | ImageDone | ImageFailed | ImageAbandoned | PartDone
