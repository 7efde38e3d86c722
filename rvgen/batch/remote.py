"""``--backend dask``: each job a task on an existing Dask cluster, through joblib's dask backend.

The cluster needs no shared disk: inputs travel as bytes (a scikit-image sample by its name),
the reference images are read here once and sent along, and results come back to be written
here. A Dask worker process keeps its :class:`~rvgen.pipeline.Pipeline` between tasks of the
same recipe. Events name the worker ``dask:DEVICE``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rvgen import imageio
from rvgen.batch.events import ImageFailed, WorkerReady
from rvgen.batch.jobs import Job
from rvgen.batch.sidecar import RunKey, write_result
from rvgen.batch.signals import Interrupted, signal_of, stop_signals
from rvgen.batch.summary import Tracker
from rvgen.batch.worker import done, failure
from rvgen.errors import ImageError, UsageError
from rvgen.pipeline import Pipeline, load_references
from rvgen.recipe import Recipe

_CACHED: dict[tuple[str, str], Pipeline] = {}

TaskResult = tuple[Job, str, Any, Any, str]
"""What a task returns: ``(job, "done", Result, Numerics, device)`` (the precision and layout it
ran in, for the sidecar) or ``(job, "failed", reason, details, device)``."""


def _failed(job: Job, reason: str, details: str | None = None, device: str = "dask") -> TaskResult:
    return job, "failed", reason, details, device


def make_remote(recipe: Recipe, job: Job, data: bytes | None, references: Mapping[str, torch.Tensor]) -> TaskResult:
    """One job on a Dask worker, which may not share our disks: the input comes as bytes
    (``None`` for a scikit-image sample) and the result goes back to the parent, which writes
    it. The pipeline is kept per worker process, keyed by the recipe."""
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
        guides = pipeline.guides(job.rel, content)  # mask files: at the same paths on the worker
        result = pipeline.synth.run(content, job.variation, **({"guides": guides} if guides else {}))
        result.image = result.image.cpu()
        return job, "done", result, pipeline.synth.numerics, device  # details of a result: what it ran in
    except Exception as exc:
        return _failed(job, *failure(exc, device, size), device)


def _read_input(job: Job) -> bytes | None:
    return None if imageio.is_sample(job.source) else Path(job.source).read_bytes()


def run_dask(recipe: Recipe, key: RunKey, jobs: Sequence[Job], tracker: Tracker, scheduler: str,
             keep_images: bool = False) -> None:
    """All of ``jobs`` on the Dask cluster at ``scheduler``; results are written here."""
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
                if job.clip:  # frame by frame, with its frames kept here: not a task of one image
                    yield delayed(_failed)(job, f"{job.rel}: clips are made with --backend local only")
                    continue
                try:
                    data = _read_input(job)
                except OSError as exc:
                    yield delayed(_failed)(job, f"{job.source}: cannot read ({exc.strerror or exc})")
                    continue
                yield delayed(make_remote)(recipe, job, data, references)

        try:
            with stop_signals(), parallel_config(backend="dask", wait_for_workers_timeout=60):
                for job, status, payload, details, device in Parallel(return_as="generator_unordered")(tasks()):
                    worker = f"dask:{device}"
                    if status == "done":
                        try:
                            write_result(recipe, key, job, payload, device, numerics=details)
                        except ImageError as exc:
                            tracker(ImageFailed(worker, job, *failure(exc)))
                            continue
                        tracker(done(worker, job, payload, keep_images))
                    else:
                        tracker(ImageFailed(worker, job, payload, details))
        except (KeyboardInterrupt, Interrupted) as exc:
            tracker.summary.signal = signal_of(exc)
    finally:
        client.close()
