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

Finished frames are kept as PNG in a hidden folder beside the result
(``.rvgen-NAME.frames/``, with the run's key in ``key.json``): a killed run resumes at the
first unfinished frame of each shot, and a frame is always continued from the saved (8-bit)
result, so a resumed clip is the clip an uninterrupted run makes. The video (the input's
timestamps and audio, :func:`rvgen.video.io.write_clip`) is written only once every frame
exists, then its sidecar ``NAME.mp4.json`` (with the flicker measure: the mean temporal
warping error of the result next to the input's), then the frames are removed.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rvgen import imageio
from rvgen.batch.events import Event, Step
from rvgen.batch.jobs import Job
from rvgen.batch.sidecar import RunKey, input_identity, sidecar
from rvgen.batch.signals import StepGate
from rvgen.engine import Progress, Result
from rvgen.errors import ImageError, RvgenError
from rvgen.pipeline import Pipeline
from rvgen.recipe import frame_range
from rvgen.video.flow import optical_flow, reliability, scene_cuts, warp, warping_error
from rvgen.video.io import probe, read_frames, write_clip

KEY_FILE = "key.json"


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


class ClipMaker:
    """Makes clip jobs on one worker: ``pipeline`` is built for clips (with the temporal term)."""

    def __init__(self, pipeline: Pipeline, key: RunKey, name: str, device: str, threads: int | None,
                 emit: Callable[[Event], None], should_stop: Callable[[], bool] = lambda: False):
        self.pipeline, self.key, self.name, self.device, self.threads = pipeline, key, name, device, threads
        self.recipe = pipeline.recipe
        self.video = self.recipe.video
        self.emit, self.should_stop = emit, should_stop

    # -- the job ----------------------------------------------------------------------------

    def make(self, job: Job) -> Result:
        """Every frame of ``job`` (those left from an earlier run kept), then its video and
        sidecar. Returns the clip's :class:`Result` (its last frame as ``image``; the losses
        the mean over frames; iterations and seconds summed). A damaged clip raises a one-line
        :class:`~rvgen.errors.ImageError` before any frame is made."""
        if self.video["passes"] != 1:
            raise RvgenError("video.passes: only 1 pass is implemented")
        source = Path(job.source)
        selection, fps = frame_range(self.video["frames"]), self.video["fps"]
        info = probe(source, selection, fps)
        inputs, times = [], []
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
        work = self._work_folder(job)
        shots = sorted(set(scene_cuts(inputs)) | {0})
        bounds = list(zip(shots, shots[1:] + [len(inputs)]))
        progress = _Progress(len(inputs))
        flicker = Flicker()
        totals: dict[str, Any] = {"loss": [], "initial": [], "parts": {}, "iterations": 0, "seconds": 0.0}
        last = None
        for start, stop in bounds:
            last = self._shot(job, inputs, start, stop, work, progress, flicker, totals)
        paths = [work / frame_name(i) for i in range(len(inputs))]
        write_clip(paths, times, job.output, audio_from=source if info.has_audio else None,
                   codec=self.video["codec"], crf=self.video["crf"])
        if self.video["keep_frames"]:
            self._keep_frames(job, paths)
        count = max(1, len(totals["loss"]))
        result = Result(image=last, loss=sum(totals["loss"]) / count, initial_loss=sum(totals["initial"]) / count,
                        parts={k: v / count for k, v in totals["parts"].items()}, iterations=totals["iterations"],
                        seconds=totals["seconds"])
        data = sidecar(self.recipe, self.key, job, result, self.device, self.threads, self.pipeline.synth.numerics)
        data["clip"] = {"frames": len(inputs), "shots": [start for start, _ in bounds], "fps": float(info.fps),
                        "duration": times[-1] - times[0] + (1 / float(info.fps)), "made": progress.made,
                        "flicker": flicker.summary()}
        imageio.write_json(data, job.sidecar)
        shutil.rmtree(work, ignore_errors=True)
        return result

    def _work_folder(self, job: Job) -> Path:
        """The job's frame folder, emptied when it holds the frames of another recipe, input
        or variation; temporary files a killed run left in it removed."""
        work = work_folder(job)
        key = {"recipe": self.key.recipe, "references": dict(self.key.references), "variation": job.variation,
               "input": input_identity(job.source)["sha256"], "threads": self.threads,
               "numerics": list(map(str, (self.pipeline.synth.numerics.precision,
                                          self.pipeline.synth.numerics.layout)))}
        try:
            recorded = json.loads((work / KEY_FILE).read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded != key:
            shutil.rmtree(work, ignore_errors=True)
            imageio.write_json(key, work / KEY_FILE)
        for path in work.iterdir():
            if imageio.is_temporary(path.name):
                path.unlink(missing_ok=True)
        return work

    def _keep_frames(self, job: Job, paths: list[Path]) -> None:
        folder = frames_folder(job)
        for path in paths:
            imageio.save_image(imageio.load_image(path), folder / path.name, "png")

    # -- a shot -----------------------------------------------------------------------------

    def _shot(self, job: Job, inputs: list[torch.Tensor], start: int, stop: int, work: Path,
              progress: _Progress, flicker: Flicker, totals: dict[str, Any]) -> torch.Tensor:
        """Frames ``start`` to ``stop`` (one shot), those not yet in ``work`` made in order;
        the last frame's result."""
        results: dict[int, torch.Tensor] = {}
        offsets = sorted({1, *self.video["long_term"]})  # the previous frame always
        keep = max(offsets)
        for t in range(start, stop):
            path = work / frame_name(t)
            kept = path.is_file() and (work / (path.name + ".json")).is_file()
            flows = {}  # offset -> (flow of frame t to frame t - offset, its reliability)
            for k in [1] if kept else offsets:
                if t - k >= start:
                    back = optical_flow(inputs[t], inputs[t - k])
                    flows[k] = back, reliability(back, optical_flow(inputs[t - k], inputs[t]))
            if kept:
                result = imageio.load_image(path)
                made = json.loads((work / (path.name + ".json")).read_text())
            else:
                alone = t == start or self.video["temporal_weight"] == 0  # 0: frame by frame
                outcome = self._frame(job, inputs, t, alone, results, flows, progress)
                imageio.save_image(outcome.image, path, "png")
                made = {"loss": outcome.loss, "initial": outcome.initial_loss, "parts": dict(outcome.parts),
                        "iterations": outcome.iterations, "seconds": outcome.seconds}
                imageio.write_json(made, work / (path.name + ".json"))  # after the image: the frame is done
                progress.made += 1
                result = quantized(outcome.image)
            self._add(totals, made)
            progress.done += 1
            if 1 in flows:
                flow, weight = flows[1]
                (result_error,) = warping_error([results[t - 1], result], [flow, flow], [weight, weight])
                (input_error,) = warping_error([inputs[t - 1], inputs[t]], [flow, flow], [weight, weight])
                flicker.add(t, result_error, input_error)
            results[t] = result
            results.pop(t - keep, None)
        return results[stop - 1]

    @staticmethod
    def _add(totals: dict[str, Any], made: dict[str, Any]) -> None:
        """Add a frame's losses, iterations and time (as its ``NNNNNN.png.json`` holds them)."""
        totals["loss"].append(float(made["loss"]))
        totals["initial"].append(float(made["initial"]))
        for name, value in made["parts"].items():
            totals["parts"][name] = totals["parts"].get(name, 0.0) + float(value)
        totals["iterations"] += int(made["iterations"])
        totals["seconds"] += float(made["seconds"])

    def _frame(self, job: Job, inputs: list[torch.Tensor], index: int, first: bool, results: dict[int, torch.Tensor],
               flows: dict[int, tuple[torch.Tensor, torch.Tensor]], progress: _Progress) -> Result:
        """Frame ``index``: the first of its shot as an image, a later one from the earlier
        results (``results``, by index) warped by ``flows``."""
        synth = self.pipeline.synth
        content = inputs[index]
        report = self._reporter(job, progress)
        masks = self.pipeline.guides(job.rel, content)  # the clip's mask, or its rule on this frame
        guides = None if masks is None else [masks]
        if first:
            (outcome,) = synth.run_batch([content], [job.variation], report, guides=guides,
                                         iterations=self.video["first_frame_iterations"])
        else:
            anchor = self.anchor(index, results, flows)
            nearest = min(flows)
            weight = anchor[:, 3:]
            # Where no earlier frame sees a pixel: this frame's own picture with the nearest earlier
            # frame's painting over its picture (result minus input), warped.
            fill = content + warp(results[index - nearest] - inputs[index - nearest], flows[nearest][0])
            begin = (weight * anchor[:, :3] + (1 - weight) * fill).clamp(0, 1)
            (outcome,) = synth.run_batch([content], [job.variation], report, starts=[begin], anchors=[anchor],
                                         guides=guides, iterations=self.video["iterations"])
        if isinstance(outcome, RvgenError):
            raise outcome
        return outcome

    @staticmethod
    def anchor(index: int, results: dict[int, torch.Tensor], flows: dict[int, tuple[torch.Tensor, torch.Tensor]]
              ) -> torch.Tensor:
        """The temporal target of frame ``index``, (1, 4, H, W): each pixel the earlier result
        of the nearest offset whose flow follows it reliably, warped into this frame (RGB),
        and how reliably (the weight; 0 where no earlier frame sees it)."""
        image, weight = None, None
        for k in sorted(flows):
            flow, reliable = flows[k]
            warped = warp(results[index - k], flow)
            c = reliable.view(1, 1, *reliable.shape[-2:]).float()
            if image is None:
                image, weight = warped * c, c
                continue
            share = (c - weight).clamp_min(0)  # what the nearer frames left unseen
            image, weight = image + warped * share, weight + share
        image = torch.where(weight > 0, image / weight.clamp_min(1e-6), torch.zeros_like(image))
        return torch.cat([image, weight], dim=1)

    def _reporter(self, job: Job, progress: _Progress) -> Callable[[int, Progress], None]:
        gate = StepGate(self.should_stop)

        def callback(_: int, p: Progress) -> None:
            if gate():
                self.emit(Step(self.name, job, p.iteration, p.iterations, p.loss, p.level,
                               frames=(progress.done, progress.total), eta=progress.eta()))

        return callback


@dataclass
class _Progress:
    """Frames of a clip: how many there are, are done (made now or kept), and made by this run."""

    total: int
    done: int = 0
    made: int = 0
    began: float = field(default_factory=time.monotonic)

    def eta(self) -> float | None:
        """Seconds left, from the frames this run made so far (None before the first)."""
        if self.made == 0:
            return None
        return (time.monotonic() - self.began) / self.made * (self.total - self.done)
