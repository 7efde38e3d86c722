"""Step images (``output.save_every``): the image every N iterations, beside its result as
``STEM.iterNNN.FORMAT`` (:meth:`rvgen.batch.jobs.Job.step`).

Each carries, as text in the file, the name of the result it leads to (:data:`STEP_KEY`), so
rvgen removes only step images it made: with ``output.keep_steps = false`` a worker removes
an image's steps once its result is written, and a run removes those a killed run left
(:func:`remove_steps`) when it starts. A file at a step image's name that rvgen did not make
is never replaced (that step image is not written).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch

from rvgen import imageio
from rvgen.batch.jobs import STEP_NAME, Job
from rvgen.batch.sidecar import write_image
from rvgen.recipe import Recipe

STEP_KEY = "rvgen-step"  # the text a step image carries: the name of the result it leads to


def is_step(path: Path, output: Path) -> bool:
    """Whether ``path`` is a step image rvgen made towards ``output``."""
    return imageio.read_metadata(path).get(STEP_KEY) == output.name


def write_step(recipe: Recipe, job: Job, image: torch.Tensor, iteration: int, iterations: int) -> Path | None:
    """Write the step image of ``job`` at ``iteration``; its path, or None when a file rvgen
    did not make is at that name (it is left alone)."""
    path = job.step(iteration, iterations)
    if os.path.lexists(path) and not is_step(path, job.output):
        return None
    write_image(recipe, job, image, path, metadata={STEP_KEY: job.output.name})
    return path


def remove_steps(jobs: Iterable[Job]) -> int:
    """Delete the step images rvgen made towards ``jobs``' results (a killed run's, with
    ``keep_steps = false``); other files are never touched. Each folder is listed once.
    Returns how many were removed. Call with the output folder's lock held."""
    wanted: dict[Path, dict[str, Job]] = defaultdict(dict)  # folder -> "STEM|SUFFIX" -> job
    for job in jobs:
        wanted[job.output.parent][f"{job.output.stem}|{job.output.suffix}"] = job
    count = 0
    for folder, outputs in wanted.items():
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            step = STEP_NAME.fullmatch(name)
            job = outputs.get(f"{step[1]}|{step[2]}") if step else None
            path = folder / name
            if job is not None and path.is_file() and not path.is_symlink() and is_step(path, job.output):
                path.unlink(missing_ok=True)
                count += 1
    return count
