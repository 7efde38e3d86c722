"""ranVGG: torchvision's VGG architectures with seeded random weights, never trained.

The layer list follows torchvision's ``vgg16``/``vgg19`` ``features`` exactly (same modules
at the same indices), named the way the style-transfer literature names them: ``conv3_1``,
``relu3_1``, ``pool3``. Weights are drawn on the CPU from a generator seeded with ``seed``,
layer by layer in forward order, so a (architecture, seed, init) triple is the same network
on every machine and building fewer layers does not change the ones built.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rvgen.backbones import PIXELS, Backbone, full_precision
from rvgen.engine.tiling import TileGeometry
from rvgen.hookspecs import hookimpl
from rvgen.params import MAX_SIZE, SEED_RANGE, Param

# torchvision.models.vgg.cfgs["D"] and ["E"], copied so that listing layers (validating a
# recipe, ``rvgen plugins``) does not import torchvision; a test checks they stay equal.
VGG_CFGS = {
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}



def vgg_layer_names(cfg: list) -> list[str]:
    """Names of torchvision's VGG ``features`` modules in order, for a config list."""
    names, block, conv = [], 1, 1
    for v in cfg:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


def draw_conv_weight(shape: tuple[int, ...], init: str, std: float, generator: torch.Generator) -> torch.Tensor:
    """Random conv weights, drawn on the CPU so every machine gets the same numbers."""
    fan_in = shape[1] * shape[2] * shape[3]
    if init == "kaiming":  # He et al. 2015, normal, fan-in, ReLU gain: keeps activation scale
        return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)
    if init == "normal":  # a fixed standard deviation, as in the paper's reproductions
        return torch.randn(shape, generator=generator) * std
    if init == "uniform":  # PyTorch's default conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound
    raise ValueError(f"unknown init {init!r}")


POOLING = Param("pooling", str, "avg", "pooling layers: avg keeps deep layers invertible, max is VGG's own",
                choices=("avg", "max"))
PADDING = Param("padding", str, "zeros", "what the convolutions see past the image's edge: zeros (VGG's own) or "
                "reflect (the image mirrored: no dark frame for the border's features to correct, so no fringe "
                "along the edges; not tileable)", choices=("zeros", "reflect"), digest_neutral=True)


class MirroredConv2d(nn.Conv2d):
    """A 3x3 convolution over its input mirrored at the edges (``padding = "reflect"``), or
    repeated where a side is a single position (too short to mirror: a deep layer of a small
    pyramid level). The same parameters as VGG's zero-padded conv, so the same random draws."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), self.weight, self.bias)


class VGGFeatures(Backbone):
    """The VGG ``features`` stack, built up to the deepest requested layer; subclasses set
    its conv weights (random draws, a stacked selection, or trained weights)."""

    cfg_key = "E"
    default_layers = {
        "reconstruct": ["relu3_1"],
        "content": ["relu2_1", "relu4_2"],
        "style": ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
    }

    @classmethod
    def layer_names(cls, options: Mapping[str, Any]) -> list[str]:
        return vgg_layer_names(VGG_CFGS[cls.cfg_key])

    def __init__(self, options: Mapping[str, Any], layers: Iterable[str]):
        super().__init__(options, layers)
        depth = self.keep_layers(options, layers)
        self.padding = options.get("padding", "zeros")
        modules: list[nn.Module] = []
        in_channels = 3
        for v in VGG_CFGS[self.cfg_key]:
            if len(modules) >= depth:
                break
            if v == "M":
                pool = nn.AvgPool2d if options["pooling"] == "avg" else nn.MaxPool2d
                modules.append(pool(kernel_size=2, stride=2))
                continue
            conv = MirroredConv2d(in_channels, v, kernel_size=3) if self.padding == "reflect" else \
                nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            modules += [conv, nn.ReLU(inplace=False)]
            in_channels = v
        self.body = nn.ModuleList(modules[:depth])
        self.register_normalization(options.get("normalize", "imagenet"))

    def tile_geometry(self, layers: Iterable[str]) -> TileGeometry | None:
        """Each layer's stride, and how far past a position its features reach: a 3x3 conv
        adds the current stride on both sides, a 2x2 pool the stride after the position.
        None with reflect padding: a tile's edge would mirror the tile, not the image."""
        if self.padding != "zeros":
            return None
        wanted = set(layers)
        strides, stride, before, after, margin = {PIXELS: 1}, 1, 0, 0, 1 if PIXELS in wanted else 0
        for name, module in zip(self.names, self.body):
            if isinstance(module, nn.Conv2d):
                before, after = before + stride, after + stride
            elif isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
                after += stride
                stride *= 2
            strides[name] = stride
            if name in wanted:
                margin = max(margin, before, after)
        return TileGeometry({layer: strides[layer] for layer in wanted}, margin)

    def convs(self) -> list[tuple[int, nn.Conv2d]]:
        """(index in ``body`` and torchvision's ``features``, module) of every conv built, in order."""
        return [(i, m) for i, m in enumerate(self.body) if isinstance(m, nn.Conv2d)]

    def features(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        h = (x - self.mean) / self.std
        for k, (name, module) in enumerate(zip(self.names, self.body)):
            h = full_precision(module, h) if k == 0 else module(h)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        missing = wanted - out.keys()
        if missing:
            raise KeyError(f"layers not built: {sorted(missing)}")
        return out


class RandomVGG(VGGFeatures):
    """Base of the random VGG backbones; subclasses pick the torchvision config.

    With ``stacked_candidates`` >= 2 the weights are the paper's *stacked* ranVGG, chosen
    greedily layer by layer by :mod:`rvgen.stacked` when a recipe builds it, and cached on disk.
    """

    variants = {
        "stacked": {"stacked_candidates": 4},
        "stacked-pixels": {"stacked_candidates": 4, "stacked_criterion": "pixels"},
        "max": {"pooling": "max"},
    }
    params = (
        Param("seed", int, 0, "seed of the random weights: (architecture, seed, init) is the network",
              minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]),
        Param("init", str, "uniform", "weight distribution (uniform: PyTorch's default conv init, best in our measurements)",
              choices=("uniform", "kaiming", "normal")),
        Param("std", float, 0.015, "standard deviation of the weights when init = \"normal\"", minimum=0.0),
        POOLING,
        PADDING,
        Param("normalize", str, "imagenet", "input normalisation before the first conv",
              choices=("imagenet", "none")),
        Param("stacked_candidates", int, 0, "stacked ranVGG: weight sets tried per conv layer, keeping the one that "
              "reconstructs stacked_reference best (0 or 1: plain random weights)", minimum=0, maximum=64),
        Param("stacked_reference", str, "skimage:astronaut", "stacked ranVGG: the image the candidates reconstruct",
              kind="path"),
        Param("stacked_iterations", int, 50, "stacked ranVGG: L-BFGS iterations per candidate reconstruction",
              minimum=1, maximum=10_000),
        Param("stacked_size", int, 128, "stacked ranVGG: long side of the reference in pixels", minimum=16,
              maximum=MAX_SIZE),
        Param("stacked_criterion", str, "features", "stacked ranVGG: keep the candidate with the lowest final "
              "feature loss, or the lowest pixel error of its reconstruction", choices=("features", "pixels")),
    )

    def __init__(self, options: Mapping[str, Any], layers: Iterable[str]):
        super().__init__(options, layers)
        generator = torch.Generator().manual_seed(int(options["seed"]))
        with torch.no_grad():
            for _, conv in self.convs():
                conv.weight.copy_(draw_conv_weight(tuple(conv.weight.shape), options["init"], options["std"], generator))
                conv.bias.zero_()
        self.stack_record = None  # set by rvgen.stacked.apply when the options ask for stacking


class RandomVGG19(RandomVGG):
    name = "random-vgg19"
    description = "VGG-19 (torchvision) with seeded random weights: the paper's ranVGG"
    cfg_key = "E"


class RandomVGG16(RandomVGG):
    name = "random-vgg16"
    description = "VGG-16 (torchvision) with seeded random weights"
    cfg_key = "D"


@hookimpl
def register_backbones(register):
    register(RandomVGG19)
    register(RandomVGG16)
