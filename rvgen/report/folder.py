"""What an output folder holds, read back for its page: the results (from their sidecars),
the recipes that made them, the failures and the images not yet made (from the folder's
record, :mod:`rvgen.report.record`), and the figures that sum them up."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvgen.batch.schema import Invalid
from rvgen.batch.sidecar import load_sidecar
from rvgen.imageio import is_image_file
from rvgen.report.record import FolderRecord, output_name
from rvgen.video.io import is_video_file


@dataclass(frozen=True)
class Made:
    """One result and its sidecar."""

    name: str  # its path under the folder
    path: Path
    data: dict[str, Any]

    @property
    def input_name(self) -> str:
        return str(self.data["input"].get("name", "?"))

    @property
    def input_source(self) -> str:
        return str(self.data["input"].get("source", ""))

    @property
    def variation(self) -> int:
        return int(self.data.get("variation", 0) or 0)

    @property
    def digest(self) -> str:
        return str(self.data["recipe"].get("digest", "?"))

    @property
    def device(self) -> str:
        return str(self.data.get("device", "?"))

    @property
    def seconds(self) -> float:
        return float(self.data.get("seconds", 0.0) or 0.0)

    @property
    def iterations(self) -> int:
        return int(self.data.get("iterations", 0) or 0)

    @property
    def history(self) -> list[tuple[int, float]]:
        points = []
        for item in self.data.get("history") or []:
            try:
                points.append((int(item[0]), float(item[1])))
            except (TypeError, ValueError, IndexError, OverflowError):  # an infinite iteration
                continue
        return points

    @property
    def clip(self) -> dict[str, Any] | None:
        """A clip's figures (frames, shots, flicker), or None for an image."""
        clip = self.data.get("clip")
        return clip if isinstance(clip, dict) else None

    @property
    def mask_files(self) -> dict[str, str]:
        """The mask files the input was styled by, by name (``mask``, ``labels``, ``region1``...)."""
        return {str(k): str(v) for k, v in (self.data.get("mask_files") or {}).items()}

    @property
    def loss(self) -> float | None:
        loss = self.data.get("loss")
        value = loss.get("final") if isinstance(loss, dict) else None
        return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Input:
    """An input and its results, the variations in order."""

    name: str
    source: str
    results: list[Made] = field(default_factory=list)


@dataclass
class RecipeGroup:
    """The results one recipe (one digest) made."""

    digest: str
    source: str
    resolved: dict[str, Any]
    references: dict[str, str]  # reference name -> its file, as the sidecars recorded
    inputs: list[Input] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(i.results) for i in self.inputs)


@dataclass(frozen=True)
class Failure:
    name: str  # the output that was not made
    input: str
    variation: int
    reason: str
    time: str


@dataclass(frozen=True)
class Pending:
    name: str
    input: str
    variation: int


@dataclass(frozen=True)
class DeviceFigures:
    device: str
    images: int
    per_hour: float | None  # images per hour of the runs the device took part in


@dataclass
class Folder:
    path: Path
    groups: list[RecipeGroup]
    failures: list[Failure]
    pending: list[Pending]
    runs: list[dict[str, Any]]
    devices: list[DeviceFigures]
    skipped: list[str] = field(default_factory=list)  # what of the folder's files was not read, and why

    @property
    def results(self) -> list[Made]:
        return [m for g in self.groups for i in g.inputs for m in i.results]

    @property
    def seconds(self) -> float:
        """The time the runs took (their wall time), or without a record, the images' own."""
        if self.runs:
            return sum(float(r.get("seconds", 0.0) or 0.0) for r in self.runs)
        return sum(m.seconds for m in self.results)


def _sidecars(folder: Path, skipped: list[str]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(image, sidecar) of each result under ``folder``, hidden folders left out, sorted; a
    sidecar that cannot be read or does not fit the schema is left out, said in ``skipped``."""
    for path in sorted(folder.rglob("*.json")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        image = path.with_name(path.name[: -len(".json")])
        if not (is_image_file(image) or is_video_file(image)) or not image.is_file():
            continue
        try:
            data = load_sidecar(path)
        except (OSError, Invalid) as exc:
            skipped.append(f"{rel.as_posix()}: {getattr(exc, 'strerror', None) or exc}; left out")
            continue
        yield image, data


def read_folder(folder: Path) -> Folder:
    """Everything the page of ``folder`` shows."""
    record = FolderRecord.load(folder)
    skipped: list[str] = []
    groups: dict[str, RecipeGroup] = {}
    inputs: dict[tuple[str, str], Input] = {}
    made_digests: dict[str, str] = {}  # output name -> the digest of its sidecar
    for image, data in _sidecars(folder, skipped):
        made = Made(output_name(folder, image), image, data)
        made_digests[made.name] = made.digest
        group = groups.get(made.digest)
        if group is None:
            group = groups[made.digest] = RecipeGroup(made.digest, data["recipe"]["source"],
                                                      data["recipe"]["resolved"], dict(data.get("reference_files", {})))
        key = (made.digest, made.input_source or made.input_name)
        if key not in inputs:
            inputs[key] = Input(made.input_name, made.input_source)
            group.inputs.append(inputs[key])
        inputs[key].results.append(made)
    for group in groups.values():
        group.inputs.sort(key=lambda i: (i.name, i.source))
        for item in group.inputs:
            item.results.sort(key=lambda m: (m.variation, m.name))
    # a failure or a pending image the folder has since made (with that recipe) is neither
    failures = [Failure(name, f["input"], f["variation"], f["reason"], f["time"])
                for name, f in sorted(record.failures.items()) if made_digests.get(name) != f["digest"]]
    pending = [Pending(name, p["input"], p["variation"])
               for name, p in sorted(record.pending.items())
               if made_digests.get(name) != p["digest"] and name not in record.failures]
    ordered = sorted(groups.values(), key=lambda g: (g.source, g.digest))
    return Folder(folder, ordered, failures, pending, list(record.runs), device_figures(ordered, record.runs),
                  record.problems + skipped)


def device_figures(groups: list[RecipeGroup], runs: list[dict[str, Any]]) -> list[DeviceFigures]:
    """Per device, the images in the folder it made and its rate: the images it made in the
    recorded runs per hour those runs took (runs that made or failed nothing left out), or
    without a record, per hour of the images' own time (a batch's time counts for each of
    its images, so on a GPU that rate is low)."""
    images: dict[str, int] = defaultdict(int)
    own_seconds: dict[str, float] = defaultdict(float)
    for group in groups:
        for item in group.inputs:
            for m in item.results:
                images[m.device] += 1
                own_seconds[m.device] += m.seconds
    made: dict[str, int] = defaultdict(int)
    hours: dict[str, float] = defaultdict(float)
    for run in runs:
        if not (run.get("done") or run.get("failed")):
            continue  # a rerun of a finished folder: no device worked
        devices = run.get("devices") if isinstance(run.get("devices"), dict) else {}
        for device, count in devices.items():
            made[device] += int(count or 0)
            hours[device] += float(run.get("seconds", 0.0) or 0.0) / 3600
    figures = []
    for device in sorted(set(images) | set(made)):
        if hours.get(device):
            rate = made[device] / hours[device]
        elif own_seconds.get(device):
            rate = images[device] / (own_seconds[device] / 3600)
        else:
            rate = None
        figures.append(DeviceFigures(device, images.get(device, 0), rate))
    return figures
