"""rvgen.video.io: clips read upright at their own times, written back with their timing and
audio, and damaged clips refused with one line."""

import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from videos import make_clip, pan_scene, vfr_times, write_frameless_clip, write_scene, write_tone

from rvgen.errors import ImageError
from rvgen.imageio import is_temporary, save_image
from rvgen.video.io import VIDEO_SUFFIXES, Frames, is_video_file, probe, read_frames, write_clip


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / (a - b).pow(2).mean().item())


def streams(path: Path) -> dict[str, str]:
    with av.open(str(path)) as container:
        return {s.type: s.codec_context.name for s in container.streams}


def test_video_files_by_suffix():
    assert {".mp4", ".mov", ".mkv", ".webm"} <= VIDEO_SUFFIXES
    assert is_video_file(Path("clips/A.MOV")) and not is_video_file(Path("cat.gif"))


def test_a_clip_decodes_frame_by_frame_at_its_rate(tmp_path):
    clip = make_clip(tmp_path / "pan.mp4", frames=8, fps=10)
    info = probe(clip.path)
    assert (info.width, info.height, info.frames, info.fps) == (64, 48, 8, 10)
    assert info.times == pytest.approx(clip.times) and info.rotation == 0 and not info.has_audio
    frames = list(read_frames(clip.path, None))
    assert [i for i, _, _ in frames] == list(range(8))
    assert [t for _, t, _ in frames] == pytest.approx(clip.times)
    for index, _, frame in frames:
        assert frame.shape == (1, 3, 48, 64) and frame.dtype == torch.float32
        assert psnr(frame, clip.scene.frames[index]) > 30


def test_variable_frame_rate_and_rotation_are_kept_upright(tmp_path):
    clip = make_clip(tmp_path / "phone.mov", frames=7, vfr=True, rotation=90)
    info = probe(clip.path)
    assert info.rotation == 90 and (info.width, info.height) == (64, 48)
    assert info.times == pytest.approx(vfr_times(7), abs=1e-3)  # within the file's 1 ms tick
    for index, _, frame in read_frames(clip.path, None):
        assert frame.shape == (1, 3, 48, 64)  # stored 48 wide, 64 high: turned upright
        assert psnr(frame, clip.scene.frames[index]) > 30


def test_size_bounds_the_long_side_and_never_enlarges(tmp_path):
    clip = make_clip(tmp_path / "pan.mkv", frames=2, rotation=270)
    assert next(read_frames(clip.path, 32))[2].shape == (1, 3, 24, 32)
    assert next(read_frames(clip.path, 1000))[2].shape == (1, 3, 48, 64)


def test_fps_keeps_the_frame_on_screen_at_each_tick_and_frames_a_range(tmp_path):
    clip = make_clip(tmp_path / "vfr.mp4", frames=7, vfr=True)  # frames at 0, .1, .15, .3, .4, .45, .6 s
    info = probe(clip.path, fps=20)
    assert info.fps == 20 and info.times == pytest.approx([k / 20 for k in range(14)])
    shown = [index for index, _, _ in read_frames(clip.path, None, fps=20)]
    assert len(shown) == 14
    source = {round(t * 20): i for i, t in enumerate(clip.times)}
    expected = [source.get(k) for k in range(14)]
    for k in range(14):  # a tick between two frames shows the earlier one
        expected[k] = expected[k] if expected[k] is not None else expected[k - 1]
    frames = list(read_frames(clip.path, None, fps=20, frames=range(2, 6)))
    assert [i for i, _, _ in frames] == [2, 3, 4, 5]
    assert [t for _, t, _ in frames] == pytest.approx([0.1, 0.15, 0.2, 0.25])
    for (index, _, frame) in frames:
        assert psnr(frame, clip.scene.frames[expected[index]]) > 30
    assert probe(clip.path, frames=range(5, 100)).frames == 2


def test_written_clip_keeps_times_audio_and_is_upright_without_a_tag(tmp_path):
    clip = make_clip(tmp_path / "in.mov", frames=7, vfr=True, rotation=90, audio=True)
    assert probe(clip.path).has_audio
    frames = list(read_frames(clip.path, None))
    out = tmp_path / "out" / "clip.mp4"
    write_clip((f for _, _, f in frames), [t for _, t, _ in frames], out, audio_from=clip.path)
    info = probe(out)
    assert (info.width, info.height, info.frames, info.rotation, info.codec) == (64, 48, 7, 0, "h264")
    assert info.times == pytest.approx(vfr_times(7), abs=1 / 90000)
    assert streams(out) == {"video": "h264", "audio": "aac"}  # AAC copied as it is
    for (_, _, a), (_, _, b) in zip(frames, read_frames(out, None)):
        assert psnr(a, b) > 30  # crf 18 on 64 x 48 px of fine detail: about 34 dB
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4"]


def test_audio_the_container_cannot_hold_is_re_encoded_and_a_part_keeps_its_span(tmp_path):
    clip = make_clip(tmp_path / "in.mov", frames=8, audio="pcm_s16le")
    part = list(read_frames(clip.path, None, frames=range(3, 6)))
    out = tmp_path / "part.mp4"
    write_clip([f for _, _, f in part], [t for _, t, _ in part], out, audio_from=clip.path)
    assert streams(out) == {"video": "h264", "audio": "aac"}
    assert probe(out).times == pytest.approx([0, 0.1, 0.2])
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        seconds = sum(f.samples for f in container.decode(audio)) / audio.sample_rate
    assert seconds == pytest.approx(0.3, abs=0.05)  # 0.3 to 0.6 s of the input's 0.8 s


def test_odd_sizes_are_padded_to_even_by_repeating_the_edge(tmp_path):
    frame = pan_scene(1).frames[0][..., :33, :47].contiguous()
    out = tmp_path / "odd.mp4"
    write_clip([frame, frame], [0, 0.5], out, crf=0)
    info = probe(out)
    assert (info.width, info.height, info.frames) == (48, 34, 2)
    _, _, back = next(read_frames(out, None))
    assert psnr(back[..., :33, :47], frame) > 30
    assert (back[..., 33, :47] - back[..., 32, :47]).abs().mean() < 0.02  # the last row, repeated


def test_png_paths_are_frames_too(tmp_path):
    scene = pan_scene(3)
    paths = []
    for k, frame in enumerate(scene.frames):
        paths.append(tmp_path / f"{k:06d}.png")
        save_image(frame, paths[-1])
    write_clip(paths, [0, 0.1, 0.2], tmp_path / "out.mkv")
    back = list(read_frames(tmp_path / "out.mkv", None))
    assert len(back) == 3 and psnr(back[2][2], scene.frames[2]) > 30


def test_a_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "clip.mp4"
    with pytest.raises(ValueError):
        write_clip([torch.rand(1, 3, 16, 16), torch.rand(1, 3, 18, 16)], [0, 0.1], out)
    with pytest.raises(ValueError):
        write_clip([torch.rand(1, 3, 16, 16)] * 3, [0, 0.1], out)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ImageError, match="suffix"):
        write_clip([torch.rand(1, 3, 16, 16)], [0], tmp_path / "clip.gif")


def one_line_error(path: Path) -> str:
    with pytest.raises(ImageError) as caught:
        probe(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)) and "Errno" not in message
    return message


def test_bad_clips_are_refused_with_one_line(tmp_path):
    good = make_clip(tmp_path / "good.mp4", frames=12).path.read_bytes()
    good_mkv = make_clip(tmp_path / "good.mkv", frames=12).path.read_bytes()
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x01not a clip" * 100)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) * 2 // 3])  # the index (at the end) lost
    (tmp_path / "cut.mkv").write_bytes(good_mkv[: len(good_mkv) * 2 // 3])  # the last frames lost
    noise = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    start = good.find(b"mdat") + 100
    (tmp_path / "damaged.mp4").write_bytes(good[:start] + noise + good[start + 2000:])
    (tmp_path / "codec.mp4").write_bytes(good.replace(b"avc1", b"zzzz"))
    with av.open(str(tmp_path / "sound.m4a"), "w") as container:
        write_tone(container, "aac", 0.5)
    write_frameless_clip(tmp_path / "none.mkv", 0.5)
    assert "cannot read video" in one_line_error(tmp_path / "corrupt.mp4")
    assert "cannot read video" in one_line_error(tmp_path / "empty.mp4")
    assert "cannot read video" in one_line_error(tmp_path / "cut.mp4")
    assert "truncated" in one_line_error(tmp_path / "cut.mkv")
    assert "cannot read video" in one_line_error(tmp_path / "damaged.mp4")
    assert "codec" in one_line_error(tmp_path / "codec.mp4")
    assert one_line_error(tmp_path / "sound.m4a").endswith("no video stream")
    assert one_line_error(tmp_path / "none.mkv").endswith("no video frames")
    assert one_line_error(tmp_path / "missing.mp4").endswith("file not found")
    with pytest.raises(ImageError, match="frames 20-29"):
        probe(tmp_path / "good.mp4", frames=range(20, 30))


def test_reading_a_truncated_clip_stops_with_the_error(tmp_path):
    good = make_clip(tmp_path / "good.mkv", frames=12).path.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(ImageError, match="truncated"):
        for _ in read_frames(tmp_path / "cut.mkv", None):
            pass


def test_other_codecs_and_containers(tmp_path):
    scene = pan_scene(3)
    write_clip(scene.frames, [0, 0.1, 0.2], tmp_path / "a.webm", codec="libvpx-vp9", crf=20)
    assert streams(tmp_path / "a.webm") == {"video": "vp9"}
    assert probe(tmp_path / "a.webm").frames == 3
    write_scene(tmp_path / "b.mkv", scene, [0, 0.1, 0.2], codec="mpeg4")
    assert probe(tmp_path / "b.mkv").codec == "mpeg4"
    assert not any(is_temporary(p.name) for p in tmp_path.iterdir())


def test_decoded_frames_are_held_as_their_levels_and_handed_back_bit_for_bit(tmp_path):
    clip = make_clip(tmp_path / "pan.mp4", frames=3, size=(48, 36))
    decoded = [frame for _, _, frame in read_frames(clip.path, None)]
    deep = torch.randint(0, 65536, (1, 3, 36, 48)).float().div_(65535.0)  # a 10-bit or 16-bit source's levels
    other = torch.rand(1, 3, 36, 48)
    frames = Frames([*decoded, deep, other])
    assert len(frames) == 5 and all(torch.equal(a, b) for a, b in zip(frames, [*decoded, deep, other]))
    pixels = 3 * 36 * 48
    assert frames.nbytes == 3 * pixels + 2 * pixels + 4 * pixels  # 8-bit, 16-bit, float

