"""Test clips with known motion, made with PyAV (tests import this module: ``from videos import ...``).

:func:`pan_scene` renders a photo panning by a whole number of pixels a frame with a
textured square moving across it differently, so the true optical flow of every pixel is
known, and so is which pixels each frame uncovers. :func:`make_clip` encodes such a scene
as a small clip (constant or variable frame rate, a rotation tag, an audio track);
:func:`make_cut_clip` one with a cut between two shots.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from rvgen import imageio

SQUARE = 12  # the moving square's side, px


@dataclass
class Scene:
    """Frames (1, 3, H, W) in [0, 1]; ``flows[t]`` the true flow of frame t to frame t-1
    ((H, W, 2) px, [..., 0] = dx: frame t at (x, y) shows what frame t-1 shows at
    (x + dx, y + dy)); ``uncovered[t]`` (H, W) bool: pixels of frame t that frame t-1 does
    not show (the background the square uncovers, and what enters at the border);
    ``square[t]`` (H, W) bool: the square in frame t. Entry 0 of flows and uncovered
    holds zeros (frame 0 has no previous frame)."""

    frames: list[torch.Tensor]
    flows: list[torch.Tensor]
    uncovered: list[torch.Tensor]
    square: list[torch.Tensor]
    cuts: list[int] = field(default_factory=lambda: [0])


@functools.lru_cache(maxsize=16)
def _photo(name: str, width: int, height: int) -> torch.Tensor:
    """(3, height, width): the top left of the sample photo ``name`` scaled to cover that size."""
    full_h, full_w = imageio.load_image(f"skimage:{name}").shape[-2:]
    side = math.ceil(max(full_w, full_h) * max(width / full_w, height / full_h))
    return imageio.load_image(f"skimage:{name}", side)[0, :, :height, :width]


def pan_scene(n: int = 8, size: tuple[int, int] = (64, 48), shift: tuple[int, int] = (2, 1),
              square_shift: tuple[int, int] = (-2, 2), photo: str = "astronaut", square: int = SQUARE) -> Scene:
    """``n`` frames of ``size`` (W, H): ``photo`` moving ``shift`` px a frame (right, down),
    a ``square`` px square cut from another photo moving ``square_shift`` px a frame over it."""
    w, h = size
    dx, dy = shift
    margin_x, margin_y = (n - 1) * abs(dx), (n - 1) * abs(dy)
    bg_w, bg_h = w + 2 * margin_x, h + 2 * margin_y
    background = _photo(photo, bg_w, bg_h)
    patch = _photo("coffee" if photo != "coffee" else "chelsea", 4 * square, 3 * square)[:, square:2 * square, square:2 * square]
    sx, sy = square_shift
    # The square starts where it stays inside the frame for all n frames.
    x0 = (w - square) // 2 - (n - 1) * sx // 2
    y0 = (h - square) // 2 - (n - 1) * sy // 2
    assert 0 <= x0 and x0 + (n - 1) * sx + square <= w and 0 <= y0 and y0 + (n - 1) * sy + square <= h, "square leaves the frame"
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    frames, flows, uncovered, squares = [], [], [], []
    for t in range(n):
        left, top = margin_x - t * dx, margin_y - t * dy  # background content moves by +shift
        frame = background[:, top:top + h, left:left + w].clone()
        qx, qy = x0 + t * sx, y0 + t * sy
        frame[:, qy:qy + square, qx:qx + square] = patch
        inside = (xs >= qx) & (xs < qx + square) & (ys >= qy) & (ys < qy + square)
        flow = torch.empty(h, w, 2)
        flow[..., 0] = torch.where(inside, -sx, -dx).float()
        flow[..., 1] = torch.where(inside, -sy, -dy).float()
        px, py = xs - dx, ys - dy  # where a background pixel was in frame t-1
        was_square = (px >= qx - sx) & (px < qx - sx + square) & (py >= qy - sy) & (py < qy - sy + square)
        entered = (px < 0) | (px >= w) | (py < 0) | (py >= h)
        frames.append(frame.unsqueeze(0).contiguous())
        squares.append(inside)
        if t == 0:
            flows.append(torch.zeros(h, w, 2))
            uncovered.append(torch.zeros(h, w, dtype=torch.bool))
        else:
            flows.append(flow)
            uncovered.append(~inside & (was_square | entered))
    return Scene(frames, flows, uncovered, squares)


def cut_scene(n: int = 8, size: tuple[int, int] = (64, 48), cut: int = 4) -> Scene:
    """Two shots: frames 0..cut-1 of :func:`pan_scene` on the astronaut, then frames of one on
    the coffee cup panning the other way. ``cuts`` is [0, cut]."""
    first = pan_scene(n, size)
    second = pan_scene(n, size, shift=(-1, 2), square_shift=(2, -2), photo="coffee")
    pick = lambda field: getattr(first, field)[:cut] + getattr(second, field)[cut:]  # noqa: E731
    scene = Scene(pick("frames"), pick("flows"), pick("uncovered"), pick("square"), cuts=[0, cut])
    scene.uncovered[cut] = torch.ones_like(scene.uncovered[cut])
    return scene


@dataclass
class Clip:
    path: Path
    scene: Scene
    times: list[float]  # each frame's presentation time, seconds
    fps: Fraction


def vfr_times(n: int) -> list[float]:
    """Uneven gaps (50, 100 and 150 ms in turn), the times in whole milliseconds."""
    gaps = [0.1, 0.05, 0.15]
    return [round(sum(gaps[i % 3] for i in range(k)), 3) for k in range(n)]


def write_scene(path: Path, scene: Scene, times: list[float], rotation: int = 0, audio: str | None = None,
                codec: str = "libx264") -> None:
    """Encode ``scene`` at ``times`` (ms precision). ``rotation``: degrees counter-clockwise a
    player turns the stored frames (the display matrix); the stored frames are the scene
    turned the other way, so the clip plays upright. ``audio``: an audio codec for a 440 Hz
    tone as long as the clip ("aac", "pcm_s16le", ...)."""
    time_base = Fraction(1, 1000)
    duration = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 0.1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=round((len(times) - 1) / times[-1]) if times[-1] else 10,
                                      options={"crf": "8"} if codec == "libx264" else {})
        h, w = scene.frames[0].shape[-2:]
        stream.width, stream.height = (h, w) if rotation in (90, 270) else (w, h)
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        if audio:
            write_tone(container, audio, duration)
        for frame, time in zip(scene.frames, times):
            levels = (frame[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            stored = np.ascontiguousarray(np.rot90(levels, k=-rotation // 90))
            video = av.VideoFrame.from_ndarray(stored, format="rgb24")
            video.pts, video.time_base = round(time * 1000), time_base
            container.mux(stream.encode(video))
        container.mux(stream.encode(None))


def write_tone(container, codec: str, duration: float, rate: int = 44100) -> None:
    """A 440 Hz stereo tone of ``duration`` seconds as a new stream of ``container``."""
    stream = container.add_stream(codec, rate=rate)
    stream.layout = "stereo"
    fmt = stream.codec_context.codec.audio_formats[0].name
    total = int(duration * rate)
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, total, chunk):
        count = min(chunk, total - start)
        tone = np.sin(2 * math.pi * 440 * (start + np.arange(count)) / rate) * 0.3
        planes = np.stack([tone, tone]).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        if fmt != "fltp":
            frame = av.AudioResampler(format=fmt, layout="stereo", rate=rate).resample(frame)[0]
            frame.pts, frame.time_base = start, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))



def write_frameless_clip(path: Path, audio_seconds: float) -> None:
    """A file with a video stream that holds no frame, beside some audio."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        write_tone(container, "flac", audio_seconds)

def make_clip(path: Path, frames: int = 8, size: tuple[int, int] = (64, 48), fps: int = 10, vfr: bool = False,
              rotation: int = 0, audio: str | bool = False, codec: str = "libx264", **scene_options) -> Clip:
    """A clip of :func:`pan_scene` at ``path`` (container by suffix): ``frames`` frames at
    ``fps``, or with ``vfr`` at :func:`vfr_times`; ``audio`` True for AAC or a codec name."""
    scene = pan_scene(frames, size, **scene_options)
    return _clip(path, scene, frames, fps, vfr, rotation, audio, codec)


def make_cut_clip(path: Path, frames: int = 8, size: tuple[int, int] = (64, 48), cut: int = 4, fps: int = 10) -> Clip:
    """A clip of :func:`cut_scene`: a cut at frame ``cut``."""
    return _clip(path, cut_scene(frames, size, cut), frames, fps, False, 0, False, "libx264")


def _clip(path, scene, frames, fps, vfr, rotation, audio, codec) -> Clip:
    path.parent.mkdir(parents=True, exist_ok=True)
    times = vfr_times(frames) if vfr else [k / fps for k in range(frames)]
    write_scene(path, scene, times, rotation, "aac" if audio is True else audio or None, codec)
    rate = Fraction(fps) if not vfr else Fraction(frames - 1) / Fraction(times[-1]).limit_denominator(1000)
    return Clip(path, scene, times, rate)
