"""Which CPU computations change with the number of torch threads, for the shapes rvgen uses.

For the random VGG-19 of the style recipes at ``--size`` px, each computation is run with 1
thread and with each of ``--threads``, and compared bit for bit: the convolutions forward (each
layer rvgen reads) and backward (the gradient with respect to the image), the Gram matrices
forward and backward, and the reductions of the losses (a mean of squares, a sum). Any
difference, however small, is amplified by L-BFGS into different pixels, which is why
``rvgen run`` gives every CPU image the same threads whatever ``--workers`` is.

    python benchmarks/threads.py                     # 48 and 160 px, 1 thread against 2, 4, 8
    python benchmarks/threads.py --sizes 96 --threads 2
"""

from __future__ import annotations

import argparse

import torch

from rvgen.backbones.vgg import RandomVGG19
from rvgen.losses import gram_matrix

LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
OPTIONS = {"seed": 0, "init": "uniform", "std": 0.015, "pooling": "avg", "normalize": "imagenet",
           "stacked_candidates": 0}


def weights(t: torch.Tensor) -> torch.Tensor:
    """A fixed, uneven weighting, so that a backward pass sees a gradient that is not all ones."""
    return torch.linspace(0, 1, t.numel()).view_as(t)


def computations(net: RandomVGG19, image: torch.Tensor, threads: int) -> dict[str, torch.Tensor]:
    torch.set_num_threads(threads)
    out = {}
    x = image.clone().requires_grad_(True)
    features = net.features(x, LAYERS)
    for name, f in features.items():
        out[f"conv forward {name}"] = f.detach().clone()
    out["conv backward (image gradient)"] = torch.autograd.grad(
        sum((f * weights(f)).sum() for f in features.values()), x)[0]
    for name, f in features.items():
        f = f.detach().clone().requires_grad_(True)
        gram = gram_matrix(f)
        out[f"gram forward {name}"] = gram.detach()
        out[f"gram backward {name}"] = torch.autograd.grad((gram * weights(gram)).sum(), f)[0]
        out[f"mean of squares {name}"] = f.detach().pow(2).flatten(1).mean(1)
        out[f"sum {name}"] = f.detach().sum()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="48,160", help="image sizes in px, comma-separated")
    parser.add_argument("--threads", default="2,4,8", help="thread counts to compare with 1 thread")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    net = RandomVGG19(OPTIONS, LAYERS).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}; "
          "each cell: equal to 1 thread bit for bit, or the largest difference")
    print(f"{'size':>5} {'computation':<32}" + "".join(f"{f'{t} threads':>14}" for t in counts))
    for size in (int(s) for s in args.sizes.split(",")):
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        one = computations(net, image, 1)
        others = {t: computations(net, image, t) for t in counts}
        for name, value in one.items():
            cells = ["same" if torch.equal(value, others[t][name]) else f"{(value - others[t][name]).abs().max():.2g}"
                     for t in counts]
            print(f"{size:>5} {name:<32}" + "".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
