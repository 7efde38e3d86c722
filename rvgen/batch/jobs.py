"""Jobs: which inputs become which outputs.

Inputs are a folder (searched recursively), a single image file, or ``skimage:NAME[,NAME]``
sample images. Each input gives one output per variation, at the same relative path under
the output folder, so ``photos/2024/a.jpg`` becomes ``out/2024/a.png``. Inputs whose outputs
would share a name keep their extension in it (``a.jpg.png``, ``a.png.png``); names are
compared ignoring case, so a folder makes the same outputs on every file system.

A video file (:func:`rvgen.video.io.is_video_file`; an animated GIF too when the recipe has a
``[video]`` table) is one job, a *clip*, whose result is a video: ``clips/a.mov`` becomes
``out/clips/a.mp4``, the suffix the container of ``video.codec`` (``a.mov`` and ``a.mp4`` in
one folder: ``a.mov.mp4`` and ``a.mp4.mp4``).

The plan never loses data: no output (nor, with ``output.save_every``, a step image) is an
input, no two jobs share an output, every output lies inside the output folder once links
are followed, and every name fits the output's file system; a plan that would break one
of these is refused (:class:`~rvgen.errors.UsageError`) before any work. Files of the input
folder that give no job are listed with the reason (:attr:`Plan.ignored`); hidden ones are not.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from rvgen.errors import UsageError
from rvgen.imageio import SAMPLE_PREFIX, is_image_file, is_sample
from rvgen.video.io import is_video_file

DEFAULT_SAMPLES = "skimage:astronaut,chelsea,coffee"
STEP_NAME = re.compile(r"(.+)\.iter\d+(\.[^./]+)", re.DOTALL)  # what Job.step makes: (stem, suffix)


@dataclass(frozen=True)
class Part:
    """One of ``count`` shares of a clip's shots (``index`` from 0), in the run ``run``: the
    parts of one clip go to several workers, and the last to end writes the video
    (:mod:`rvgen.batch.clip`)."""

    index: int
    count: int
    run: str  # the run's token: parts of one run share the clip's kept frames


@dataclass(frozen=True)
class Job:
    source: str  # a file path, or skimage:NAME
    rel: str  # the input's name relative to --input, shown to users
    output: Path
    variation: int = 0
    clip: bool = False  # a video: frames in, a video out (rvgen.batch.clip)
    part: Part | None = None  # a clip's share of shots, when several workers make it

    @property
    def whole(self) -> Job:
        """The job itself, not a part of it: what the plan, the summary and the reporters count."""
        return self if self.part is None else replace(self, part=None)

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
    ignored: list[str]  # what in the input folder gives no job: "NAME (why)", e.g. "notes.txt (not an image format)"


def _not_a_file(path: Path) -> str:
    """Why ``path``, listed in a folder but not a file once links are followed, is no input."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a link that loops"
        return "a broken link" if path.is_symlink() else f"cannot be read: {exc.strerror or exc}"
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def find_inputs(spec: str, exclude: Path | None = None) -> tuple[list[tuple[str, PurePosixPath]], list[str]]:
    """(source, relative path) of each input image, sorted, and what else the folder holds:
    ``"NAME (why)"`` for each file that is not an input (not an image format, a broken link)
    and each link to a folder (never followed). Hidden files and folders are left out silently.

    ``exclude`` is the output folder: when it lies inside the input folder its files are
    earlier results, not inputs; when it is the input folder, that is an error.
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
    excluded = _resolve(exclude) if exclude is not None else None
    if excluded is not None and root.resolve() == excluded:
        raise UsageError(f"--input {spec} is also the output folder; results would land among the inputs: "
                         "choose another --output")
    base = str(root)
    images: list[tuple[str, str]] = []  # (source, the name under the input folder: "2024/a.jpg")
    ignored: list[tuple[str, str]] = []  # (name, why)
    folders = [(base, "")]
    while folders:  # a walk that never follows links to folders (os.scandir: one stat per link, not per file)
        folder, prefix = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            ignored.append((prefix.rstrip("/") or ".", f"a folder that cannot be read: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden files and folders (.DS_Store, .git)
            rel = prefix + entry.name
            if _is(entry.is_dir):
                if entry.is_symlink():
                    ignored.append((rel, "a link to a folder, not followed"))
                elif excluded is None or Path(entry.path).resolve() != excluded:
                    folders.append((entry.path, rel + "/"))
            elif not _is(entry.is_file):
                ignored.append((rel, _not_a_file(Path(entry.path))))
            elif not (is_image_file(Path(entry.name)) or is_video_file(Path(entry.name))):
                ignored.append((rel, "not an image format"))
            elif excluded is not None and entry.is_symlink() and Path(entry.path).resolve().is_relative_to(excluded):
                ignored.append((rel, "a link into the output folder"))
            else:
                images.append((rel if base == "." else entry.path, rel))
    images.sort(key=lambda item: item[1].split("/"))
    ignored.sort(key=lambda item: item[0].split("/"))
    return [(source, PurePosixPath(rel)) for source, rel in images], [f"{rel} ({why})" for rel, why in ignored]


def _is(test) -> bool:
    """A :class:`os.DirEntry` test (``is_dir``, ``is_file``; links followed), False where the
    link is broken or loops."""
    try:
        return test()
    except OSError:
        return False


def _name(rel: str, keep_extension: bool, variation: int, variations: int, fmt: str) -> str:
    base = rel if keep_extension else posixpath.splitext(rel)[0]
    suffix = f".v{variation}" if variations > 1 else ""
    return f"{base}{suffix}.{fmt}"


def _output_names(rels: list[str], variations: int, fmts: list[str]) -> list[list[str]]:
    """Each input's output names (one per variation, ``2024/a.png``) under the output folder:
    the name without the input's extension, or with it for inputs whose outputs would otherwise
    share a name (compared ignoring case) or whose output is named like another output's step
    image (``a.iter5.png`` beside ``a.png``), repeated until no more clash. Then only inputs
    whose names differ only in case can still clash: that is refused."""
    keep: set[int] = set()
    while True:
        names = [[_name(rel, i in keep, v, variations, fmts[i]) for v in range(variations)]
                 for i, rel in enumerate(rels)]
        owners: dict[str, dict[int, str]] = defaultdict(dict)
        for i, outputs in enumerate(names):
            for name in outputs:
                owners[name.casefold()].setdefault(i, name)
                step = STEP_NAME.fullmatch(name)
                if step:  # named like a step image of the output STEM.SUFFIX (output.save_every)
                    owners[(step[1] + step[2]).casefold()].setdefault(i, name)
        clashing = {i for owner in owners.values() if len(owner) > 1 for i in owner}
        if clashing <= keep:
            break
        keep |= clashing
    clashes = sorted(sorted(owner.items()) for owner in owners.values() if len(owner) > 1)
    if clashes:
        more = f" (and {len(clashes) - 1} more such clash(es))" if len(clashes) > 1 else ""
        raise UsageError(f"inputs {' and '.join(rels[i] for i, _ in clashes[0])} would make outputs whose "
                         f"names differ only in case ({', '.join(name for _, name in clashes[0])}), one file "
                         f"on macOS and Windows{more}: rename one of them")
    return names


def _resolve(path: Path) -> Path:
    """``path`` with every link followed (parts that do not exist yet kept as they are); a
    link that loops is an error (Python 3.13 leaves it in the result, earlier ones raise)."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):
        real = None
    if real is None or any(part.is_symlink() for part in (real, *real.parents)):
        raise UsageError(f"{path}: a link that loops; remove it")
    return real


def _outside(output_dir: Path, folder: Path) -> str:
    """The link in ``folder`` (under ``output_dir``) that leads out of ``output_dir``, described."""
    for part in [folder, *folder.parents]:
        if part == output_dir:
            break
        if part.is_symlink():
            return f"{part} is a link to {os.readlink(part)}"
    return f"{folder} lies at {_resolve(folder)}"


STEP_DIGITS = 7  # the most digits a step image's iteration has (MAX_ITERATIONS a level, 16 levels)


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, the file system of ``folder`` (or the nearest part of
    it that exists) takes; 255 where it does not say."""
    for part in [folder, *folder.parents]:
        if part.exists():
            try:
                return int(os.pathconf(part, "PC_NAME_MAX"))
            except (OSError, ValueError, AttributeError):
                return 255
    return 255


def _check_name_lengths(jobs: list[Job], output_dir: Path, steps: bool) -> None:
    """Refuse a plan with a job whose files (result, sidecar, step images) would have names
    longer than the output's file system takes: its result would be written and its sidecar
    not, on every run."""
    limit = _name_max(output_dir)
    for job in jobs:
        names = {"result": job.output.name, "sidecar": job.sidecar.name}
        if steps:
            names["step images"] = f"{job.output.stem}.iter{'0' * STEP_DIGITS}{job.output.suffix}"
        for what, name in names.items():
            size = len(os.fsencode(name))
            if size > limit:
                raise UsageError(f"input {job.rel}: the name of its {what} would be {size} bytes, more than the "
                                 f"{limit} the file system of --output {output_dir} takes: rename the input")


def _check_outputs(jobs: list[Job], output_dir: Path, steps: bool = False) -> None:
    """Refuse a plan that would write outside ``output_dir`` through a link, write one file
    twice (through two folders that a link makes one), or overwrite an input, with its
    result, its sidecar or (``steps``: ``output.save_every``) its step images. Paths are
    compared with links followed and ignoring case."""
    root = _resolve(output_dir)
    real: dict[Path, str] = {}  # a folder -> its path with links followed

    def real_folder(folder: Path) -> str:
        if folder not in real:
            real[folder] = str(_resolve(folder))
        return real[folder]

    written: dict[str, tuple[Job, Path]] = {}
    for job in jobs:
        folder = job.output.parent
        if folder not in real and not _resolve(folder).is_relative_to(root):
            raise UsageError(f"{_outside(output_dir, folder)}, outside --output {output_dir}; rvgen writes "
                             "only inside --output: remove the link or choose another --output")
        for path in (job.output, job.sidecar):
            key = os.path.join(real_folder(folder), os.path.basename(path)).casefold()
            if key in written:
                raise UsageError(f"inputs {written[key][0].rel} and {job.rel} would both write {path} "
                                 "(a link makes their folders one): remove the link or rename one of them")
            written[key] = (job, path)
    for source in dict.fromkeys(job.source for job in jobs if not is_sample(job.source)):
        path = Path(source)
        target = str(_resolve(path)) if path.is_symlink() else os.path.join(real_folder(path.parent), path.name)
        clash = written.get(target.casefold())
        if clash is not None:
            raise UsageError(f"the result of {clash[0].rel} ({clash[1]}) would overwrite the input {source}; "
                             "rvgen never overwrites an input: choose an --output apart from the inputs")
        step = STEP_NAME.fullmatch(os.path.basename(target)) if steps else None
        owner = written.get(os.path.join(os.path.dirname(target), step[1] + step[2]).casefold()) if step else None
        if owner is not None and owner[1] == owner[0].output:
            raise UsageError(f"the step images of {owner[0].rel} (output.save_every, {owner[1].stem}.iterN"
                             f"{owner[1].suffix}) could overwrite the input {source}; rvgen never overwrites an "
                             "input: choose an --output apart from the inputs")


def is_clip(source: str, gifs: bool = False) -> bool:
    """Whether an input is a clip: a video file, or (``gifs``) a GIF of more than one frame."""
    if is_sample(source):
        return False
    if is_video_file(Path(source)):
        return True
    if not gifs or Path(source).suffix.lower() != ".gif":
        return False
    from PIL import Image

    try:
        with Image.open(source) as img:
            return getattr(img, "n_frames", 1) > 1
    except (OSError, ValueError):
        return False  # the image job says what is wrong with it


def plan_jobs(input_spec: str, output_dir: Path, variations: int = 1, fmt: str = "png", steps: bool = False,
              clip_format: str = "mp4", gifs: bool = False) -> Plan:
    """The jobs for ``input_spec`` into ``output_dir``; raises :class:`~rvgen.errors.UsageError`
    for a plan that would lose data or could not write a job's files (see the module's
    docstring). ``steps``: the jobs also write step images (``output.save_every``).
    ``clip_format``: the suffix of clips' results; ``gifs``: animated GIFs are clips."""
    inputs, ignored = find_inputs(input_spec, exclude=output_dir)
    clips = [is_clip(source, gifs) for source, _ in inputs]
    names = _output_names([str(rel) for _, rel in inputs], variations,
                          [clip_format if clip else fmt for clip in clips])
    jobs = [
        Job(source=source, rel=str(rel), output=output_dir / name, variation=v, clip=clip)
        for (source, rel), outputs, clip in zip(inputs, names, clips)
        for v, name in enumerate(outputs)
    ]
    _check_outputs(jobs, output_dir, steps)
    _check_name_lengths(jobs, output_dir, steps)
    return Plan(jobs=jobs, ignored=ignored)


def split_clips(jobs: Sequence[Job], workers: int, run: str) -> list[Job]:
    """The jobs as workers take them: with fewer clips than ``workers``, each clip as
    ``workers // clips`` parts in a row, so that workers with nothing else to do paint its
    shots (a clip of one shot leaves the other parts nothing to do); else each clip whole,
    one to a worker. Every clip gets a :class:`Part`, with the run's token ``run``."""
    clips = sum(job.clip for job in jobs)
    count = max(1, workers // clips) if clips else 1
    return [replace(job, part=Part(k, count, run)) if job.clip else job
            for job in jobs for k in range(count if job.clip else 1)]


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
