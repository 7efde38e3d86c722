"""Flicker against style: a clip painted frame by frame versus with the temporal term.

Makes the tests' test clip (tests/videos.py: a photo panning with a textured square moving
across it, the true flow known), runs ``rvgen run`` on it with a recipe twice, with
``video.temporal_weight = 0`` (every frame painted on its own, as an image) and with the
recipe's own ``[video]`` settings, and prints for each:

- the temporal warping error of the result (the sidecar's ``clip.flicker.result``: the mean
  squared difference of each frame to the previous one warped by the input's optical flow,
  over the pixels the flow follows reliably) and the input clip's own;
- the mean Gram distance of the frames to the painting on an independent network
  (:func:`rvgen.metrics.gram_distance`, lower is closer);
- the CPU time (user + system) per frame of the run;
- the warping error the other way round ("vs the next": each frame against the next one
  warped), since a sweep is most consistent in its own direction (``video.passes``).

and the ratios default / frame-by-frame. The issue's bar: warping error at most 1/3, Gram
distance at most 15% higher.

    python benchmarks/video.py                                  # recipes/video.toml, 128 px, 12 frames
    python benchmarks/video.py --size 96 --frames 8 --set video.temporal_weight=500
    python benchmarks/video.py --seconds 2 --size 256 --strip docs/images/video-strip.jpg
                                                                # time a 2-second clip end to end
    python benchmarks/video.py --shots 2                        # one clip of 2 shots: 1 worker vs 2

With ``--shots N`` it makes one clip of ``N`` shots instead (cuts between photos, each shot
``--frames`` long) and runs it with one worker and with ``N`` (each on one torch thread), and
prints the wall time and the CPU time (user + system) of each and their ratios: the shots of
one clip shared among workers.

Run it alone: it takes minutes, on one torch thread (--threads).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from videos import make_clip, pan_scene  # noqa: E402

from rvgen import imageio, metrics  # noqa: E402
from rvgen.recipe import load_recipe  # noqa: E402
from rvgen.shipped import resolve as resolve_recipe  # noqa: E402
from rvgen.video.io import write_clip  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def strip(path: Path, clip: Path, frames: Path, count: int = 4) -> None:
    """A JPEG of ``count`` frames spread over the clip: the input above, the result below."""
    from rvgen.video.io import read_frames

    inputs = [frame for _, _, frame in read_frames(clip, None)]
    results = [imageio.load_image(f) for f in sorted(frames.glob("*.png"))]
    picks = [round(k * (len(results) - 1) / (count - 1)) for k in range(count)]
    rows = [torch.cat([images[i] for i in picks], dim=3) for images in (inputs, results)]
    imageio.save_image(torch.cat(rows, dim=2), path, "jpg", 88)


def run(recipe: str, clip: Path, out: Path, overrides: list[str], threads: int, workers: int = 1) -> dict:
    """One ``rvgen run`` of the clip: its sidecar's figures, the frames' Gram distance and the
    CPU time per frame."""
    command = [sys.executable, "-m", "rvgen", "run", recipe, "--input", str(clip), "--output", str(out),
               "--workers", str(workers), "--threads", str(threads), "--no-report", "--quiet",
               "--set", "video.keep_frames=true", *[item for o in overrides for item in ("--set", o)]]
    before, began = cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True)
    cpu, wall = cpu_seconds() - before, time.perf_counter() - began
    data = json.loads((out / (clip.stem + ".mp4.json")).read_text())
    parsed = load_recipe(resolve_recipe(recipe), overrides)
    (name, (source, long_side)), = [(n, s) for n, s in parsed.references().items() if n == "style"]
    style = imageio.load_image(source, long_side)
    frames = sorted((out / f"{clip.stem}.frames").glob("*.png"))
    gram = sum(metrics.gram_distance(imageio.load_image(f), style) for f in frames) / len(frames)
    flicker = data["clip"]["flicker"]
    return {"warping": flicker["result"], "input": flicker["input"], "gram": gram, "cpu": cpu / len(frames),
            "wall": wall, "frames": len(frames), "workers": data["clip"]["workers"],
            "next": next_error(clip, [imageio.load_image(f) for f in frames])}


def next_error(clip: Path, results: list[torch.Tensor]) -> float:
    """The warping error the other way round: each frame against the next one warped by the
    input's flow (the sidecar's looks back, at the previous one), over reliable pixels. A sweep
    holds each frame to the one it came from, so it is most consistent in its own direction."""
    from rvgen.video.flow import optical_flow, reliability, warping_error
    from rvgen.video.io import read_frames

    inputs = [frame for _, _, frame in read_frames(clip, results[0].shape[-1])]
    errors = []
    for t in range(len(results) - 1):
        flow = optical_flow(inputs[t], inputs[t + 1])
        weight = reliability(flow, optical_flow(inputs[t + 1], inputs[t]))
        errors += warping_error([results[t + 1], results[t]], [flow, flow], [weight, weight])
    return sum(errors) / len(errors)


def shots(args: argparse.Namespace, folder: Path, size: tuple[int, int], common: list[str]) -> None:
    """One clip of ``args.shots`` shots with one worker and with as many as shots."""
    photos = ["astronaut", "coffee", "chelsea", "rocket", "camera"]
    clip = folder / "shots.mp4"
    frames = []
    for k in range(args.shots):
        scene = pan_scene(args.frames, size, shift=(1, 0), square_shift=(1, 1), photo=photos[k % len(photos)])
        frames += scene.frames
    write_clip(frames, [k / args.fps for k in range(len(frames))], clip)
    figures = {n: run(args.recipe, clip, folder / f"w{n}", common + args.overrides, args.threads, n)
               for n in (1, args.shots)}
    print(f"one clip of {args.shots} shots x {args.frames} frames at {size[0]}x{size[1]} px, recipe {args.recipe}")
    print(f"{'workers':10}{'wall s':>10}{'CPU s':>10}  frames made by each worker")
    for n, r in figures.items():
        print(f"{n:<10}{r['wall']:>10.0f}{r['cpu'] * r['frames']:>10.0f}  {r['workers']}")
    one, many = figures[1], figures[args.shots]
    print(f"{'ratio':10}{many['wall'] / one['wall']:>10.2f}{many['cpu'] / one['cpu']:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="video", help="a recipe file or shipped name (default: video)")
    parser.add_argument("--size", type=int, default=128, help="the clip's long side in px (default 128)")
    parser.add_argument("--frames", type=int, default=12, help="frames of the clip (default 12)")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--seconds", type=float, help="only time the default settings on a clip this long")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strip", type=Path, help="with --seconds: write input and result frames as this JPEG")
    parser.add_argument("--shots", type=int, help="time one clip of this many shots on 1 worker and on as many")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for the default run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = (args.size, args.size * 3 // 4)
    common = [f"output.size={args.size}"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.shots:
            return shots(args, folder, size, common)
        if args.seconds:
            frames = round(args.seconds * args.fps)
            clip = make_clip(folder / "clip.mp4", frames=frames, size=size, fps=args.fps, shift=(1, 0),
                             square_shift=(1, 1), audio=True).path
            r = run(args.recipe, clip, folder / "out", common + args.overrides, args.threads)
            if args.strip:
                strip(args.strip, clip, folder / "out" / "clip.frames")
            print(f"{args.seconds:g} s clip, {frames} frames at {size[0]}x{size[1]} px: {r['wall']:.0f} s end to end, "
                  f"{r['cpu']:.1f} s CPU a frame; warping error {r['warping']:.2e} (input {r['input']:.2e})")
            return
        clip = make_clip(folder / "clip.mp4", frames=args.frames, size=size, fps=args.fps).path
        alone = run(args.recipe, clip, folder / "alone", common + ["video.temporal_weight=0"], args.threads)
        default = run(args.recipe, clip, folder / "default", common + args.overrides, args.threads)
    print(f"{args.frames} frames at {size[0]}x{size[1]} px, recipe {args.recipe} {' '.join(args.overrides)}")
    print(f"{'':16}{'warping error':>15}{'Gram distance':>15}{'CPU s/frame':>13}{'vs the next':>13}")
    for label, r in (("frame by frame", alone), ("default", default)):
        print(f"{label:16}{r['warping']:>15.3e}{r['gram']:>15.4f}{r['cpu']:>13.1f}{r['next']:>13.3e}")
    print(f"{'input clip':16}{default['input']:>15.3e}")
    print(f"{'ratio':16}{default['warping'] / alone['warping']:>15.3f}{default['gram'] / alone['gram']:>15.3f}"
          f"{default['cpu'] / alone['cpu']:>13.2f}{default['next'] / alone['next']:>13.3f}")


if __name__ == "__main__":
    main()
