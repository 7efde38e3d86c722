"""Jobs: which inputs become which outputs.

Inputs are a folder (searched recursively), a single image file, or ``skimage:NAME[,NAME]``
sample images. Each input gives one output per variation, at the same relative path under
the output folder, so ``photos/2024/a.jpg`` becomes ``out/2024/a.png``. Two inputs that
differ only in extension keep it in the name (``a.jpg.png``, ``a.png.png``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rvgen.errors import UsageError
from rvgen.imageio import SAMPLE_PREFIX, is_image_file, is_sample

DEFAULT_SAMPLES = "skimage:astronaut,chelsea,coffee"


@dataclass(frozen=True)
class Job:
    source: str  # a file path, or skimage:NAME
    rel: str  # the input's name relative to --input, shown to users
    output: Path
    variation: int = 0

    @property
    def sidecar(self) -> Path:
        return self.output.with_name(self.output.name + ".json")

    def step(self, iteration: int, iterations: int) -> Path:
        """Where ``output.save_every`` writes the image at ``iteration``: ``STEM.iterNNN.FORMAT``
        beside the output, zero-padded to the width of ``iterations``."""
        return self.output.with_name(f"{self.output.stem}.iter{iteration:0{len(str(iterations))}d}{self.output.suffix}")


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    ignored: list[str]  # files in the input folder that are not images


def find_inputs(spec: str, exclude: Path | None = None) -> tuple[list[tuple[str, PurePosixPath]], list[str]]:
    """(source, relative path) of each input image, sorted, and the non-image files seen.

    Files under ``exclude`` (the output folder, when it lies inside the input folder) are
    not inputs.
    """
    if is_sample(spec):
        names = [n.strip() for n in spec[len(SAMPLE_PREFIX):].split(",") if n.strip()]
        from rvgen.imageio import check_sample

        for name in names:
            check_sample(SAMPLE_PREFIX + name, "--input")
        return [(SAMPLE_PREFIX + n, PurePosixPath(f"{n}.png")) for n in names], []
    root = Path(spec).expanduser()
    if root.is_file():
        return [(str(root), PurePosixPath(root.name))], []
    if not root.is_dir():
        raise UsageError(f"--input: no such file or folder: {spec}")
    images, ignored = [], []
    excluded = exclude.resolve() if exclude is not None else None
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files and folders (.DS_Store, .git)
        if is_image_file(path):
            images.append((str(path), rel))
        else:
            ignored.append(str(rel))
    return images, ignored


def plan_jobs(input_spec: str, output_dir: Path, variations: int = 1, fmt: str = "png") -> Plan:
    inputs, ignored = find_inputs(input_spec, exclude=output_dir)
    stems = Counter(rel.with_suffix("") for _, rel in inputs)
    jobs = []
    for source, rel in inputs:
        base = rel.with_suffix("") if stems[rel.with_suffix("")] == 1 else rel
        for v in range(variations):
            suffix = f".v{v}" if variations > 1 else ""
            out = output_dir / Path(*base.parts[:-1]) / f"{base.name}{suffix}.{fmt}"
            jobs.append(Job(source=source, rel=str(rel), output=out, variation=v))
    return Plan(jobs=jobs, ignored=ignored)


def parse_shard(spec: str) -> tuple[int, int]:
    """``K/N`` -> (K, N) with 1 <= K <= N."""
    try:
        k, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard {spec}: expected K/N, e.g. 3/8") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {spec}: K must be between 1 and N")
    return k, n


def shard_of(job: Job, count: int) -> int:
    """Which of ``count`` shards (1-based) a job belongs to: a hash of its output's name under
    the output folder, so it does not depend on which other files are in the folder, the
    machine, or the order jobs were listed in."""
    name = f"{job.rel}#{job.variation}".encode()
    return int.from_bytes(hashlib.sha1(name).digest()[:8], "big") % count + 1


def select_shard(jobs: list[Job], k: int, n: int) -> list[Job]:
    """The jobs of shard ``k`` of ``n``; the ``n`` shards together hold every job exactly once."""
    return [job for job in jobs if shard_of(job, n) == k]
