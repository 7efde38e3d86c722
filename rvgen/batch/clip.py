"""Clips: a video in, each frame painted with the recipe, a video out, without flicker.

A clip job (:attr:`~rvgen.batch.jobs.Job.clip`) is made frame by frame (Ruder, Dosovitskiy &
Brox 2016, "Artistic style transfer for videos"). The input's frames are decoded at the
output size; scene cuts split them into shots. The first frame of a shot is painted as an
image, with the recipe's own schedule. Every later frame starts from the previous result
warped into it by the input's optical flow; a pixel the flow cannot follow (a disocclusion,
what enters at an edge) starts from this frame's own picture plus the previous result's
painting of its picture (result minus input), warped. (From the photo alone, those pixels
stayed patches of photo that a few iterations do not paint: the test clip's Gram distance to
the painting rose 3.5-fold. From the previous result warped alone, a moving object dragged a
trail of itself and the edges smeared.) The frame is optimised at the output size for
``video.iterations`` with one term more, ``temporal``:
``video.temporal_weight`` times the mean of ``c * (x - warped)**2``, ``c`` the reliability
of the flow, the warped result a fixed target (:class:`rvgen.losses.builtin.TemporalLoss`).
With ``video.long_term = [1, 2, 4]`` each pixel is held to the nearest of those earlier
frames that sees it reliably. ``video.temporal_weight = 0`` paints every frame on its own,
as an image (frame by frame: the flicker the temporal term takes away).

``video.passes > 1`` is Ruder et al.'s multi-pass algorithm: the shot is swept again,
backward on even passes and forward on odd ones, ``video.iterations`` a frame a pass. A
frame of a later pass starts from its own result of the pass before blended with its
neighbour in the sweep's direction (already made in this pass), warped, where the flow is
reliable (``(x + c * warped) / (1 + c)``), and its temporal term holds it to that neighbour
(and the ``long_term`` ones). The first pass carries the style forward only; the later ones
let each frame settle between both neighbours, so the start of a shot agrees with what comes
after it.

Shots are independent, so those of one clip can be made by several workers: the run splits a
clip into *parts* (:attr:`~rvgen.batch.jobs.Job.part`) when it has fewer clips than workers.
Every part decodes the clip and finds the same shots; :func:`shares` deals the shots out,
longest first to the part with the fewest frames. The part that ends last, with every frame
made, writes the video; the others end with nothing to write (``None``, a
:class:`~rvgen.batch.events.PartDone`).

Finished frames are kept as PNG in a hidden folder beside the result
(``.rvgen-NAME.frames/``; a later pass's frames of all but the last pass in ``pass1/``,
``pass2/``, ...; the folder's state in ``state.json``: what it was made with, which run's
parts are using it and which of them have ended). The parts of a run take turns on it
under a lock (:class:`~rvgen.batch.lock.OutputLock`, on the folder). A killed run resumes
at the first unfinished frame of each shot and pass, and a frame is always continued from
the saved (8-bit) results, so a resumed clip is the clip an uninterrupted run makes. The
video (the input's timestamps and audio, :func:`rvgen.video.io.write_clip`) is written only
once every frame exists, then its sidecar ``NAME.mp4.json`` (with the flicker measure: the
mean temporal warping error of the result next to the input's), then the frames are removed.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rvgen import imageio
from rvgen.batch.events import Event, Step
from rvgen.batch.jobs import Job, Part
from rvgen.batch.lock import LOCK_NAME, OutputLock
from rvgen.batch.sidecar import RunKey, input_identity, sidecar
from rvgen.batch.signals import StepGate
from rvgen.engine import Progress, Result
from rvgen.errors import ImageError, RvgenError
from rvgen.pipeline import Pipeline
from rvgen.recipe import frame_range
from rvgen.video.flow import optical_flow, reliability, scene_cuts, warp, warping_error
from rvgen.video.io import ClipInfo, Frames, probe, read_frames, write_clip

STATE_FILE = "state.json"
FORMAT = 2  # of the work folder: a folder of another format is started afresh


def work_folder(job: Job) -> Path:
    """Where the frames of ``job`` are kept until its video is written: hidden, beside it."""
    return job.output.with_name(f"{imageio.TEMPORARY_PREFIX}{job.output.name}.frames")


def frames_folder(job: Job) -> Path:
    """Where ``video.keep_frames`` writes the result's frames: ``NAME.frames/`` beside the video."""
    return job.output.with_name(f"{job.output.stem}.frames")


def frame_name(index: int) -> str:
    """The file of frame ``index`` (from 0): ``000001.png`` for the first, as FFmpeg counts."""
    return f"{index + 1:06d}.png"


def clear_work(job: Job) -> None:
    """Forget the frames a run kept of ``job`` (``--force``: redo it from the first frame)."""
    shutil.rmtree(work_folder(job), ignore_errors=True)


def quantized(image: torch.Tensor) -> torch.Tensor:
    """``image`` as its 8-bit PNG holds it: what the next frame continues from, run or resumed."""
    return image.detach().float().cpu().clamp(0, 1).mul(255).round().div(255)


def shares(shots: list[tuple[int, int]], count: int) -> list[list[tuple[int, int]]]:
    """The shots (``(start, stop)`` frame ranges) each of ``count`` parts makes: the longest
    first, each to the part with the fewest frames so far (the lower part on a tie); each
    part's shots in the clip's order. Every part computes the same shares from the same shots."""
    load = [0] * count
    dealt: list[list[tuple[int, int]]] = [[] for _ in range(count)]
    for shot in sorted(shots, key=lambda s: (s[0] - s[1], s[0])):
        part = min(range(count), key=lambda k: (load[k], k))
        dealt[part].append(shot)
        load[part] += shot[1] - shot[0]
    return [sorted(part) for part in dealt]


@dataclass
class Flicker:
    """The temporal warping error of each frame after the first of its shot (the mean squared
    difference to the previous frame warped by the input's flow, over the pixels the flow
    follows reliably), of the result and of the input."""

    frames: list[tuple[int, float, float]] = field(default_factory=list)  # (index, result, input)

    def add(self, index: int, result: float, source: float) -> None:
        if math.isfinite(result) and math.isfinite(source):  # NaN: no pixel the flow follows
            self.frames.append((index, result, source))

    def summary(self) -> dict[str, Any]:
        count = len(self.frames)
        result = sum(r for _, r, _ in self.frames) / count if count else 0.0
        source = sum(s for _, _, s in self.frames) / count if count else 0.0
        return {"result": result, "input": source, "ratio": result / source if source > 0 else None,
                "frames": [[i, round(r, 8), round(s, 8)] for i, r, s in self.frames]}


class Motion:
    """The input's optical flow between two of its frames, each way computed once while the
    sweep still needs it (the most recent ``keep`` flows are held)."""

    def __init__(self, frames: Sequence[torch.Tensor], keep: int = 32):
        self.frames, self.keep = frames, keep
        self._flows: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()

    def flow(self, a: int, b: int) -> torch.Tensor:
        """The flow from frame ``a`` to frame ``b`` (:func:`rvgen.video.flow.optical_flow`)."""
        if (a, b) not in self._flows:
            self._flows[(a, b)] = optical_flow(self.frames[a], self.frames[b])
            while len(self._flows) > self.keep:
                self._flows.popitem(last=False)
        return self._flows[(a, b)]

    def towards(self, t: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame ``n`` brought into frame ``t``: the flow from ``t`` to ``n`` and its
        reliability (Ruder et al.'s forward-backward check)."""
        there = self.flow(t, n)
        return there, reliability(there, self.flow(n, t))


class Work:
    """The hidden folder of a clip's frames, shared by the parts of one run, each of its
    changes made holding the folder's lock. ``state.json`` holds what the frames were made
    with (``key``), the run whose parts use it (``run``), which of them have ended
    (``ended``) and whether the video is written (``written``)."""

    def __init__(self, job: Job, key: dict[str, Any], part: Part):
        self.folder, self.key, self.part = work_folder(job), key, part

    def lock(self) -> OutputLock:
        return OutputLock(self.folder).acquire(wait=True)

    def state(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.folder / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        imageio.write_json(state, self.folder / STATE_FILE)

    def open(self) -> bool:
        """Join the folder (hold the lock): emptied when its frames were made with another
        recipe, input or variation, its leftovers from a killed run removed when this part
        is the run's first. False when another part of this run has already written the video."""
        state = self.state()
        if state is not None and state.get("key") == self.key and state.get("run") == self.part.run:
            if state.get("written"):  # nothing left to do: this part has ended
                self.end(False, lambda: None)
                return False
            return True
        if state is None or state.get("key") != self.key:
            for path in self.folder.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.name != LOCK_NAME:
                    path.unlink()
        else:
            for path in self.folder.rglob("*"):
                if imageio.is_temporary(path.name):
                    path.unlink(missing_ok=True)
        self.save({"key": self.key, "run": self.part.run, "ended": [], "written": False})
        return True

    def end(self, complete: bool, write: Callable[[], Result | None]) -> Result | None:
        """This part has made its shots (hold the lock): ``write`` the video if every frame
        exists (``complete``) and no other part has; the folder removed once it is written
        and every part has ended. The result if this part wrote it."""
        state = self.state() or {"key": self.key, "run": self.part.run, "ended": [], "written": False}
        result = None
        if complete and not state["written"]:
            result = write()
            state["written"] = True
        state["ended"] = sorted({*state["ended"], self.part.index})
        if state["written"] and len(state["ended"]) >= self.part.count:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            self.save(state)
        return result


@dataclass
class _Progress:
    """A part's progress through a clip: the frames it has to make over all passes, how many
    are done (made now or kept) and how many this run made, for the ETA."""

    frames: int  # of the clip
    passes: int
    share: int  # frame-passes of this part's shots
    done: int = 0
    made: int = 0
    began: float = field(default_factory=time.monotonic)

    def eta(self) -> float | None:
        """Seconds left for this part, from the frames it made so far (None before the first)."""
        if self.made == 0:
            return None
        return (time.monotonic() - self.began) / self.made * (self.share - self.done)


class ClipMaker:
    """Makes clip jobs on one worker: ``pipeline`` is built for clips (with the temporal term)."""

    def __init__(self, pipeline: Pipeline, key: RunKey, name: str, device: str, threads: int | None,
                 emit: Callable[[Event], None], should_stop: Callable[[], bool] = lambda: False):
        self.pipeline, self.key, self.name, self.device, self.threads = pipeline, key, name, device, threads
        self.recipe = pipeline.recipe
        self.video = self.recipe.video
        self.emit, self.should_stop = emit, should_stop
        self.made = 0  # frames (of every pass) this maker has made

    @property
    def passes(self) -> int:
        """Sweeps over each shot (``video.passes``; always one when frames are painted on their
        own, ``temporal_weight = 0``: the recipe refuses more)."""
        return self.video["passes"]

    # -- the job ----------------------------------------------------------------------------

    def make(self, job: Job) -> Result | None:
        """This part's shots of ``job`` (every shot for a job in one part), those frames left
        from an earlier run kept; then, if every frame exists, its video and sidecar. Returns
        the clip's :class:`Result` (its last frame as ``image``; the losses the mean over
        frames; iterations and seconds summed over frames and passes), or None when another
        part writes the video. A damaged clip raises a one-line
        :class:`~rvgen.errors.ImageError` before any frame is made."""
        part = job.part or Part(0, 1, uuid.uuid4().hex)
        try:
            inputs, times, info = self._decode(job)
        except ImageError:
            if part.index > 0:  # every part reads the same clip: the first says what is wrong
                return None
            raise
        work = Work(job, self._key(job), part)
        with work.lock():
            if not work.open():
                return None
        cuts = sorted(set(scene_cuts(inputs)) | {0})
        shots = list(zip(cuts, cuts[1:] + [len(inputs)]))
        mine = shares(shots, part.count)[part.index]
        motion = Motion(inputs)
        progress = _Progress(len(inputs), self.passes, self.passes * sum(stop - start for start, stop in mine))
        for start, stop in mine:
            self._shot(job, part, inputs, motion, start, stop, work.folder, progress)
        with work.lock():
            complete = all((work.folder / (frame_name(t) + ".json")).is_file() for t in range(len(inputs)))
            return work.end(complete, lambda: self._write(job, part, inputs, motion, times, info, shots, work.folder))

    def _key(self, job: Job) -> dict[str, Any]:
        """What a clip's kept frames were made with: a folder made with anything else is emptied."""
        numerics = self.pipeline.synth.numerics
        return {"format": FORMAT, "recipe": self.key.recipe, "references": dict(self.key.references),
                "variation": job.variation, "input": input_identity(job.source)["sha256"], "threads": self.threads,
                "numerics": [str(numerics.precision), str(numerics.layout)]}

    def _decode(self, job: Job) -> tuple[Frames, list[float], ClipInfo]:
        """The clip's frames at the output size (held as 8-bit levels), their times and what
        the container says."""
        source = Path(job.source)
        selection, fps = frame_range(self.video["frames"]), self.video["fps"]
        info = probe(source, selection, fps)
        inputs, times = Frames(), []
        for _, moment, frame in read_frames(source, self.recipe.output["size"], selection, fps):
            inputs.append(self.pipeline.check_size(frame))
            times.append(moment)
        if not inputs:
            raise ImageError(f"{source}: no frames to make")
        canvas = tuple(self.pipeline.synth.task.canvas(inputs[0]))
        if canvas != tuple(inputs[0].shape[-2:]):
            raise RvgenError(f"{source}: the task makes {canvas[1]}x{canvas[0]} px results from "
                             f"{inputs[0].shape[-1]}x{inputs[0].shape[-2]} px frames; a clip's frames are followed by "
                             "their motion, so its results need the frames' size (leave task.size unset)")
        return inputs, times, info

    def _write(self, job: Job, part: Part, inputs: Sequence[torch.Tensor], motion: Motion, times: list[float],
               info: ClipInfo, shots: list[tuple[int, int]], work: Path) -> Result:
        """The video from every frame, then its sidecar (with the flicker); the frames removed."""
        paths = [work / frame_name(t) for t in range(len(inputs))]
        source = Path(job.source)
        write_clip(paths, times, job.output, audio_from=source if info.has_audio else None,
                   codec=self.video["codec"], crf=self.video["crf"])
        if self.video["keep_frames"]:
            folder = frames_folder(job)
            for path in paths:
                imageio.save_image(imageio.load_image(path), folder / path.name, "png")
        frames = [json.loads(path.with_name(path.name + ".json").read_text()) for path in paths]
        sweeps = [json.loads(p.read_text()) for p in work.glob("pass*/*.png.json")]
        count = len(frames)
        parts: dict[str, float] = {}
        for made in frames:
            for name, value in made["parts"].items():
                parts[name] = parts.get(name, 0.0) + float(value) / count
        result = Result(image=imageio.load_image(paths[-1]), loss=sum(float(m["loss"]) for m in frames) / count,
                        initial_loss=sum(float(m["initial"]) for m in frames) / count, parts=parts,
                        iterations=sum(int(m["iterations"]) for m in frames + sweeps),
                        seconds=sum(float(m["seconds"]) for m in frames + sweeps))
        workers: dict[str, int] = {}
        for made in frames:
            if made.get("run") == part.run:
                workers[made["worker"]] = workers.get(made["worker"], 0) + 1
        data = sidecar(self.recipe, self.key, job, result, self.device, self.threads, self.pipeline.synth.numerics)
        data["clip"] = {"frames": len(inputs), "shots": [start for start, _ in shots], "passes": self.passes,
                        "fps": float(info.fps), "duration": times[-1] - times[0] + (1 / float(info.fps)),
                        "made": sum(workers.values()), "workers": workers,
                        "flicker": self._flicker(inputs, motion, paths, shots).summary()}
        imageio.write_json(data, job.sidecar)
        return result

    @staticmethod
    def _flicker(inputs: Sequence[torch.Tensor], motion: Motion, paths: list[Path],
                 shots: list[tuple[int, int]]) -> Flicker:
        """The result's temporal warping error, and the input's, for each frame after the first
        of its shot (the flows the last frames were made with taken from ``motion``)."""
        flicker = Flicker()
        for start, stop in shots:
            previous = imageio.load_image(paths[start])
            for t in range(start + 1, stop):
                current = imageio.load_image(paths[t])
                flow, weight = motion.towards(t, t - 1)
                (result_error,) = warping_error([previous, current], [flow, flow], [weight, weight])
                (input_error,) = warping_error([inputs[t - 1], inputs[t]], [flow, flow], [weight, weight])
                flicker.add(t, result_error, input_error)
                previous = current
        return flicker

    # -- a shot -----------------------------------------------------------------------------

    def _shot(self, job: Job, part: Part, inputs: Sequence[torch.Tensor], motion: Motion, start: int, stop: int,
              work: Path, progress: _Progress) -> None:
        """Frames ``start`` to ``stop`` (one shot), every pass; those already in ``work`` kept."""
        offsets = sorted({1, *self.video["long_term"]})  # the previous frame always
        before: Path | None = None  # the folder of the pass before
        for sweep in range(1, self.passes + 1):
            step = 1 if sweep % 2 else -1  # odd passes forward, even ones backward
            folder = work if sweep == self.passes else work / f"pass{sweep}"
            order = range(start, stop) if step == 1 else range(stop - 1, start - 1, -1)
            results: dict[int, torch.Tensor] = {}  # this pass's results the next frames need, by frame

            def result(n: int) -> torch.Tensor:
                if n not in results:
                    results[n] = imageio.load_image(folder / frame_name(n))
                return results[n]

            for t in order:
                path = folder / frame_name(t)
                progress.done += 1
                if path.is_file() and path.with_name(path.name + ".json").is_file():
                    continue  # made by an earlier run
                near = [] if self.video["temporal_weight"] == 0 else [  # 0: every frame on its own
                    t - step * k for k in offsets if start <= t - step * k < stop]
                own = None if before is None else imageio.load_image(before / frame_name(t))
                outcome = self._frame(job, inputs, motion, t, near, result, own, (sweep, t), progress)
                imageio.save_image(outcome.image, path, "png")
                made = {"loss": outcome.loss, "initial": outcome.initial_loss, "parts": dict(outcome.parts),
                        "iterations": outcome.iterations, "seconds": outcome.seconds, "run": part.run,
                        "worker": self.name}
                imageio.write_json(made, path.with_name(path.name + ".json"))  # after the image: the frame is done
                progress.made += 1
                self.made += 1
                results[t] = quantized(outcome.image)
                for n in [n for n in results if abs(n - t) > max(offsets)]:
                    del results[n]
            before = folder

    def _frame(self, job: Job, inputs: Sequence[torch.Tensor], motion: Motion, index: int, near: list[int],
               result: Callable[[int], torch.Tensor], own: torch.Tensor | None, where: tuple[int, int],
               progress: _Progress) -> Result:
        """Frame ``index`` of one pass. ``near``: the frames of this pass it is held to, nearest
        first (none: the first frame of a shot, or frames painted on their own); ``result``
        gives their results; ``own``: this frame's result of the pass before (None in the first)."""
        synth = self.pipeline.synth
        content = inputs[index]
        report = self._reporter(job, where, progress)
        masks = self.pipeline.guides(job.rel, content)  # the clip's mask, or its rule on this frame
        options: dict[str, Any] = {"guides": None if masks is None else [masks]}
        if near:
            neighbours = [(result(n), *motion.towards(index, n)) for n in near]
            anchor = self.anchor(neighbours)
            nearest = near[0]
            flow, reliable = neighbours[0][1], neighbours[0][2]
            if own is None:
                # Where no earlier frame sees a pixel: this frame's own picture with the nearest earlier
                # frame's painting over its picture (result minus input), warped.
                weight = anchor[:, 3:]
                fill = content + warp(result(nearest) - inputs[nearest], flow)
                begin = (weight * anchor[:, :3] + (1 - weight) * fill).clamp(0, 1)
            else:  # a later pass: its own result blended with its neighbour's, warped, where the flow holds
                c = reliable.view(1, 1, *reliable.shape[-2:]).float()
                begin = ((own + c * warp(result(nearest), flow)) / (1 + c)).clamp(0, 1)
            options.update(starts=[begin], anchors=[anchor], iterations=self.video["iterations"])
        elif own is not None:  # the first frame of a later pass's sweep: from its result of the pass before
            options.update(starts=[own], iterations=self.video["iterations"])
        else:
            options.update(iterations=self.video["first_frame_iterations"])
        (outcome,) = synth.run_batch([content], [job.variation], report, **options)
        if isinstance(outcome, RvgenError):
            raise outcome
        return outcome

    @staticmethod
    def anchor(neighbours: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The temporal target of a frame, (1, 4, H, W), from its neighbours' results, each with
        the flow from this frame to it and that flow's reliability, nearest first: each pixel the
        nearest neighbour's result that the flow follows reliably, warped into this frame (RGB),
        and how reliably (the weight; 0 where no neighbour sees it)."""
        image, weight = None, None
        for picture, flow, reliable in neighbours:
            warped = warp(picture, flow)
            c = reliable.view(1, 1, *reliable.shape[-2:]).float()
            if image is None:
                image, weight = warped * c, c
                continue
            share = (c - weight).clamp_min(0)  # what the nearer frames left unseen
            image, weight = image + warped * share, weight + share
        image = torch.where(weight > 0, image / weight.clamp_min(1e-6), torch.zeros_like(image))
        return torch.cat([image, weight], dim=1)

    def _reporter(self, job: Job, where: tuple[int, int], progress: _Progress) -> Callable[[int, Progress], None]:
        gate = StepGate(self.should_stop)
        sweep, index = where

        def callback(_: int, p: Progress) -> None:
            if gate():
                self.emit(Step(self.name, job, p.iteration, p.iterations, p.loss, p.level,
                               frames=(index, progress.frames), eta=progress.eta(),
                               passes=(sweep, progress.passes) if progress.passes > 1 else None))

        return callback
