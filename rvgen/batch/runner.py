"""Running a plan: one synthesizer, every job, each failure recorded and the rest carried on.

The runner is the only place that joins files and tensors: it loads images, hands tensors to
the :class:`~rvgen.engine.synth.Synthesizer`, and writes each result with a JSON sidecar
(everything needed to know how it was made). Progress goes to a :class:`Reporter`.
"""

from __future__ import annotations

import hashlib
import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

import rvgen
from rvgen import imageio
from rvgen.batch.jobs import Job, Plan
from rvgen.engine.optimize import Progress, Result
from rvgen.engine.synth import Synthesizer
from rvgen.errors import ImageError, RecipeError, RvgenError
from rvgen.plugins import Registry
from rvgen.recipe import Recipe


@dataclass
class Summary:
    total: int
    done: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


class Reporter(Protocol):
    def start(self, plan: Plan, device: str) -> None: ...
    def image_start(self, job: Job, index: int) -> None: ...
    def iteration(self, job: Job, progress: Progress) -> None: ...
    def image_done(self, job: Job, result: Result) -> None: ...
    def image_failed(self, job: Job, reason: str, details: str | None) -> None: ...
    def finish(self, summary: Summary) -> None: ...


def file_digest(source: str) -> str:
    if imageio.is_sample(source):
        return source
    h = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def sidecar(recipe: Recipe, job: Job, result: Result, device: torch.device) -> dict[str, Any]:
    return {
        "input": {"name": job.rel, "source": job.source, "sha256": file_digest(job.source)},
        "variation": job.variation,
        "recipe": {"source": recipe.source, "digest": recipe.digest(), "resolved": recipe.to_dict()},
        "size": list(result.image.shape[-2:][::-1]),
        "loss": {"initial": result.initial_loss, "final": result.loss, "terms": result.parts},
        "iterations": result.iterations,
        "seconds": round(result.seconds, 3),
        "device": str(device),
        "versions": {"rvgen": rvgen.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def load_references(synth: Synthesizer) -> dict[str, torch.Tensor]:
    """The task's reference images; one that cannot be read is a recipe error."""
    images = {}
    for name, (source, long_side) in synth.references().items():
        try:
            images[name] = imageio.load_image(source, long_side)
        except ImageError as exc:
            raise RecipeError(f"task.{name}: {exc}") from None
    return images


def run_batch(
    recipe: Recipe,
    plan: Plan,
    reporter: Reporter,
    device: torch.device | str = "cpu",
    registry: Registry | None = None,
) -> Summary:
    """Run every job of ``plan``; a job that fails is recorded and the others go on."""
    start = time.perf_counter()
    device = torch.device(device)
    summary = Summary(total=len(plan.jobs))
    reporter.start(plan, str(device))
    synth = Synthesizer(recipe, device, registry)
    synth.set_references(load_references(synth))
    fmt, quality, size = recipe.output["format"], recipe.output["quality"], recipe.output["size"]
    try:
        for index, job in enumerate(plan.jobs):
            reporter.image_start(job, index)
            try:
                content = imageio.load_image(job.source, size)
                result = synth.run(content, job.variation, lambda p, job=job: reporter.iteration(job, p))
                imageio.save_image(result.image, job.output, fmt, quality)
                imageio.write_json(sidecar(recipe, job, result, device), job.sidecar)
            except RvgenError as exc:
                summary.failed.append((job, str(exc)))
                reporter.image_failed(job, str(exc), None)
            except torch.OutOfMemoryError:
                reason = f"out of memory on {device} at {size} px; try a smaller output.size"
                summary.failed.append((job, reason))
                reporter.image_failed(job, reason, traceback.format_exc())
            except Exception as exc:  # one bad image never stops the others
                reason = f"{type(exc).__name__}: {exc}"
                summary.failed.append((job, reason))
                reporter.image_failed(job, reason, traceback.format_exc())
            else:
                summary.done.append(job)
                reporter.image_done(job, result)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.seconds = time.perf_counter() - start
    reporter.finish(summary)
    return summary
