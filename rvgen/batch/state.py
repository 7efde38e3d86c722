"""What a finished job looks like on disk, so a rerun does only what is missing.

A job is finished when its output exists and the JSON sidecar beside it records the same
recipe digest, the same input (sha256), the same reference images (the style image's sha256)
and the same variation. A changed recipe, input or style image makes it unfinished again.
Hashing every input on every run would read the whole folder, so an input whose size and
modification time match the sidecar's is taken to have the recorded hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvgen import imageio
from rvgen.batch.jobs import Job


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
