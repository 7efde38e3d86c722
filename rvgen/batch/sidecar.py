"""The sidecar: the JSON file beside each result, written and read here only.

A result ``NAME.png`` has ``NAME.png.json`` beside it (:func:`write_result` writes the image
first, then the sidecar, so a sidecar is only ever beside a complete image). The sidecar
records the input, the variation, the recipe (its digest and resolved settings), the
reference images' hashes, the hashes of the input's masks (``masks``), the losses (``loss``:
initial, final and per term; ``history``: a short ``[iteration, loss]`` list), the iterations, the time, the device (and, on a CPU,
the torch threads, which a CPU result depends on), the versions, and the distributions and
versions of the plugins whose task, backbone or losses the recipe uses (``plugins``).

A job is finished when its output exists and its sidecar records the same recipe digest, the
same input (sha256), the same reference images (the style image's sha256), the same mask
files of the input, the same variation and the same plugin versions (:func:`is_finished`); a
changed recipe, input, style image, mask or plugin version makes it unfinished again (a
plugin's new version may compute another loss: rvgen cannot tell, so it redoes the result).
Hashing every input on every run would read the whole folder, so an input whose size and
modification time match the sidecar's is taken to have the recorded hash. Readers ignore
fields they do not check (``history``, ``loss``, ``versions``, ...).

The image carries the sidecar's essentials too (:func:`provenance`: the version, the
resolved recipe, its seeds, the input's hash, the losses), as text in the file
(:func:`rvgen.imageio.save_image`), so a result copied out of its folder still says how it
was made (:func:`read_provenance`; ``rvgen info``, ``rvgen run --from``).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import rvgen
from rvgen import imageio
from rvgen.batch import schema
from rvgen.batch.jobs import Job
from rvgen.engine import Result
from rvgen.engine.precision import LEGACY_CPU, Numerics
from rvgen.engine.precision import resolve as resolve_numerics
from rvgen.recipe import Recipe
from rvgen.tasks.masks import mask_path

MISSING = "missing"  # a mask file's hash in the sidecar when there is none (mask_missing = "whole")


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
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # reference name -> its file
    precision: str = field(default="auto", compare=False)  # the recipe's optimizer.precision, as written
    layout: str = field(default="auto", compare=False)  # and its optimizer.layout
    threads: int | None = field(default=None, compare=False)  # torch threads of this run's CPU images
    plugins: Mapping[str, str] = field(default_factory=dict)  # plugin distribution -> version (Recipe.plugins)
    guides: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (name, pattern) of each input's masks

    @classmethod
    def of(cls, recipe_digest: str, references: Mapping[str, str], precision: str = "auto",
           layout: str = "auto", plugins: Mapping[str, str] | None = None,
           guides: Mapping[str, str] | None = None) -> RunKey:
        ordered = dict(sorted(references.items()))
        return cls(recipe_digest, {name: file_digest(src) for name, src in ordered.items()}, ordered, precision,
                   layout, plugins=dict(sorted((plugins or {}).items())), guides=tuple(sorted((guides or {}).items())))

    def mask_files(self, job: Job) -> dict[str, Path]:
        """The mask files ``job``'s input is styled by, by name (whether they exist or not)."""
        return {name: mask_path(pattern, job.rel) for name, pattern in self.guides}

    def masks(self, job: Job) -> dict[str, str]:
        """The hash of each mask file ``job``'s input is styled by (``missing`` for one that is
        not there), by name; empty when the recipe reads none."""
        return {name: file_digest(str(path)) if path.is_file() else MISSING
                for name, path in self.mask_files(job).items()}


# -- writing ------------------------------------------------------------------------------


def sidecar(recipe: Recipe, key: RunKey, job: Job, result: Result, device: str,
            threads: int | None = None, numerics: Numerics | None = None) -> dict[str, Any]:
    """The sidecar of ``job``'s ``result``; ``threads``: the torch threads of a CPU result;
    ``numerics``: what the backbone ran in (the recipe's ``precision`` and ``layout`` as they
    resolved there)."""
    data = {
        "input": {"name": job.rel, "source": job.source, **input_identity(job.source)},
        "variation": job.variation,
        "recipe": {"source": recipe.source, "digest": key.recipe, "resolved": recipe.to_dict()},
        "references": dict(key.references),
        "reference_files": dict(key.sources),
        "size": list(result.image.shape[-2:][::-1]),
        "loss": {"initial": result.initial_loss, "final": result.loss, "terms": result.parts},
        "history": [[int(iteration), float(loss)] for iteration, loss in result.history],
        "iterations": result.iterations,
        "seconds": round(result.seconds, 3),
        "device": device,
        "versions": {"rvgen": rvgen.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "plugins": dict(key.plugins),
    }
    masks = key.masks(job)
    if masks:
        data["masks"] = masks
        data["mask_files"] = {name: str(path) for name, path in key.mask_files(job).items() if masks[name] != MISSING}
    if threads is not None:
        data["threads"] = threads
    if numerics is not None:
        data["precision"], data["layout"] = numerics.precision, numerics.layout
    return data


PROVENANCE_KEY = "rvgen"  # the name of the text the image carries
PROVENANCE_FIELDS = ("input", "variation", "recipe", "references", "masks", "size", "loss", "history", "iterations",
                     "seconds", "device", "threads", "precision", "layout", "versions", "plugins")


def seeds(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The seeds of a resolved recipe, by dotted key (``task.seed``, ``backbone.seed``)."""
    return {f"{table}.{name}": value for table in ("task", "backbone")
            for name, value in (resolved.get(table) or {}).items() if name == "seed" or name.endswith("_seed")}


def provenance(data: Mapping[str, Any]) -> dict[str, Any]:
    """What a result's image carries of its sidecar ``data``: everything but the input's
    file path (which says nothing away from this machine), and the seeds spelled out."""
    out = {name: data[name] for name in PROVENANCE_FIELDS if name in data}
    out["input"] = {k: v for k, v in data["input"].items() if k in ("name", "sha256")}
    out["seeds"] = seeds(data["recipe"]["resolved"])
    return out


def write_image(recipe: Recipe, job: Job, image: torch.Tensor, path: Path | None = None,
                metadata: Mapping[str, str] | None = None) -> None:
    """A result (or a step towards it, at ``path``) in the recipe's format, with the input's
    alpha channel if it has one, resized to the image, and ``metadata`` in the file."""
    alpha = imageio.load_alpha(job.source, tuple(image.shape[-2:][::-1]))
    imageio.save_image(image, path or job.output, recipe.output["format"], recipe.output["quality"], alpha,
                       metadata)


def write_result(recipe: Recipe, key: RunKey, job: Job, result: Result, device: str,
                 threads: int | None = None, numerics: Numerics | None = None) -> None:
    """The image (carrying its :func:`provenance`) first, then its sidecar: a sidecar is only
    ever beside a complete image."""
    data = sidecar(recipe, key, job, result, device, threads, numerics)
    text = json.dumps(provenance(data), sort_keys=True, default=str)
    write_image(recipe, job, result.image, metadata={PROVENANCE_KEY: text})
    imageio.write_json(data, job.sidecar)


# -- reading ------------------------------------------------------------------------------


def load_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar's content, checked against :data:`~rvgen.batch.schema.SIDECAR`; raises
    ``OSError`` when it cannot be read and :class:`~rvgen.batch.schema.Invalid` (one line)
    when its content does not fit."""
    return schema.parse(path.read_bytes(), schema.SIDECAR)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A sidecar's content (:func:`load_sidecar`), or ``None`` when it is missing, cannot be
    read or does not fit the schema."""
    try:
        return load_sidecar(path)
    except (OSError, schema.Invalid):
        return None


def read_provenance(image: Path) -> dict[str, Any] | None:
    """How ``image`` was made: the provenance it carries, else that of the sidecar beside it
    (a result written before images carried it); ``None`` when neither says. Content that
    does not fit :data:`~rvgen.batch.schema.PROVENANCE` (anyone can edit an image's text) is
    :class:`~rvgen.batch.schema.Invalid`, with the field named."""
    text = imageio.read_metadata(image).get(PROVENANCE_KEY)
    if text is not None:
        try:
            return schema.parse(text, schema.PROVENANCE)
        except schema.Invalid as exc:
            raise schema.Invalid(f"its rvgen metadata: {exc}") from None
    path = image.with_name(image.name + ".json")
    try:
        data = load_sidecar(path)
    except OSError:
        return None
    except schema.Invalid as exc:
        raise schema.Invalid(f"its sidecar {path.name}: {exc}") from None
    return provenance(data)


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
    """True when ``job``'s output and sidecar exist and were made by this recipe from this input,
    with the same plugin versions."""
    try:
        if job.output.stat().st_size == 0:
            return False
    except OSError:
        return False
    data = read_sidecar(job.sidecar)
    if data is None:
        return False
    return (
        data["recipe"]["digest"] == key.recipe
        and dict(data.get("references", {})) == dict(key.references)
        and data["variation"] == job.variation
        and dict(data.get("masks", {})) == key.masks(job)
        and dict(data.get("plugins", {})) == dict(key.plugins)
        and _same_numerics(data, key)
        and _same_input(data["input"], job.source)
    )


def _same_numerics(data: Mapping[str, Any], key: RunKey) -> bool:
    """Whether a CPU result was made in the precision and layout its recipe resolves to on a
    CPU now (``auto``: bf16 where the CPU has native bf16, channels-last), and on the torch
    threads this run's CPU workers use (``key.threads``, when known): they change its pixels. A CPU result whose sidecar does not say was made as rvgen made them before it did:
    float32, contiguous. Results of other devices are not compared (``auto`` resolves there
    as it always did)."""
    if str(data.get("device") or "cpu").split(":")[0] != "cpu":
        return True
    if key.threads is not None and data.get("threads") not in (None, key.threads):
        return False  # another split of the reductions: other pixels
    now = resolve_numerics(key.precision, "cpu", key.layout)
    return (data.get("precision", LEGACY_CPU.precision), data.get("layout", LEGACY_CPU.layout)) == \
        (now.precision, now.layout)


def split_finished(jobs: Iterable[Job], key: RunKey) -> tuple[list[Job], list[Job]]:
    """(jobs to do, jobs already finished)."""
    todo, finished = [], []
    for job in jobs:
        (finished if is_finished(job, key) else todo).append(job)
    return todo, finished
