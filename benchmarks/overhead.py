"""Per-iteration overhead of rvgen over the bare backbone, measured in one run.

The floor is the random VGG-19's own forward + backward to the deepest layer a style recipe
uses (gradients with respect to the image only, weights frozen), at the same size. An rvgen
iteration adds the losses (Gram matrices), the weighted sum and the optimiser step. Prints
milliseconds per iteration for both and their ratio.

    python benchmarks/overhead.py                 # 256 px, style, L-BFGS
    python benchmarks/overhead.py --size 128 --iterations 20 --optimizer adam
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rvgen import imageio
from rvgen.engine import OptimizerConfig, optimize
from rvgen.engine.synth import Synthesizer
from rvgen.recipe import parse_recipe


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=20, help="iterations per timed optimisation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", default="lbfgs", choices=["lbfgs", "adam"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = parse_recipe({
        "task": {"name": "style", "style": "skimage:hubble_deep_field"},
        "optimizer": {"name": args.optimizer, "iterations": args.iterations},
        "output": {"size": args.size},
    })
    synth = Synthesizer(recipe, "cpu")
    synth.set_references({"style": imageio.load_image("skimage:hubble_deep_field", args.size)})
    content = imageio.load_image("skimage:astronaut", args.size)
    synth.objective.set_targets({"input": content})
    objective, backbone = synth.objective, synth.objective.backbone
    layers = objective.layers

    def floor_step():
        x = content.clone().requires_grad_(True)
        feats = backbone(x, layers)
        deepest = feats[max(layers, key=backbone.names.index)]
        (grad,) = torch.autograd.grad(deepest.sum(), x)
        return grad

    def rvgen_run():
        optimize(objective, content, OptimizerConfig(name=args.optimizer, iterations=args.iterations))

    floor = timed(floor_step, args.repeats * args.iterations)
    ours = timed(rvgen_run, args.repeats) / args.iterations
    print(f"random-vgg19 style, {args.size} px, layers {', '.join(layers)}, {args.optimizer}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'case':<32}{'ms/iteration':>14}{'ratio':>8}")
    print(f"{'floor: backbone fwd+bwd':<32}{floor * 1e3:>14.1f}{1.0:>8.2f}")
    print(f"{'rvgen iteration':<32}{ours * 1e3:>14.1f}{ours / floor:>8.2f}")


if __name__ == "__main__":
    main()
