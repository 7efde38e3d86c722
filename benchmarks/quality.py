"""Reconstruction quality of the random VGG-19 backbone per weight init and pooling.

For every config (init + pooling), layer and image: reconstruct the image from white noise
by matching that layer's feature maps (the ``reconstruct`` task) and score the result with
PSNR against the input, 10*log10(1/MSE) on [0, 1] images. Prints one table of PSNR per
layer (mean over images) and seconds per config, so backbone defaults are picked from
numbers rather than taste.

    python benchmarks/quality.py                      # 128 px, 200 L-BFGS iterations
    python benchmarks/quality.py --quick              # a smoke run, well under a minute
    python benchmarks/quality.py --images skimage:astronaut,/path/photo.jpg \\
        --layers relu2_1,relu4_1 --configs kaiming+avg,normal:0.01+avg --sheet sheet.png

A config is ``INIT[:STD]+POOLING``: init is kaiming, normal or uniform; STD is the standard
deviation for ``normal`` (default 0.015); pooling is avg or max.

This is a script, not a test: it takes minutes (deep layers cost most) and needs no GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from rvgen import imageio  # noqa: E402
from rvgen.recipe import parse_recipe  # noqa: E402

DEFAULT_IMAGES = ("skimage:astronaut", "skimage:coffee", "skimage:chelsea")
DEFAULT_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_CONFIGS = ("kaiming+avg", "kaiming+max", "normal:0.015+avg", "uniform+avg")
QUICK = {"size": 64, "iterations": 20, "images": ("skimage:astronaut",), "layers": ("relu2_1", "relu4_1"),
         "configs": ("kaiming+avg", "kaiming+max")}


@dataclass(frozen=True)
class Config:
    init: str
    pooling: str
    std: float | None = None

    @classmethod
    def parse(cls, text: str) -> Config:
        init, sep, pooling = text.strip().partition("+")
        if not sep:
            raise argparse.ArgumentTypeError(f"config {text!r}: expected INIT[:STD]+POOLING, e.g. kaiming+avg")
        init, _, std = init.partition(":")
        if init not in ("kaiming", "normal", "uniform") or pooling not in ("avg", "max"):
            raise argparse.ArgumentTypeError(f"config {text!r}: init is kaiming|normal|uniform, pooling avg|max")
        if std and init != "normal":
            raise argparse.ArgumentTypeError(f"config {text!r}: a standard deviation only applies to normal")
        return cls(init, pooling, float(std) if std else (0.015 if init == "normal" else None))

    @property
    def label(self) -> str:
        init = f"normal({self.std:g})" if self.init == "normal" else self.init
        return f"{init}+{self.pooling}"

    def backbone(self, seed: int) -> dict:
        data = {"name": "random-vgg19", "init": self.init, "pooling": self.pooling, "seed": seed}
        if self.std is not None:
            data["std"] = self.std
        return data


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.clamp(0, 1) - b.clamp(0, 1)).double().pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def contact_sheet(images: list[torch.Tensor], labels: list[str], path: str) -> None:
    from PIL import Image, ImageDraw

    tiles = [imageio.to_pil(img) for img in images]
    w, h = tiles[0].size
    bar = 14
    sheet = Image.new("RGB", (w * len(tiles), h + bar), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        sheet.paste(tile, (i * w, bar))
        draw.text((i * w + 3, 1), label, fill="black")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="long side in pixels (default 128)")
    p.add_argument("--iterations", type=int, default=200, help="L-BFGS iterations (default 200)")
    p.add_argument("--images", type=split, default=DEFAULT_IMAGES,
                   help="comma-separated image paths or skimage:NAME samples (default: astronaut,coffee,chelsea)")
    p.add_argument("--layers", type=split, default=DEFAULT_LAYERS, help="comma-separated layers to invert")
    p.add_argument("--configs", type=split, default=DEFAULT_CONFIGS,
                   help="comma-separated INIT[:STD]+POOLING (default: kaiming+avg,kaiming+max,normal:0.015+avg,"
                        "uniform+avg)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--per-image", action="store_true", help="also print PSNR per image")
    p.add_argument("--sheet", metavar="PNG",
                   help="save a contact sheet (input, then each layer) of the first config and first image")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 px, 20 iterations, one image, relu2_1/relu4_1, kaiming avg/max "
                        "(flags given explicitly still win)")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in QUICK.items():
            if f"--{key}" not in given:
                setattr(args, key, value)
    torch.set_num_threads(args.threads)
    try:
        configs = [Config.parse(c) for c in args.configs]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))

    inputs = {src: imageio.load_image(src, args.size) for src in args.images}
    print(f"# {args.size} px, {args.iterations} L-BFGS iterations, seed {args.seed}, {args.threads} thread(s), "
          f"torch {torch.__version__}", flush=True)
    print("# images: " + ", ".join(f"{s} ({t.shape[-1]}x{t.shape[-2]})" for s, t in inputs.items()), flush=True)

    # psnrs[config][layer] = [per image]; seconds[config] = total optimisation time
    psnrs: dict[str, dict[str, list[float]]] = {}
    losses: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    sheet_images, sheet_labels = [], []
    for ci, cfg in enumerate(configs):
        psnrs[cfg.label] = {layer: [] for layer in args.layers}
        losses[cfg.label] = {layer: [] for layer in args.layers}
        seconds[cfg.label] = 0.0
        for layer in args.layers:
            recipe = parse_recipe({
                "task": {"name": "reconstruct", "layer": layer},
                "backbone": cfg.backbone(args.seed),
                "optimizer": {"iterations": args.iterations},
                "output": {"size": args.size},
            })
            synth = recipe.build("cpu")
            synth.set_references({})
            for ii, (src, img) in enumerate(inputs.items()):
                res = synth.run(img)
                score = psnr(res.image, img)
                psnrs[cfg.label][layer].append(score)
                losses[cfg.label][layer].append(res.loss / res.initial_loss if res.initial_loss else float("nan"))
                seconds[cfg.label] += res.seconds
                print(f"  {cfg.label:<16} {layer:<8} {src:<40} PSNR {score:6.2f} dB  "
                      f"loss {res.initial_loss:.3g} -> {res.loss:.3g}  {res.seconds:6.1f} s", flush=True)
                if args.sheet and ci == 0 and ii == 0:
                    if not sheet_images:
                        sheet_images, sheet_labels = [img], ["input"]
                    sheet_images.append(res.image)
                    sheet_labels.append(f"{layer} {score:.1f}dB")
    wall = time.perf_counter() - start

    width = max(len(c.label) for c in configs)
    print()
    print(f"PSNR in dB (mean over {len(inputs)} image(s)), {args.size} px, {args.iterations} iterations")
    header = f"{'config':<{width}} " + " ".join(f"{layer:>8}" for layer in args.layers) + f" {'mean':>8} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    for cfg in configs:
        row = [sum(v) / len(v) for v in psnrs[cfg.label].values()]
        print(f"{cfg.label:<{width}} " + " ".join(f"{x:8.2f}" for x in row)
              + f" {sum(row) / len(row):8.2f} {seconds[cfg.label]:8.1f}")
    print()
    print("final loss / initial loss (mean over images)")
    for cfg in configs:
        row = [sum(v) / len(v) for v in losses[cfg.label].values()]
        print(f"{cfg.label:<{width}} " + " ".join(f"{x:8.1e}" for x in row))
    if args.per_image:
        print()
        print("PSNR per image")
        for cfg in configs:
            for ii, src in enumerate(inputs):
                print(f"{cfg.label:<{width}} " + " ".join(f"{psnrs[cfg.label][layer][ii]:8.2f}" for layer in args.layers)
                      + f"  {src}")
    print(f"\nwall time {wall:.0f} s")
    if args.sheet and sheet_images:
        contact_sheet(sheet_images, sheet_labels, args.sheet)
        print(f"contact sheet ({configs[0].label}, {next(iter(inputs))}): {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
