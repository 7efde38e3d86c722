"""The engine-wide part of a picture's CPU time: one evaluation (the style objective's loss
and gradient, random VGG-19 to relu5_1) at each pyramid level of a 384 px picture, with the
backbone's activations contiguous (NCHW, rvgen before ``optimizer.layout``) and
channels-last (NHWC, ``layout = "auto"`` on the CPU now), measured in the same run.

    python benchmarks/layout.py                    # 48, 96, 192 and 384 px, one thread
    python benchmarks/layout.py --sizes 384 --evaluations 10 --threads 2

Prints CPU seconds (user + system) per evaluation and the ratio, then what the two layouts
cost for today's schedule (100 iterations at each of 96, 192, 384 px) and the shipped one
(50 / 15 / 10), counting one evaluation per iteration.
"""

from __future__ import annotations

import argparse
import time

import torch

from rvgen import imageio
from rvgen.engine.optimize import evaluator
from rvgen.recipe import load_recipe
from rvgen.shipped import resolve

SCHEDULES = {"today (100 / 100 / 100)": {96: 100, 192: 100, 384: 100},
             "shipped (50 / 15 / 10)": {96: 50, 192: 15, 384: 10}}


def per_evaluation(size: int, layout: str, evaluations: int, photo: str) -> float:
    """CPU seconds of one loss-and-gradient evaluation of monet.toml's objective at ``size`` px."""
    recipe = load_recipe(resolve("monet"), [f"output.size={size}", "optimizer.scales=1",
                                            f"optimizer.layout='{layout}'"])
    content = imageio.load_image(photo, size)
    references = {name: imageio.load_image(src, side) for name, (src, side) in recipe.references().items()}
    synth = recipe.build("cpu")
    synth.set_references(references)
    objective = synth.objective
    objective.set_targets({"input": content})
    objective.auto_weight(content)
    evaluate = evaluator(objective, content.shape)
    flat = content.reshape(1, -1).clone()
    evaluate(flat, None)  # warm-up: oneDNN builds its kernels for this shape
    start = time.process_time()
    for _ in range(evaluations):
        evaluate(flat, None)
    return (time.process_time() - start) / evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes", default="48,96,192,384", help="long sides in px, comma separated")
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--photo", default="skimage:chelsea")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    cost: dict[str, dict[int, float]] = {"contiguous": {}, "channels_last": {}}
    print(f"| long side | contiguous, CPU s/eval | channels-last, CPU s/eval | ratio |")
    print("|---|---|---|---|")
    for size in sizes:
        for layout in cost:
            cost[layout][size] = per_evaluation(size, layout, args.evaluations, args.photo)
        a, b = cost["contiguous"][size], cost["channels_last"][size]
        print(f"| {size} px | {a:.3f} | {b:.3f} | {b / a:.2f} |", flush=True)
    if all(size in sizes for size in (96, 192, 384)):
        print("\n| schedule | contiguous, CPU s | channels-last, CPU s | ratio |")
        print("|---|---|---|---|")
        for name, schedule in SCHEDULES.items():
            a = sum(n * cost["contiguous"][s] for s, n in schedule.items())
            b = sum(n * cost["channels_last"][s] for s, n in schedule.items())
            print(f"| {name} | {a:.0f} | {b:.0f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
