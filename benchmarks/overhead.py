"""Per-iteration overhead of rvgen over the bare backbone, measured in one run.

The floor is the random VGG-19's own forward + backward to the deepest layer a style recipe
uses (gradients with respect to the image only, weights frozen), at the same size. An rvgen
evaluation adds the losses (Gram matrices) and the weighted sum; an iteration is one or more
evaluations (the strong-Wolfe line search sometimes needs several) plus the L-BFGS update.
Prints milliseconds per evaluation and per iteration, with and without the line search, and
their ratio to the floor.

    python benchmarks/overhead.py                 # 256 px, style, L-BFGS
    python benchmarks/overhead.py --size 128 --iterations 20 --optimizer adam   # quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rvgen import imageio
from rvgen.engine import OptimizerConfig, optimize
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
    parser.add_argument("--iterations", type=int, default=40, help="iterations per timed optimisation")
    parser.add_argument("--repeats", type=int, default=1)
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
    synth = recipe.build("cpu")
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

    floor = timed(floor_step, args.repeats * args.iterations)
    print(f"random-vgg19 style, {args.size} px, layers {', '.join(layers)}, {args.optimizer}, "
          f"{args.iterations} iterations, {torch.get_num_threads()} thread(s)")
    print(f"{'case':<34}{'ms/eval':>9}{'ratio':>7}{'evals/it':>10}{'ms/it':>9}{'ratio':>7}")
    print(f"{'floor: backbone fwd+bwd':<34}{floor * 1e3:>9.1f}{1.0:>7.2f}{1.0:>10.2f}{floor * 1e3:>9.1f}{1.0:>7.2f}")
    searches = (True, False) if args.optimizer == "lbfgs" else (False,)
    for line_search in searches:
        config = OptimizerConfig(name=args.optimizer, iterations=args.iterations, line_search=line_search)
        evals = []

        def rvgen_run():
            evals.append(0)

            def count(progress):
                evals[-1] += 1

            return optimize(objective, content, config, count)

        seconds = timed(rvgen_run, args.repeats)
        per_it = seconds / args.iterations
        per_eval = seconds / evals[-1]
        label = f"rvgen, line search {'on' if line_search else 'off'}" if args.optimizer == "lbfgs" else "rvgen"
        print(f"{label:<34}{per_eval * 1e3:>9.1f}{per_eval / floor:>7.2f}{evals[-1] / args.iterations:>10.2f}"
              f"{per_it * 1e3:>9.1f}{per_it / floor:>7.2f}")


if __name__ == "__main__":
    main()
