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

    python benchmarks/run.py --quick        # a few minutes on 2 CPU cores (sizes halved, 8 images)
    python benchmarks/run.py                # the issue's cases: 256/512 px, 64 images, 300 iterations
    python benchmarks/run.py --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rvgen import imageio
from rvgen.engine.synth import Synthesizer
from rvgen.recipe import parse_recipe

STYLE = "skimage:hubble_deep_field"
CONTENTS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "immunohistochemistry", "motorcycle_left"]


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
    synth = Synthesizer(recipe, device)
    synth.set_references({name: imageio.load_image(src, side) for name, (src, side) in synth.references().items()})
    return synth


def square(name: str, size: int) -> torch.Tensor:
    """A sample photo cropped to a square of ``size`` px, so every case has one shape."""
    image = imageio.load_image(f"skimage:{name}", size * 2)
    h, w = image.shape[-2:]
    side = min(h, w)
    image = image[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# --- the floor ---------------------------------------------------------------------------

def floor(synth: Synthesizer, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of one backbone forward + backward of ``batch``, and its FLOPs."""
    objective = synth.objective
    backbone = objective.backbone
    deepest = max(objective.layers, key=lambda name: backbone.names.index(name) if name in backbone.names else -1)

    def step():
        x = batch.clone().requires_grad_(True)
        feats = objective.features(x, [deepest])
        (grad,) = torch.autograd.grad(feats[deepest].float().sum(), x)
        return grad

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

    sync(device)
    start = time.perf_counter()
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
    return seconds, final


# --- rvgen -----------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    iterations: int
    evaluations: int
    losses: list[float]
    trace: list[tuple[float, int, float]]  # (seconds since start, iteration, loss) of image 0


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
    return Run(seconds, outcomes[0].iterations, outcomes[0].evaluations, [o.loss for o in outcomes], trace)


def time_to_reach(run: Run, target: float, final_from: int) -> float | None:
    """Seconds until image 0's loss at the last pyramid level first reached ``target``."""
    for seconds, iteration, loss in run.trace:
        if iteration > final_from and loss <= target:
            return seconds
    return None


# --- the table ---------------------------------------------------------------------------------

COLUMNS = f"{'case':<34}{'s/image':>9}{'ms/it':>9}{'floor ms':>10}{'over floor':>11}{'vs base':>9}{'loss':>10}{'TFLOP/s':>9}"


def row(label, s_per_image, ms_it, floor_ms, ratio_base, loss, tflops) -> str:
    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    over = ms_it / floor_ms if ms_it is not None and floor_ms else None
    return (f"{label:<34}{f(s_per_image, '.2f'):>9}{f(ms_it, '.0f'):>9}{f(floor_ms, '.0f'):>10}"
            f"{f(over, '.2f'):>11}{f(ratio_base, '.2f'):>9}{f(loss, '.4f'):>10}{f(tflops, '.3f'):>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="halved sizes, 8-image folder, fewer iterations")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cases", default="style,style-large,folder,texture,pyramid",
                        help="comma-separated subset of: style, style-large, folder, texture, pyramid")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    quick = args.quick
    small, large = (128, 256) if quick else (256, 512)
    iterations = 100 if quick else 300
    folder = 8 if quick else 64
    repeats = 3 if quick else 10
    cases = args.cases.split(",")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"rvgen speed, {'quick' if quick else 'full'} mode, {device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU thread(s), random VGG-19 to relu5_1, {iterations} iterations")
    print(COLUMNS)

    def case(label, task, size, images, pyramid=False):
        synth = make_synth(task, size, iterations, device, args.precision)
        contents = [square(CONTENTS[i % len(CONTENTS)], size).to(device) for i in range(images)]
        fl, flops = floor(synth, torch.cat(contents[:1]), repeats)
        base_s, base_loss = baseline(make_synth(task, size, iterations, device, "fp32"), contents[0], iterations)
        print(row(f"{label}: floor, batch 1", None, None, fl * 1e3, None, None, flops / fl / 1e12))
        print(row(f"{label}: baseline (tutorial)", base_s, base_s / iterations * 1e3, fl * 1e3, 1.0, base_loss,
                  flops * iterations / base_s / 1e12))
        batch = synth.batch_size(tuple(contents[0].shape[-2:]), images)
        for start in range(0, images, batch):
            chunk = contents[start : start + batch]
            if start == 0:
                fl_b, flops_b = floor(synth, torch.cat(chunk), repeats) if len(chunk) > 1 else (fl, flops)
                run = rvgen(synth, chunk)
                total = run.seconds
            else:
                total += rvgen(synth, chunk).seconds
        per_image = total / images
        ms_it = run.seconds / run.iterations * 1e3
        label_run = f"{label}: rvgen, batch {batch}"
        print(row(label_run, per_image, ms_it, fl_b * 1e3, per_image / base_s, run.losses[0],
                  flops_b * run.evaluations / run.seconds / 1e12))
        print(f"{'':<34}{run.evaluations / run.iterations:.2f} evaluations per iteration")
        if pyramid:
            low = iterations // 3
            final = max(1, iterations // 4)
            synth_p = make_synth(task, size, final, device, args.precision, scales=2, scale_iterations=low)
            run_p = rvgen(synth_p, contents[:1])
            reach = time_to_reach(run_p, base_loss, low)
            print(row(f"{label}: rvgen pyramid {low}+{final} it", run_p.seconds, None, None, run_p.seconds / base_s,
                      run_p.losses[0], None))
            verdict = (f"reached the baseline's final loss after {reach:.1f} s = {reach / base_s:.2f}x the baseline's time"
                       if reach is not None else
                       f"did not reach the baseline's final loss {base_loss:.4f} (got {run_p.losses[0]:.4f})")
            print(f"{'':<34}{verdict}")

    if "style" in cases:
        case(f"style {small} px", "style", small, 1, pyramid="pyramid" in cases)
    if "style-large" in cases:
        case(f"style {large} px", "style", large, 1)
    if "folder" in cases:
        case(f"folder of {folder}, {small} px", "style", small, folder)
    if "texture" in cases:
        case(f"texture {small} px", "texture", small, 1)


if __name__ == "__main__":
    main()
