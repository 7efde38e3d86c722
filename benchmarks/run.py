"""Speed of rvgen against a tutorial-style baseline and the backbone's own floor, in one run.

For each case it measures, on the same machine in the same run:

- the **floor**: the bare backbone forward + backward (gradient of the image only) at the
  same size, batch and precision: what one iteration cannot go below;
- the **baseline**, written the way the common PyTorch tutorial does it: one image at a
  time, single scale, float32, ``torch.optim.LBFGS`` with its defaults (no line search)
  from the content image, the loop counting closure calls up to the iteration count, the
  Gram matrices with ``torch.mm`` and ``mse_loss``; the same random VGG-19, layers, loss
  definitions, weights and iteration count as rvgen;
- **rvgen** (``Synthesizer.run_batch``), single scale and with the pyramid.

It prints seconds per image, per-iteration time over the floor, the ratio to the
baseline's time, the achieved TFLOP/s of the backbone (from PyTorch's FLOP counter), and
for the pyramid the time until it reaches the baseline's final loss. Losses are comparable
because all runs minimise the same objective (the baseline's final image is scored with
rvgen's objective).

    python benchmarks/run.py --quick        # a few minutes on 2 CPU cores: sizes halved, 4 images, fewer iterations
    python benchmarks/run.py                # the issue's cases: 256/512 px, 64 images, 300 iterations
    python benchmarks/run.py --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the rvgen of this checkout

from rvgen import imageio  # noqa: E402
from rvgen.engine.optimize import evaluator  # noqa: E402
from rvgen.engine.synth import Synthesizer  # noqa: E402
from rvgen.recipe import parse_recipe  # noqa: E402

STYLE = "skimage:hubble_deep_field"
CONTENTS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "immunohistochemistry", "coins"]  # all shipped with scikit-image (no download)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_synth(task: str, size: int, iterations: int, device: torch.device, precision: str, **optimizer) -> Synthesizer:
    task_table = {"name": "style", "style": STYLE} if task == "style" else {"name": "texture"}
    recipe = parse_recipe({
        "task": task_table,
        "optimizer": {"iterations": iterations, "precision": precision, **optimizer},
        "output": {"size": size},
    })
    synth = recipe.build(device)
    synth.set_references({name: imageio.load_image(src, side) for name, (src, side) in recipe.references().items()})
    return synth


def square(name: str, size: int) -> torch.Tensor:
    """A sample photo cropped to a square of ``size`` px, so every case has one shape."""
    image = imageio.load_image(f"skimage:{name}", size * 2)
    h, w = image.shape[-2:]
    side = min(h, w)
    image = image[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# --- the floor ---------------------------------------------------------------------------

def floor_step(synth: Synthesizer, batch: torch.Tensor):
    """One backbone forward + backward of ``batch`` to the deepest layer the recipe uses."""
    objective = synth.objective
    backbone = objective.backbone
    deepest = max(objective.layers, key=lambda name: backbone.names.index(name) if name in backbone.names else -1)

    def step():
        x = batch.clone().requires_grad_(True)
        feats = objective.features(x, [deepest])
        feats[deepest].float().sum().backward()
        return x.grad

    return step


def interleaved_overhead(synth: Synthesizer, batch: torch.Tensor, repeats: int) -> float:
    """Median ratio of one rvgen evaluation (objective, gradient, clamp) to the floor, the two
    timed alternately so that load from other programs falls on both alike."""
    evaluate = evaluator(synth.objective, batch.shape)
    flat = batch.reshape(batch.shape[0], -1)
    step = floor_step(synth, batch)
    ratios = []
    for _ in range(repeats):
        sync(batch.device)
        t0 = time.perf_counter()
        step()
        sync(batch.device)
        t1 = time.perf_counter()
        evaluate(flat, None)
        sync(batch.device)
        ratios.append((time.perf_counter() - t1) / (t1 - t0))
    return statistics.median(ratios)


def floor(synth: Synthesizer, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of one backbone forward + backward of ``batch``, and its FLOPs."""
    step = floor_step(synth, batch)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()
    times = []
    for _ in range(repeats):
        sync(batch.device)
        start = time.perf_counter()
        step()
        sync(batch.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), flops


# --- the tutorial-style baseline -----------------------------------------------------------

def baseline(synth: Synthesizer, content: torch.Tensor, iterations: int) -> tuple[float, float]:
    """Seconds and final loss (scored by rvgen's objective) of the tutorial's way, one image."""
    objective = synth.objective
    device = content.device
    backbone = objective.backbone
    sync(device)
    start = time.perf_counter()  # the setup counts, as it does for rvgen
    objective.set_targets({"input": content})
    objective.reset_weights()
    x0 = synth._start(content, [0], tuple(content.shape[-2:]))
    objective.auto_weight(x0)
    # The tutorial's modules: each term's layers with its weight, targets as plain tensors.
    plan = []
    for i, term in enumerate(objective.terms):
        for layer in term.layers:
            weight = term.weight * float(torch.as_tensor(objective.layer_weights[i][layer]).reshape(-1)[0])
            plan.append((term.loss, layer, weight, objective.targets.get((i, layer))))

    def gram(f):
        c, hw = f.shape[1], f.shape[2] * f.shape[3]
        flat = f.view(c, hw)
        return torch.mm(flat, flat.t()) / hw

    def loss_of(x):
        feats = backbone(x, objective.layers)
        total = 0.0
        for kind, layer, weight, target in plan:
            f = feats[layer]
            if kind == "content":
                scaled_target, scale = target
                total = total + weight * F.mse_loss(f / scale, scaled_target)
            elif kind == "gram":
                g, scale_squared, norm = target
                total = total + weight * F.mse_loss(gram(f) / scale_squared[0], g[0]) / norm[0]
            elif kind == "tv":
                dx = x[..., :, 1:] - x[..., :, :-1]
                dy = x[..., 1:, :] - x[..., :-1, :]
                total = total + weight * (dx.pow(2).mean() + dy.pow(2).mean())
        return total

    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x])
    run = [0]
    while run[0] < iterations:
        def closure():
            with torch.no_grad():
                x.clamp_(0, 1)
            optimizer.zero_grad()
            loss = loss_of(x)
            loss.backward()
            run[0] += 1
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        x.clamp_(0, 1)
    sync(device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        final = float(objective(x)[0].sum())
        ours, theirs = float(objective(x0)[0].sum()), float(loss_of(x0))
    if abs(ours - theirs) > 1e-3 * max(abs(ours), 1e-6):  # the tutorial's loss is rvgen's objective
        raise RuntimeError(f"the baseline's loss {theirs} differs from rvgen's {ours}")
    return seconds, final


# --- rvgen -----------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    iterations: int
    evaluations: int
    losses: list[float]
    trace: list[tuple[float, int, float]]  # (seconds since start, iteration, loss) of image 0
    images: list[torch.Tensor]


def rvgen(synth: Synthesizer, contents: list[torch.Tensor]) -> Run:
    trace: list[tuple[float, int, float]] = []
    device = synth.device
    sync(device)
    start = time.perf_counter()

    def callback(index, progress):
        if index == 0:
            trace.append((time.perf_counter() - start, progress.iteration, progress.loss))

    outcomes = synth.run_batch(contents, [0] * len(contents), callback)
    sync(device)
    seconds = time.perf_counter() - start
    failed = [o for o in outcomes if isinstance(o, Exception)]
    if failed:
        raise RuntimeError(f"rvgen failed: {failed[0]}")
    return Run(seconds, outcomes[0].iterations, outcomes[0].evaluations, [o.loss for o in outcomes], trace,
               [o.image for o in outcomes])


def save(folder: str | None, name: str, images: list[torch.Tensor]) -> None:
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        imageio.to_pil(torch.cat(images, dim=-1).cpu()).save(Path(folder) / f"{name}.png")


def time_to_reach(run: Run, target: float, final_from: int) -> float | None:
    """Seconds until image 0's loss at the last pyramid level first reached ``target``."""
    for seconds, iteration, loss in run.trace:
        if iteration > final_from and loss <= target:
            return seconds
    return None


def loss_at(run: Run, seconds: float) -> float | None:
    """Image 0's loss at the last iteration finished within ``seconds`` of the start."""
    done = [loss for t, _, loss in run.trace if t <= seconds]
    return done[-1] if done else None


# --- the table ---------------------------------------------------------------------------------

COLUMNS = f"{'case':<44}{'s/image':>9}{'ms/it':>9}{'floor ms':>10}{'over floor':>11}{'vs base':>9}{'loss':>10}{'TFLOP/s':>9}"


def row(label, s_per_image, ms_it, floor_ms, ratio_base, loss, tflops) -> str:
    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    over = ms_it / floor_ms if ms_it is not None and floor_ms else None
    return (f"{label:<44}{f(s_per_image, '.2f'):>9}{f(ms_it, '.0f'):>9}{f(floor_ms, '.0f'):>10}"
            f"{f(over, '.2f'):>11}{f(ratio_base, '.2f'):>9}{f(loss, '.4f'):>10}{f(tflops, '.3f'):>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="halved sizes, 8-image folder, fewer iterations")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: what fits)")
    parser.add_argument("--save", metavar="DIR", help="also write the results as PNG files here")
    parser.add_argument("--cases", default="style,style-large,folder,texture,pyramid",
                        help="comma-separated subset of: style, style-large, folder, texture, pyramid")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    quick = args.quick
    small, large = (128, 256) if quick else (256, 512)
    folder = 4 if quick else 64
    repeats = 3 if quick else 10
    # Iterations per case: quick mode shortens the cases that only measure time per iteration.
    its = {"style": 100, "style-large": 20, "folder": 20, "texture": 50} if quick else dict.fromkeys(
        ["style", "style-large", "folder", "texture"], 300)
    cases = args.cases.split(",")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"rvgen speed, {'quick' if quick else 'full'} mode, {device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU thread(s), random VGG-19 to relu5_1, precision {args.precision}")
    print(COLUMNS)

    def case(label, task, size, images, iterations, pyramid=False):
        synth = make_synth(task, size, iterations, device, args.precision)
        contents = [square(CONTENTS[i % len(CONTENTS)], size).to(device) for i in range(images)]
        fl, flops = floor(synth, torch.cat(contents[:1]), repeats)
        base_s, base_loss = baseline(make_synth(task, size, iterations, device, "fp32"), contents[0], iterations)
        label = f"{label}, {iterations} it"
        print(row(f"{label}: floor, batch 1", None, None, fl * 1e3, None, None, flops / fl / 1e12))
        print(row(f"{label}: baseline", base_s, base_s / iterations * 1e3, fl * 1e3, 1.0, base_loss,
                  flops * iterations / base_s / 1e12))
        batch = args.batch_size or synth.batch_size(tuple(contents[0].shape[-2:]), images)
        batch_floor = torch.cat(contents[:batch])
        # The floor is measured right before and right after the run and averaged, so a
        # machine shared with other work loads both alike.
        before, flops_b = floor(synth, batch_floor, repeats)
        total, first = 0.0, None
        for start in range(0, images, batch):
            run = rvgen(synth, contents[start : start + batch])
            total += run.seconds
            first = first or run
        after, _ = floor(synth, batch_floor, repeats)
        fl_b = (before + after) / 2
        per_image = total / images
        # Per iteration in the steady state: from the first iteration's end to the last's, so
        # the once-per-image setup (targets, automatic weights, final scoring) is not in it.
        (t0, i0, _), (t1, i1, _) = first.trace[0], first.trace[-1]
        per_it = (t1 - t0) / max(1, i1 - i0)
        print(row(f"{label}: rvgen, batch {batch}", per_image, per_it * 1e3, fl_b * 1e3,
                  per_image / base_s, first.losses[0], flops_b * first.evaluations / first.seconds / 1e12))
        print(f"{'':<44}{first.evaluations / first.iterations:.2f} evaluations per iteration; "
              f"{first.seconds - per_it * first.iterations:.1f} s per batch outside the steady state "
              f"(targets, automatic weights, the first line search, final scoring)")
        ratio = interleaved_overhead(synth, torch.cat(contents[:batch]), repeats)
        print(f"{'':<44}one evaluation, timed alternately with the floor: {ratio:.2f}x the floor, so "
              f"{ratio * first.evaluations / first.iterations:.2f}x per iteration")
        save(args.save, f"{task}-{size}px-{images}-single", first.images)
        if pyramid:
            reach_single = time_to_reach(first, base_loss, 0)
            low, final = iterations // 2, iterations // 2
            synth_p = make_synth(task, size, final, device, args.precision, scales=2, scale_iterations=low)
            run_p = rvgen(synth_p, contents[:1])
            reach = time_to_reach(run_p, base_loss, low)
            print(row(f"{label}: rvgen pyramid {low}+{final} it", run_p.seconds, None, None, run_p.seconds / base_s,
                      run_p.losses[0], None))
            save(args.save, f"{task}-{size}px-pyramid", run_p.images)
            same_time = loss_at(first, run_p.seconds)
            if same_time is not None:
                print(f"{'':<44}single scale after the pyramid's {run_p.seconds:.1f} s: loss {same_time:.4f} "
                      f"(pyramid {run_p.losses[0]:.4f})")
            for what, when, got in (("single scale", reach_single, first), ("pyramid", reach, run_p)):
                verdict = (f"{what} reached the baseline's final loss after {when:.1f} s = "
                           f"{when / base_s:.2f}x the baseline's time" if when is not None else
                           f"{what} did not reach the baseline's final loss {base_loss:.4f} (got {got.losses[0]:.4f})")
                print(f"{'':<44}{verdict}")

    if "style" in cases:
        case(f"style {small} px", "style", small, 1, its["style"], pyramid="pyramid" in cases)
    if "style-large" in cases:
        case(f"style {large} px", "style", large, 1, its["style-large"])
    if "folder" in cases:
        case(f"folder of {folder}, {small} px", "style", small, folder, its["folder"])
    if "texture" in cases:
        case(f"texture {small} px", "texture", small, 1, its["texture"])


if __name__ == "__main__":
    main()
