"""The sidecar: the JSON file beside each result, written and read here only.

A result ``NAME.png`` has ``NAME.png.json`` beside it (:func:`write_result` writes the image
first, then the sidecar, so a sidecar is only ever beside a complete image). The sidecar
records the input, the variation, the recipe (its digest and resolved settings), the
reference images' hashes, the losses (``loss``: initial, final and per term; ``history``:
a short ``[iteration, loss]`` list), the iterations, the time, the device (and, on a CPU,
the torch threads, which a CPU result depends on) and the versions.

A job is finished when its output exists and its sidecar records the same recipe digest, the
same input (sha256), the same reference images (the style image's sha256) and the same
variation (:func:`is_finished`); a changed recipe, input or style image makes it unfinished
again. Hashing every input on every run would read the whole folder, so an input whose size
and modification time match the sidecar's is taken to have the recorded hash. Readers ignore
fields they do not check (``history``, ``loss``, ``versions``, ...).

:class:`RunKey` (the recipe digest and the reference hashes) lives here too, not in a module
of its own: it is exactly the part of a sidecar a rerun compares against, so writing,
reading and the key stay in one file and the format cannot drift between two.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import rvgen
from rvgen import imageio
from rvgen.batch.jobs import Job
from rvgen.engine import Result
from rvgen.recipe import Recipe


def file_digest(source: str) -> str:
    """sha256 of a file (first 16 hex digits); a sample image is its own name."""
    if imageio.is_sample(source):
        return source
    h = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def input_identity(source: str) -> dict[str, Any]:
    """What the sidecar records of an input: its hash, and its size and mtime to trust it by."""
    if imageio.is_sample(source):
        return {"sha256": source}
    st = os.stat(source)
    return {"sha256": file_digest(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class RunKey:
    """Everything besides the input that decides a result."""

    recipe: str  # Recipe.digest()
    references: Mapping[str, str]  # reference name -> file digest

    @classmethod
    def of(cls, recipe_digest: str, references: Mapping[str, str]) -> RunKey:
        return cls(recipe_digest, {name: file_digest(src) for name, src in sorted(references.items())})


# -- writing ------------------------------------------------------------------------------


def sidecar(recipe: Recipe, key: RunKey, job: Job, result: Result, device: str,
            threads: int | None = None) -> dict[str, Any]:
    """The sidecar of ``job``'s ``result``; ``threads``: the torch threads of a CPU result."""
    data = {
        "input": {"name": job.rel, "source": job.source, **input_identity(job.source)},
        "variation": job.variation,
        "recipe": {"source": recipe.source, "digest": key.recipe, "resolved": recipe.to_dict()},
        "references": dict(key.references),
        "size": list(result.image.shape[-2:][::-1]),
        "loss": {"initial": result.initial_loss, "final": result.loss, "terms": result.parts},
        "history": [[int(iteration), float(loss)] for iteration, loss in result.history],
        "iterations": result.iterations,
        "seconds": round(result.seconds, 3),
        "device": device,
        "versions": {"rvgen": rvgen.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    if threads is not None:
        data["threads"] = threads
    return data


def write_image(recipe: Recipe, job: Job, image: torch.Tensor, path: Path | None = None) -> None:
    """A result (or a step towards it, at ``path``) in the recipe's format, with the input's
    alpha channel if it has one, resized to the image."""
    alpha = imageio.load_alpha(job.source, tuple(image.shape[-2:][::-1]))
    imageio.save_image(image, path or job.output, recipe.output["format"], recipe.output["quality"], alpha)


def write_result(recipe: Recipe, key: RunKey, job: Job, result: Result, device: str,
                 threads: int | None = None) -> None:
    """The image first, then its sidecar: a sidecar is only ever beside a complete image."""
    write_image(recipe, job, result.image)
    imageio.write_json(sidecar(recipe, key, job, result, device, threads), job.sidecar)


# -- reading ------------------------------------------------------------------------------


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _same_input(recorded: Mapping[str, Any], source: str) -> bool:
    if imageio.is_sample(source):
        return recorded.get("sha256") == source
    try:
        st = os.stat(source)
    except OSError:
        return False
    if recorded.get("size") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns:
        return True
    return recorded.get("sha256") == file_digest(source)


def is_finished(job: Job, key: RunKey) -> bool:
    """True when ``job``'s output and sidecar exist and were made by this recipe from this input."""
    try:
        if job.output.stat().st_size == 0:
            return False
    except OSError:
        return False
    data = read_sidecar(job.sidecar)
    if data is None:
        return False
    try:
        return (
            data["recipe"]["digest"] == key.recipe
            and dict(data.get("references", {})) == dict(key.references)
            and data["variation"] == job.variation
            and _same_input(data["input"], job.source)
        )
    except (KeyError, TypeError):
        return False


def split_finished(jobs: Iterable[Job], key: RunKey) -> tuple[list[Job], list[Job]]:
    """(jobs to do, jobs already finished)."""
    todo, finished = [], []
    for job in jobs:
        (finished if is_finished(job, key) else todo).append(job)
    return todo, finished
