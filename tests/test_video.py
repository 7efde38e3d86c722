"""Clips through ``rvgen run``: jobs and names, the [video] keys, frames kept and resumed,
shots, bad clips, and the flicker the temporal term takes away (the issue's Done-when)."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import av
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_RECONSTRUCT, write_recipe, write_sample
from PIL import Image
from videos import make_clip, make_cut_clip, write_frameless_clip, write_tone

from rvgen import imageio, metrics
from rvgen.batch.clip import ClipMaker, Work, shares, work_folder
from rvgen.batch.events import ImageAbandoned, ImageDone, ImageFailed, ImageStarted, PartDone
from rvgen.batch.jobs import Job, Part, plan_jobs, split_clips
from rvgen.batch.summary import Summary, Tracker
from rvgen.cli import cli
from rvgen.errors import RecipeError
from rvgen.recipe import load_recipe, parse_recipe
from rvgen.video.io import probe, read_frames, write_clip

ROOT = Path(__file__).resolve().parents[1]

CLIP_RECONSTRUCT = TINY_RECONSTRUCT + '''
[video]
iterations = 2
'''

STYLE = '''
[task]
name = "style"
style = "{style}"
style_weight = 30.0
tv_weight = 0.5

[optimizer]
scales = 2
min_size = 32
scale_iterations = 30
iterations = 15
upsample_detail = true

[output]
size = 64

[video]
iterations = 10
keep_frames = true
'''


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *map(str, args), "--no-report"])
    return result.exit_code, result.output


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


# -- jobs and recipe keys (quick) ------------------------------------------------------------


def test_a_clip_is_one_job_named_like_an_image_with_the_codec_s_suffix(tmp_path):
    inputs = tmp_path / "in"
    for name in ("clips/a.mov", "clips/b.mov", "clips/b.mp4", "c.MKV"):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        (inputs / name).write_bytes(b"")
    write_sample(inputs / "clips" / "a.png", "chelsea", 16)
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(inputs / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (8, 8)).save(inputs / "still.gif")
    out = tmp_path / "out"

    def names(**options):
        return {job.rel: (job.output.relative_to(out).as_posix(), job.clip)
                for job in plan_jobs(str(inputs), out, **options).jobs}

    assert names() == {"anim.gif": ("anim.png", False), "c.MKV": ("c.mp4", True),
                       "clips/a.mov": ("clips/a.mp4", True), "clips/a.png": ("clips/a.png", False),
                       "clips/b.mov": ("clips/b.mov.mp4", True), "clips/b.mp4": ("clips/b.mp4.mp4", True),
                       "still.gif": ("still.png", False)}
    with_table = names(clip_format="webm", gifs=True)
    assert with_table["anim.gif"] == ("anim.webm", True) and with_table["still.gif"] == ("still.png", False)
    assert with_table["clips/a.mov"] == ("clips/a.webm", True) and with_table["clips/b.mov"][0] == "clips/b.mov.webm"


def test_video_keys_absent_or_at_their_defaults_change_no_digest():
    task = {"name": "reconstruct", "layer": "relu1_1"}
    plain = parse_recipe({"task": task}).digest()
    assert parse_recipe({"task": task, "video": {}}).digest() == plain
    defaults = {"temporal_weight": 200.0, "long_term": [1], "passes": 1, "iterations": 10, "codec": "libx264",
                "crf": 18, "keep_frames": True}
    assert parse_recipe({"task": task, "video": defaults}).digest() == plain
    assert parse_recipe({"task": task, "video": {"temporal_weight": 5.0}}).digest() != plain
    assert parse_recipe({"task": task, "video": {"long_term": [1, 2]}}).digest() != plain


@pytest.mark.parametrize(("values", "message"), [
    ({"frames": "5:2"}, "video.frames: expected START:STOP"),
    ({"passes": 0}, "video.passes: must be at least 1"),
    ({"passes": 2, "temporal_weight": 0}, "video.passes: more than one pass ties frames to their neighbours"),
    ({"codec": "h264"}, "video.codec: unknown value 'h264'"),
    ({"long_term": [0]}, "video.long_term: each value must be from 1"),
    ({"iterationz": 3}, "video.iterationz: unknown key (did you mean 'iterations'?)"),
])
def test_bad_video_keys_are_one_line_errors(values, message):
    with pytest.raises(RecipeError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_recipe({"task": {"name": "reconstruct"}, "video": values})


def test_the_anchor_holds_each_pixel_to_the_nearest_reliable_earlier_frame():
    results = {0: torch.full((1, 3, 2, 2), 0.2), 1: torch.full((1, 3, 2, 2), 0.6)}
    still = torch.zeros(2, 2, 2)
    near = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    far = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    guide = ClipMaker.anchor([(results[1], still, near), (results[0], still, far)])  # nearest first
    assert guide[0, 3].tolist() == [[1.0, 1.0], [1.0, 0.0]]  # the weight: seen by one of them, or not at all
    assert torch.allclose(guide[0, 0], torch.tensor([[0.6, 0.2], [0.6, 0.0]]))  # offset 1 where it sees


def test_shots_are_dealt_longest_first_to_the_part_with_fewest_frames():
    shots = [(0, 40), (40, 50), (50, 80), (80, 85)]
    assert shares(shots, 1) == [shots]
    assert shares(shots, 2) == [[(0, 40), (80, 85)], [(40, 50), (50, 80)]]  # 45 and 40 frames
    assert shares(shots, 3) == [[(0, 40)], [(50, 80)], [(40, 50), (80, 85)]]
    assert shares([(0, 9)], 2) == [[(0, 9)], []]  # one shot: the other part has nothing to do


def test_a_clip_with_workers_to_spare_goes_out_in_parts_that_count_as_one_job():
    out = Path("out")
    clip, photo = Job("a.mov", "a.mov", out / "a.mp4", clip=True), Job("b.png", "b.png", out / "b.png")
    parts = split_clips([clip, photo], 3, "run1")
    assert [(j.rel, j.part and (j.part.index, j.part.count)) for j in parts] == [
        ("a.mov", (0, 3)), ("a.mov", (1, 3)), ("a.mov", (2, 3)), ("b.png", None)]
    assert [j.part.count for j in split_clips([clip, replace(clip, rel="c.mov")], 3, "r")] == [1, 1]  # one each

    class Record:
        def __init__(self):
            self.events = []

        def handle(self, event):
            self.events.append(event)

    record = Record()
    summary = Summary(total=2)
    tracker = Tracker(summary, record)
    for event in (ImageStarted("cpu#1", parts[0]), ImageStarted("cpu#2", parts[1]), ImageStarted("cpu#3", parts[2]),
                  PartDone("cpu#2", parts[1], 4), PartDone("cpu#3", parts[2]), ImageDone("cpu#1", parts[0], 0.1, 9, 1.0),
                  ImageStarted("cpu#2", photo), ImageFailed("cpu#2", photo, "broken")):
        tracker(event)
    assert summary.done == [clip] and summary.failed == [(photo, "broken")] and summary.unfinished == 0
    assert all(getattr(e, "job", clip).part is None for e in record.events)  # reporters see whole jobs
    summary = Summary(total=1)
    tracker = Tracker(summary, record)
    for event in (ImageFailed("cpu#1", parts[0], "no frames"), ImageFailed("cpu#2", parts[1], "no frames"),
                  ImageAbandoned("cpu#3", parts[2])):
        tracker(event)
    assert summary.failed == [(clip, "no frames")] and not summary.abandoned and summary.exit_code == 1
    assert isinstance(record.events[-1], PartDone)  # a part ending after its clip ended says only that


def test_the_parts_of_a_run_share_the_frames_folder_and_the_last_to_end_writes(tmp_path):
    job = Job("a.mov", "a.mov", tmp_path / "a.mp4", clip=True)
    key = {"recipe": "r1"}
    parts = [Work(job, key, Part(k, 3, "run1")) for k in range(3)]
    written = []

    def write():
        written.append(1)
        return "result"

    with parts[0].lock():
        assert parts[0].open()
    (parts[0].folder / "000001.png").write_bytes(b"frame")
    with parts[1].lock():
        assert parts[1].open()  # the same run: the first part's frame stays
    assert (parts[0].folder / "000001.png").exists()
    with parts[1].lock():
        assert parts[1].end(False, write) is None  # another part's frames are missing
    with parts[0].lock():
        assert parts[0].end(True, write) == "result" and written == [1]
    assert parts[0].folder.exists()  # the third part has not ended yet
    with parts[2].lock():
        assert not parts[2].open()  # taken late: the video is written, nothing to do
    assert not parts[0].folder.exists() and written == [1]
    later = Work(job, key, Part(0, 1, "run2"))
    stale = later.folder / ".rvgen-000002.png.0123abcd.tmp"
    with later.lock():
        (later.folder / "000001.png").write_bytes(b"frame")
        stale.write_bytes(b"half")
        later.save({"key": key, "run": "run1", "ended": [0], "written": False})  # a killed run's
        assert later.open()
    assert (later.folder / "000001.png").exists() and not stale.exists()  # kept frames, no leftovers
    with later.lock():
        assert Work(job, {"recipe": "r2"}, Part(0, 1, "run3")).open()  # another recipe: started afresh
    assert not (later.folder / "000001.png").exists()


# -- through rvgen run -------------------------------------------------------------------------


def test_a_clip_keeps_its_timestamps_and_audio_and_bad_clips_fail_alone_with_one_line(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    clip = make_clip(inputs / "vfr.mov", frames=5, size=(48, 36), vfr=True, audio=True)
    write_sample(inputs / "photo.png", "coffee", 40)
    good = clip.path.read_bytes()
    (inputs / "corrupt.mp4").write_bytes(b"\x00\x01not a clip" * 100)
    (inputs / "truncated.mp4").write_bytes(good[: len(good) * 2 // 3])
    (inputs / "codec.mov").write_bytes(good.replace(b"avc1", b"zzzz"))
    with av.open(str(inputs / "sound.mkv"), "w") as container:
        write_tone(container, "flac", 0.3)
    write_frameless_clip(inputs / "none.mkv", 0.3)
    recipe = write_recipe(tmp_path / "recipe.toml", CLIP_RECONSTRUCT)
    code, text = run(recipe, "-i", inputs, "-o", out)
    assert code == 1 and "2 done, 5 failed" in text, text
    failed = {line.split("failed: ", 1)[1].split(":", 1)[0]: line for line in text.splitlines() if " failed: " in line}
    assert sorted(failed) == ["codec.mov", "corrupt.mp4", "none.mkv", "sound.mkv", "truncated.mp4"], text
    assert "Traceback" not in text and "codec" in failed["codec.mov"] and "no video stream" in failed["sound.mkv"]
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.name.startswith((".", "index")))
    assert made == ["photo.png", "photo.png.json", "vfr.mp4", "vfr.mp4.json"]
    written = probe(out / "vfr.mp4")
    assert written.frames == 5 and written.has_audio
    assert [round(t, 3) for t in written.times] == clip.times  # variable frame rate kept
    assert (written.width, written.height) == (32, 24)
    data = sidecar(out / "vfr.mp4")
    assert data["clip"]["frames"] == 5 and data["clip"]["made"] == 5 and data["clip"]["shots"] == [0]
    assert data["clip"]["flicker"]["input"] > 0 and len(data["clip"]["flicker"]["frames"]) == 4
    assert not work_folder(plan_jobs(str(inputs / "vfr.mov"), out).jobs[0]).exists()
    assert CliRunner().invoke(cli, ["report", str(out)]).exit_code == 0
    page = (out / "index.html").read_text()
    assert '<video src="vfr.mp4"' in page and page.count('class="curve flicker"') == 1  # plays, flicker plotted
    assert "flicker</dt><dd>" in page and "5 in 1 shot(s)" in page
    code, text = run(recipe, "-i", inputs, "-o", out)
    assert "0 done, 5 failed, 2 already done" in text, text
    code, text = run(recipe, "-i", inputs / "vfr.mov", "-o", out, "--force")  # made again, every frame
    assert code == 0 and "1 done" in text and sidecar(out / "vfr.mp4")["clip"]["made"] == 5, text



def test_more_passes_sweep_every_frame_again_backward_then_forward(tmp_path):
    inputs = tmp_path / "in"
    make_clip(inputs / "pan.mp4", frames=4, size=(48, 36))
    recipe = write_recipe(tmp_path / "recipe.toml", CLIP_RECONSTRUCT.replace("size = 32", "size = 48")
                          + "keep_frames = true\n")
    made = {}
    for passes in (1, 3):
        out = tmp_path / f"passes{passes}"
        code, text = run(recipe, "-i", inputs, "-o", out, "--set", f"video.passes={passes}")
        assert code == 0, text
        data = sidecar(out / "pan.mp4")
        made[passes] = (data, [imageio.load_image(p) for p in sorted((out / "pan.frames").glob("*.png"))])
        assert data["clip"]["passes"] == passes and data["clip"]["made"] == 4
        assert not (out / ".rvgen-pan.mp4.frames").exists()
    (one, first), (three, last) = made[1], made[3]
    assert 4 < three["iterations"] - one["iterations"] <= 2 * 4 * 2  # two sweeps more, at most 2 iterations a frame
    assert three["recipe"]["digest"] != one["recipe"]["digest"]
    assert len(last) == 4 and all(not torch.equal(a, b) for a, b in zip(first, last))
    assert CliRunner().invoke(cli, ["report", str(tmp_path / "passes3")]).exit_code == 0
    assert "4 in 1 shot(s), 3 passes" in (tmp_path / "passes3" / "index.html").read_text()

@pytest.mark.slow
def test_a_clips_mask_keeps_its_black_part_as_the_frames_in_every_frame(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    make_clip(inputs / "pan.mov", frames=3, size=(48, 32))
    mask = torch.zeros(1, 3, 32, 48)
    mask[..., 24:] = 1  # the right half is painted, the left half kept: one picture for the whole clip
    imageio.to_pil(mask).save(tmp_path / "pan.png")
    recipe = write_recipe(tmp_path / "recipe.toml", STYLE.format(style="skimage:brick").replace(
        "[optimizer]", f'mask = "{tmp_path.as_posix()}/{{stem}}.png"\n[optimizer]'))
    code, text = run(recipe, "-i", inputs, "-o", out, "--set", "output.size=48", "--set", "optimizer.scales=1",
                     "--set", "optimizer.iterations=4", "--set", "video.iterations=2")
    assert code == 0, text
    frames = [imageio.load_image(p) for p in sorted((out / "pan.frames").glob("*.png"))]
    photos = [frame for _, _, frame in read_frames(inputs / "pan.mov", 48)]
    assert len(frames) == len(photos) == 3
    for made, photo in zip(frames, photos):
        kept = (made - photo)[..., :20].abs().max().item()
        painted = (made - photo)[..., 28:].abs().mean().item()
        assert kept <= 1 / 255 + 1e-6 and painted > 0.02, (kept, painted)
    assert sidecar(out / "pan.mp4")["masks"]


@pytest.mark.slow
def test_a_huge_clip_is_made_at_the_output_size(tmp_path):
    big = torch.linspace(0, 1, 3840).expand(1, 3, 2160, 3840)
    write_clip([big, big.flip(-1), big], [0.0, 0.1, 0.2], tmp_path / "in" / "huge.mp4")  # 4K
    recipe = write_recipe(tmp_path / "recipe.toml", CLIP_RECONSTRUCT)
    code, text = run(recipe, "-i", tmp_path / "in", "-o", tmp_path / "out")
    assert code == 0, text
    info = probe(tmp_path / "out" / "huge.mp4")
    assert (info.width, info.height, info.frames) == (32, 18, 3)


# -- slow: a clip killed and resumed, shots, and the Done-when figure ------------------------------


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), RVGEN_LOAD_PLUGINS="", PYTHONWARNINGS="ignore")
    e.pop("COLUMNS", None)
    return e


@pytest.mark.slow
def test_kill_9_mid_clip_then_resume_without_redoing_finished_frames(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    make_clip(inputs / "pan.mp4", frames=8, size=(64, 48))
    recipe = write_recipe(tmp_path / "recipe.toml", TINY_RECONSTRUCT.replace("iterations = 2", "iterations = 60")
                          .replace("size = 32", "size = 64") + "\n[video]\niterations = 40\nlong_term = [1, 2]\nkeep_frames = true\n")
    command = [sys.executable, "-m", "rvgen", "run", str(recipe), "-i", str(inputs), "-o", str(out), "--no-report"]
    work = out / ".rvgen-pan.mp4.frames"
    proc = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(work.glob("*.png.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    kept = {p.name: p.read_bytes() for p in work.glob("*.png") if (work / (p.name + ".json")).exists()}
    assert 3 <= len(kept) < 8 and not (out / "pan.mp4").exists()
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 done" in done.stdout, done.stdout + done.stderr
    data = sidecar(out / "pan.mp4")
    assert data["clip"]["made"] == 8 - len(kept)  # the rest were not made again
    assert all((out / "pan.frames" / name).read_bytes() == content for name, content in kept.items())
    assert probe(out / "pan.mp4").frames == 8 and not work.exists()


@pytest.mark.slow
def test_kill_9_in_the_second_pass_then_resume_makes_the_clip_an_unbroken_run_makes(tmp_path):
    inputs = tmp_path / "in"
    make_clip(inputs / "pan.mp4", frames=6, size=(64, 48))
    recipe = write_recipe(tmp_path / "recipe.toml", TINY_RECONSTRUCT.replace("iterations = 2", "iterations = 20")
                          .replace("size = 32", "size = 64")
                          + "\n[video]\niterations = 15\npasses = 3\nkeep_frames = true\n")

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "rvgen", "run", str(recipe), "-i", str(inputs), "-o", str(out), "--no-report"]

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert subprocess.run(command(whole), env=env(), capture_output=True, timeout=300).returncode == 0
    work = broken / ".rvgen-pan.mp4.frames"
    proc = subprocess.Popen(command(broken), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((work / "pass2").glob("*.png.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    second = len(list((work / "pass2").glob("*.png.json")))
    assert len(list((work / "pass1").glob("*.png.json"))) == 6 and 3 <= second and not list(work.glob("*.png"))
    done = subprocess.run(command(broken), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 done" in done.stdout, done.stdout + done.stderr
    assert sidecar(broken / "pan.mp4")["clip"]["passes"] == 3 and sidecar(broken / "pan.mp4")["clip"]["made"] == 6
    for a, b in zip(sorted((whole / "pan.frames").glob("*.png")), sorted((broken / "pan.frames").glob("*.png")),
                    strict=True):
        assert torch.equal(imageio.load_image(a), imageio.load_image(b)), a.name


@pytest.mark.slow
def test_two_shots_on_two_workers_each_painted_as_if_alone(tmp_path):
    """A clip's shots are independent: with two workers and one clip, each worker paints one
    shot, the last to end writes the video, and each shot's frames are those of that shot
    made alone on one worker."""
    inputs, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "log.jsonl"
    make_cut_clip(inputs / "cut.mp4", frames=6, size=(64, 48), cut=3)
    recipe = write_recipe(tmp_path / "recipe.toml", CLIP_RECONSTRUCT.replace("size = 32", "size = 48")
                          + "keep_frames = true\n")
    code, text = run(recipe, "-i", inputs, "-o", out, "--workers", "2", "--log-file", log)
    assert code == 0 and "1 done" in text, text
    events = [json.loads(line) for line in log.read_text().splitlines()]
    ended = {e["event"]: e["worker"] for e in events if e["event"] in ("image_done", "part_done")}
    assert set(ended) == {"image_done", "part_done"} and len(set(ended.values())) == 2, events
    clip = sidecar(out / "cut.mp4")["clip"]
    assert clip["shots"] == [0, 3] and sorted(clip["workers"].values()) == [3, 3] and clip["made"] == 6
    assert probe(out / "cut.mp4").frames == 6 and not work_folder(plan_jobs(str(inputs), out).jobs[0]).exists()
    assert CliRunner().invoke(cli, ["report", str(out)]).exit_code == 0
    assert "made by</dt><dd>cpu#1 (3), cpu#2 (3)" in (out / "index.html").read_text()
    whole = sorted((out / "cut.frames").glob("*.png"))
    for shot, frames in ((0, "0:3"), (1, "3:")):
        alone = tmp_path / f"alone{shot}"
        assert run(recipe, "-i", inputs, "-o", alone, "--set", f"video.frames={frames}")[0] == 0
        made = sorted((alone / "cut.frames").glob("*.png"))
        assert len(made) == 3
        for a, b in zip(whole[3 * shot:], made):
            assert torch.equal(imageio.load_image(a), imageio.load_image(b))


@pytest.mark.slow
def test_done_when_the_temporal_term_cuts_flicker_to_a_third_at_nearly_the_same_style(tmp_path):
    inputs = tmp_path / "in"
    make_clip(inputs / "pan.mp4", frames=6, size=(64, 48))
    style = write_sample(tmp_path / "style.png", "hubble_deep_field", 64)
    recipe = write_recipe(tmp_path / "style.toml", STYLE.format(style=style))
    figures = {}
    for label, weight in (("alone", 0), ("default", None)):
        extra = ["--set", f"video.temporal_weight={weight}"] if weight is not None else []
        code, text = run(recipe, "-i", inputs, "-o", tmp_path / label, *extra)
        assert code == 0, text
        reference = imageio.load_image(style, 64)
        frames = sorted((tmp_path / label / "pan.frames").glob("*.png"))
        gram = sum(metrics.gram_distance(imageio.load_image(f), reference) for f in frames) / len(frames)
        figures[label] = (sidecar(tmp_path / label / "pan.mp4")["clip"]["flicker"]["result"], gram)
    (alone_error, alone_gram), (error, gram) = figures["alone"], figures["default"]
    assert error <= alone_error / 3, figures
    assert gram <= alone_gram * 1.15, figures
    assert load_recipe(recipe).video["temporal_weight"] > 0
