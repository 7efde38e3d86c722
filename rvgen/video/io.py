"""Video clips in and out, with PyAV (FFmpeg's libraries; no ``ffmpeg`` program needed).

A clip is read as a player shows it: its frames upright (the display matrix, which also
carries an old ``rotate`` tag, applied), at the times the file gives them, variable frame
rate kept as it is. :func:`probe` says what a clip holds, :func:`read_frames` hands out
its frames as tensors. :func:`write_clip` writes frames back as H.264 in MP4 by default,
upright with no rotation tag, at the given times, with the audio of another clip copied
over (or re-encoded where its codec cannot go in the container), atomically like every
file rvgen writes.

Two selections shape a clip, in this order: ``fps`` resamples it to a constant rate (at
each tick of the new rate the frame on screen at that moment is kept), then ``frames``, a
range of indices into that sequence, keeps a part. An index is a frame's place in the
clip after ``fps`` (so ``frames=range(10, 20)`` hands out indices 10 to 19), and a time is
the frame's presentation time in the file, in seconds (usually from 0): with ``fps``, the
tick's time.

Damaged input is refused, not shortened. A clip that cannot be opened, has no video stream
or no frames, uses a codec this FFmpeg cannot decode, or whose frames stop decoding before
the end its container announces (a truncated download, a corrupt packet) raises
:class:`~rvgen.errors.ImageError` with one line naming the file, and nothing is written
from it: a stylised clip shorter than its input, missing its end, is worse than none,
and the fix (download it again) is the user's. Damage the decoder conceals itself (a few
zeroed bytes in an H.264 frame) goes unnoticed, as it does in a player.

Rotation is the display matrix FFmpeg hands out with each frame (``VideoFrame.rotation``,
counter-clockwise degrees). MP4 and MOV keep it in the track header's matrix, which older
tools showed as a ``rotate`` tag: a portrait phone clip shown as ``rotate=90`` (turn
clockwise) reports 270 here, and is read upright.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import Interpolation

from rvgen.errors import ImageError
from rvgen.imageio import _atomic_write, fit_long_side, load_image

# What a folder run picks up as a clip, by extension. An animated GIF is an image here.
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m2v", ".ts", ".mts",
    ".m2ts", ".wmv", ".flv", ".3gp", ".ogv",
})
# The muxer for each suffix write_clip accepts.
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
# Audio codecs copied into each container as they are; any other is re-encoded.
_COPYABLE_AUDIO = {
    "mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
    "mov": {"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
    "matroska": None,  # anything
    "webm": {"opus", "vorbis"},
}
_AUDIO_ENCODER = {"mp4": "aac", "mov": "aac", "matroska": "aac", "webm": "libopus"}
_TIME_BASE = Fraction(1, 90000)  # the written clip's clock: MPEG's 90 kHz, exact for 24, 25, 30 and 30000/1001 fps
_AUDIO_BITRATE = 192_000
# swscale's exact colour paths (its default fast YUV <-> RGB converters are off by a level or two).
_EXACT = Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP


def is_video_file(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class ClipInfo:
    """What :func:`probe` finds in a clip (after the ``frames``/``fps`` selection)."""

    width: int  # upright: rotation applied
    height: int
    frames: int  # frames that decode
    times: tuple[float, ...]  # presentation time of each frame, seconds
    fps: Fraction  # average rate (the ``fps`` asked for, if any)
    rotation: int  # 0, 90, 180 or 270: degrees counter-clockwise a player turns the stored frames
    has_audio: bool
    codec: str


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """FFmpeg's failures to open or decode ``path`` as one-line :class:`ImageError`s."""
    try:
        yield
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode it") from None
    except av.error.DecoderNotFoundError:
        raise ImageError(f"{path}: a video codec this FFmpeg cannot decode") from None
    except (av.error.FFmpegError, OSError, ValueError, EOFError):
        raise ImageError(f"{path}: cannot read video (corrupt, truncated or not a video)") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise ImageError(f"{path}: no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or ctx.name in (None, "", "none") or ctx.name not in av.codecs_available:
        tag = f" ({ctx.codec_tag.strip()!r})" if ctx is not None and ctx.codec_tag and ctx.codec_tag.isprintable() else ""
        raise ImageError(f"{path}: a video codec this FFmpeg cannot decode{tag}")
    stream.thread_type = "AUTO"
    return stream


def _seconds(value: int | None, time_base: Fraction | None) -> Fraction | None:
    return None if value is None or time_base is None else value * time_base


def _decoded(container: av.container.InputContainer, stream: av.VideoStream, path: Path
             ) -> Iterator[tuple[Fraction, Fraction, av.VideoFrame]]:
    """Every frame of ``stream`` in presentation order with its time and duration (seconds),
    checking that the stream does not end before its container says it does."""
    rate = stream.average_rate or stream.guessed_rate
    default_duration = 1 / Fraction(rate) if rate else Fraction(1, 25)
    previous: Fraction | None = None
    count = 0
    for frame in container.decode(stream):
        if frame.is_corrupt:
            raise ImageError(f"{path}: corrupt video: frame {count} does not decode")
        time = _seconds(frame.pts, frame.time_base)
        if time is None:  # no timestamp (some AVI): the frame after the last one
            time = Fraction(0) if previous is None else previous + default_duration
        if previous is not None and time <= previous:
            continue  # a repeated or backwards timestamp: a player would not show it
        duration = _seconds(frame.duration, frame.time_base) or default_duration
        count += 1
        yield time, duration, frame
        previous = time
    expected = stream.frames  # from the container's index, where it has one (MP4, MOV)
    if expected and count < expected:
        raise ImageError(f"{path}: truncated or corrupt video: {count} of its {expected} frames decode")
    end = _announced_end(container, stream)
    if not expected and end and previous is not None and previous + 2 * default_duration < end:
        raise ImageError(f"{path}: truncated or corrupt video: frames stop at {float(previous):.2f} s of {float(end):.2f} s")


def _announced_end(container: av.container.InputContainer, stream: av.VideoStream) -> Fraction | None:
    """When the video stream ends by its container's header (seconds), where that says: the
    stream's duration, Matroska's DURATION tag, or the file's duration if it holds only this
    stream."""
    start = _seconds(stream.start_time, stream.time_base) or 0
    length = _seconds(stream.duration, stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")  # Matroska: "00:00:01.200000000"
    if length is None and tag:
        try:
            hours, minutes, seconds = tag.split(":")
            length = Fraction(int(hours) * 3600 + int(minutes) * 60) + Fraction(seconds)
        except ValueError:
            length = None
    if length is None and len(container.streams) == 1 and container.duration:
        length = Fraction(container.duration, av.time_base)
    return None if not length else start + length


def _resampled(decoded: Iterable[tuple[Fraction, Fraction, av.VideoFrame]],
               fps: float | None) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """(time, frame): the frames as they are, or with ``fps`` the frame on screen at each
    tick of that rate (a frame repeated or left out as needed), timed at the tick."""
    if fps is None:
        for time, _, frame in decoded:
            yield time, frame
        return
    period = 1 / Fraction(fps).limit_denominator(1_000_000)
    tick: Fraction | None = None
    shown: av.VideoFrame | None = None
    for time, duration, frame in decoded:
        if tick is None:
            tick = time
        while shown is not None and tick < time:
            yield tick, shown
            tick += period
        shown, end = frame, time + duration
    while shown is not None and tick < end:
        yield tick, shown
        tick += period


def _selected(path: Path, frames: range | None, fps: float | None
              ) -> Iterator[tuple[av.VideoStream, int, Fraction, av.VideoFrame]]:
    """The kept frames of the clip at ``path`` with their stream, index and time."""
    if frames is not None and (frames.step <= 0 or not frames):
        raise ValueError(f"frames must be a non-empty increasing range, not {frames}")
    count = 0
    with _reading(path), av.open(str(path), metadata_errors="ignore") as container:
        stream = _video_stream(container, path)
        for index, (time, frame) in enumerate(_resampled(_decoded(container, stream, path), fps)):
            if frames is not None and index >= frames.stop:
                break
            if frames is None or index in frames:
                count += 1
                yield stream, index, time, frame
    if count == 0:
        where = "" if frames is None else f" in frames {frames.start}-{frames.stop - 1}"
        raise ImageError(f"{path}: no video frames{where}")


def _rotation(frame: av.VideoFrame) -> int:
    """Degrees counter-clockwise the display matrix turns ``frame``: 0, 90, 180 or 270."""
    return round((frame.rotation or 0) / 90) % 4 * 90


def probe(path: Path, frames: range | None = None, fps: float | None = None) -> ClipInfo:
    """What the clip at ``path`` holds, decoding it all (so a damaged clip is found here,
    before any work on it). Raises :class:`ImageError` (one line) for a clip that cannot be read."""
    path = Path(path)
    times: list[float] = []
    first: tuple[av.VideoStream, av.VideoFrame, bool] | None = None
    for stream, _, time, frame in _selected(path, frames, fps):
        times.append(float(time))
        if first is None:
            first = stream, frame, bool(stream.container.streams.audio)
    stream, frame, has_audio = first
    rotation = _rotation(frame)
    width, height = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
    if fps is not None:
        rate = Fraction(fps).limit_denominator(1_000_000)
    elif stream.average_rate:
        rate = Fraction(stream.average_rate)
    elif len(times) > 1:
        rate = Fraction((len(times) - 1) / (times[-1] - times[0])).limit_denominator(1001)
    else:
        rate = Fraction(25)
    return ClipInfo(width=width, height=height, frames=len(times), times=tuple(times), fps=rate,
                    rotation=rotation, has_audio=has_audio, codec=stream.codec_context.name)


def _to_tensor(frame: av.VideoFrame, size: int | None) -> torch.Tensor:
    """An upright (1, 3, H, W) float tensor in [0, 1] of ``frame``, its long side ``size``
    at most (never enlarged). Deep formats (10-bit and more) keep their precision."""
    turns = _rotation(frame) // 90
    width, height = frame.width, frame.height
    if size is not None and max(width, height) > size:
        width, height = fit_long_side((width, height), size)
    deep = any(c.bits > 8 for c in frame.format.components)
    rgb = frame.reformat(
        width=width, height=height, format="rgb48le" if deep else "rgb24",
        interpolation=(Interpolation.AREA if (width, height) != (frame.width, frame.height) else Interpolation.BICUBIC) | _EXACT,
        src_color_range=frame.color_range or None, dst_color_range="JPEG",
    ).to_ndarray()
    levels = np.rot90(rgb, k=turns) if turns else rgb
    image = torch.from_numpy(np.ascontiguousarray(levels)).permute(2, 0, 1).unsqueeze(0)
    return image.float().div_(65535.0 if deep else 255.0).contiguous()


def read_frames(path: Path, size: int | None, frames: range | None = None, fps: float | None = None
                ) -> Iterator[tuple[int, float, torch.Tensor]]:
    """(index, time in seconds, frame): each kept frame, upright, as a (1, 3, H, W) float
    tensor in [0, 1] on the CPU, its long side ``size`` (never enlarged past the source).
    Raises :class:`ImageError` (one line), possibly after some frames, for a damaged clip:
    :func:`probe` it first to know before any work."""
    path = Path(path)
    last: tuple[av.VideoFrame, torch.Tensor] | None = None
    for _, index, time, frame in _selected(path, frames, fps):
        if last is None or last[0] is not frame:  # a frame shown at several ticks is converted once
            last = frame, _to_tensor(frame, size)
        yield index, float(time), last[1]


class Frames(Sequence[torch.Tensor]):
    """Decoded frames held as the levels they were decoded with: 8 bits a channel (a quarter
    of the memory of float tensors; a minute at 512x288 px and 30 fps takes 0.8 GB, not
    3.2 GB), 16 for deep formats, float for any other tensor. ``frames[t]`` is the frame as
    it was appended, bit for bit: a (1, 3, H, W) float32 tensor."""

    def __init__(self, frames: Iterable[torch.Tensor] = ()):
        self._held: list[tuple[torch.Tensor, float]] = []  # (levels, the level of 1.0; 0: held as it is)
        for frame in frames:
            self.append(frame)

    def append(self, frame: torch.Tensor) -> None:
        frame = frame.detach().float().cpu()
        for dtype, top, offset in ((torch.uint8, 255.0, 0), (torch.int16, 65535.0, 32768)):
            levels = frame.mul(top).round_()
            if levels.min() >= 0 and levels.max() <= top:
                held = levels.sub_(offset).to(dtype)
                if torch.equal(self._float(held, top), frame):
                    self._held.append((held, top))
                    return
        self._held.append((frame, 0.0))

    @staticmethod
    def _float(held: torch.Tensor, top: float) -> torch.Tensor:
        if top == 0.0:
            return held
        if held.dtype == torch.int16:
            held = held.int().add_(32768)
        return held.float().div_(top)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._float(*self._held[index])

    def __len__(self) -> int:
        return len(self._held)

    @property
    def nbytes(self) -> int:
        """The memory the frames take."""
        return sum(held.numel() * held.element_size() for held, _ in self._held)


# Writing


def _frame_tensor(frame: torch.Tensor | str | Path) -> torch.Tensor:
    image = load_image(frame) if isinstance(frame, (str, Path)) else frame
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"a frame must be (1, 3, H, W), not {tuple(image.shape)}")
    return image.detach().float().cpu().clamp(0, 1)


def _even(image: torch.Tensor) -> torch.Tensor:
    """``image`` padded by repeating its last column and row to an even width and height
    (4:2:0 chroma needs them)."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, w % 2, 0, h % 2), mode="replicate") if (w % 2 or h % 2) else image


def _video_frame(image: torch.Tensor) -> av.VideoFrame:
    levels = (image[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(levels), format="rgb24")


def _codec_options(codec: str, crf: int) -> dict[str, str]:
    if codec in ("libx264", "libx265", "libsvtav1"):
        options = {"crf": str(crf)}
        if codec == "libx265":
            options["x265-params"] = "log-level=error"
        return options
    if codec == "libvpx-vp9":
        return {"crf": str(crf), "b": "0"}
    return {}


def _average_rate(times: Sequence[float]) -> Fraction:
    if len(times) < 2 or times[-1] <= times[0]:
        return Fraction(25)
    return Fraction((len(times) - 1) / (times[-1] - times[0])).limit_denominator(1001)


def _add_audio(container: av.container.OutputContainer, source: Path, muxer: str,
               start: float, end: float) -> None:
    """The audio of ``source`` between ``start`` and ``end`` (seconds, the source's clock)
    muxed into ``container`` from 0: copied where the container takes its codec, else
    re-encoded (AAC; Opus in WebM)."""
    with _reading(source), av.open(str(source), metadata_errors="ignore") as clip:
        if not clip.streams.audio:
            return
        audio = clip.streams.audio[0]
        copyable = _COPYABLE_AUDIO[muxer]
        if copyable is None or audio.codec_context.name in copyable:
            _copy_audio(container, clip, audio, start, end)
        else:
            _encode_audio(container, clip, audio, _AUDIO_ENCODER[muxer], start, end)


def _copy_audio(container, clip, audio, start: float, end: float) -> None:
    out = container.add_stream_from_template(audio)
    offset = None
    for packet in clip.demux(audio):
        if packet.dts is None or packet.pts is None:
            continue  # the demuxer's flush packet
        time = float(packet.pts * packet.time_base)
        length = float((packet.duration or 0) * packet.time_base)
        if time + length <= start or time >= end:
            continue
        if offset is None:  # the span's start, or this packet's if it begins before (a partial packet)
            offset = min(packet.pts, round(start / packet.time_base))
        packet.pts -= offset
        packet.dts -= offset
        packet.stream = out
        container.mux(packet)


def _encode_audio(container, clip, audio, encoder: str, start: float, end: float) -> None:
    rate = audio.codec_context.sample_rate or 48000
    if encoder == "libopus":
        rate = 48000  # the only rates Opus takes are divisors of 48 kHz; keep it simple
    out = container.add_stream(encoder, rate=rate)
    out.bit_rate = _AUDIO_BITRATE
    layout = audio.codec_context.layout.name if audio.codec_context.layout else "stereo"
    out.layout = layout if audio.codec_context.channels <= 2 else "stereo"
    resampler = av.AudioResampler(format=out.codec_context.codec.audio_formats[0].name, layout=out.layout.name, rate=rate)
    samples = None  # the output's next sample: the first one at the first kept frame's place in the span
    for frame in clip.decode(audio):
        time = None if frame.pts is None else float(frame.pts * frame.time_base)
        if time is not None and time + frame.samples / frame.sample_rate <= start:
            continue
        if time is not None and time >= end:
            break
        if samples is None:
            samples = max(0, round(((time or start) - start) * rate))
        for chunk in resampler.resample(frame):
            chunk.pts, chunk.time_base = samples, Fraction(1, rate)
            samples += chunk.samples
            container.mux(out.encode(chunk))
    for chunk in resampler.resample(None) if samples is not None else ():
        chunk.pts, chunk.time_base = samples, Fraction(1, rate)
        samples += chunk.samples
        container.mux(out.encode(chunk))
    container.mux(out.encode(None))


def write_clip(frames: Iterable[torch.Tensor | str | Path], times: Sequence[float], out: Path, *,
               audio_from: Path | None = None, codec: str = "libx264", crf: int = 18) -> None:
    """Encode ``frames`` ((1, 3, H, W) tensors in [0, 1] or image paths, one per time in
    ``times``, seconds) as a clip at ``out`` (the container from its suffix: .mp4, .m4v,
    .mov, .mkv or .webm), starting at 0 with the gaps between ``times`` kept. Odd sizes are
    padded to even by repeating the last column or row. With ``audio_from``, that clip's
    audio over the same span (``times[0]`` to one frame after ``times[-1]``) goes along.
    Written atomically: an error leaves no file and no temporary behind."""
    out = Path(out)
    muxer = _MUXERS.get(out.suffix.lower())
    if muxer is None:
        raise ImageError(f"{out}: cannot write a clip with suffix {out.suffix!r}; use one of {', '.join(sorted(_MUXERS))}")
    if codec not in av.codecs_available:
        raise ImageError(f"{out}: video encoder {codec!r} is not in this FFmpeg")
    times = [float(t) for t in times]
    if not times or any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError("times must be a non-empty increasing sequence")
    rate = _average_rate(times)
    end = times[-1] + (1 / rate if len(times) < 2 else times[-1] - times[-2])

    def write(file: BinaryIO) -> None:
        images = iter(frames)
        first = next(images, None)
        if first is None:
            raise ValueError("no frames to write")
        first = _even(_frame_tensor(first))
        with av.open(file, "w", format=muxer) as container:
            stream = container.add_stream(codec, rate=rate, options=_codec_options(codec, crf))
            stream.height, stream.width = first.shape[-2:]
            formats = [f.name for f in (stream.codec_context.codec.video_formats or ())]
            stream.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
            stream.time_base = stream.codec_context.time_base = _TIME_BASE
            ctx = stream.codec_context
            ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc = 1, 1, 1, 1  # BT.709, limited range
            if audio_from is not None:  # first: the muxer holds the (small) audio until the video catches up
                _add_audio(container, Path(audio_from), muxer, times[0], end)
            count = 0
            for image in _chain(first, images):
                if count == len(times):
                    raise ValueError(f"more frames than the {len(times)} times")
                if image.shape != first.shape:
                    raise ValueError(f"frame {count} is {tuple(image.shape[-2:])}, the first {tuple(first.shape[-2:])}")
                frame = _video_frame(image).reformat(
                    format=stream.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG", interpolation=Interpolation.BICUBIC | _EXACT)
                frame.pts = round((times[count] - times[0]) / _TIME_BASE)
                frame.time_base = _TIME_BASE
                container.mux(stream.encode(frame))
                count += 1
            if count != len(times):
                raise ValueError(f"{count} frames for {len(times)} times")
            container.mux(stream.encode(None))

    try:
        _atomic_write(out, write)
    except av.error.FFmpegError:
        raise ImageError(f"{out}: the {codec} encoder or the {muxer} muxer refused the clip") from None


def _chain(first: torch.Tensor, rest: Iterator) -> Iterator[torch.Tensor]:
    yield first
    for image in rest:
        yield _even(_frame_tensor(image))
