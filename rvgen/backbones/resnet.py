"""Random ResNets: torchvision's ResNet-18/50 architectures with seeded random weights.

The blocks are torchvision's own ``BasicBlock``/``Bottleneck`` modules, so module names and
state-dict keys match ``torchvision.models.resnet18/50``. Batch norm is frozen at its
untrained state (scale 1, shift 0, running mean 0, variance 1: the identity up to eps), as
in a freshly built torchvision model in eval mode. Conv weights are drawn on the CPU from a
generator seeded with ``seed``, module by module in forward order, so building fewer blocks
does not change the ones built.

Layers, in forward order: ``stem`` (conv1, bn1, ReLU: half resolution), ``pool`` (the 3x3
max pool: quarter resolution), then every block's output, ``layer1.0``, ``layer1.1``, ...,
``layer4.2`` (ResNet-50 has 3, 4, 6 and 3 blocks per stage; ResNet-18 2, 2, 2, 2).

The deep activations of a random ResNet are peaky: a few channels dominate at each position
(an RMS of 12-21 at layer3/layer4 with torchvision's init), which makes Gram statistics a
poor description of style. Wang et al. (CVPR 2021) smooth them with a softmax over channels
before the losses. Here the softmax temperature is relative to the layer's own scale,
``T = temperature * RMS`` of that image's features at that layer, so the option does the
same thing at every depth and for any weight scale; with a fixed T = 1 it would be nearly
one-hot at the deep layers and change nothing visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rvgen.backbones import Backbone, full_precision
from rvgen.hookspecs import hookimpl
from rvgen.params import SEED_RANGE, Param

# Blocks per stage, as torchvision's resnet18 and resnet50 build them.
STAGES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}
STAGE_PLANES = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}


def resnet_layer_names(arch: str) -> list[str]:
    _, blocks = STAGES[arch]
    return ["stem", "pool"] + [f"layer{s + 1}.{b}" for s, n in enumerate(blocks) for b in range(n)]


def draw_resnet_weight(shape: tuple[int, ...], init: str, generator: torch.Generator) -> torch.Tensor:
    """Conv weights: ``torchvision`` is its ResNet init (He normal, fan-out); ``uniform`` PyTorch's conv default."""
    if init == "torchvision":
        fan_out = shape[0] * shape[2] * shape[3]
        return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_out)
    if init == "uniform":
        bound = 1.0 / math.sqrt(shape[1] * shape[2] * shape[3])
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound
    raise ValueError(f"unknown init {init!r}")


def channel_softmax(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over channels at each position, at ``temperature`` times the features' RMS (per image)."""
    rms = features.float().pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    scale = temperature * torch.where(rms > 0, rms, torch.ones_like(rms))
    return torch.softmax(features.float() / scale, dim=1).to(features.dtype)


class RandomResNet(Backbone):
    """Base of the random ResNets; subclasses pick the architecture."""

    arch = "resnet50"
    default_layers = {
        "reconstruct": ["layer2.0"],
        "content": ["layer1.0", "layer3.1"],
        "style": ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0"],
    }
    # VGG's relu{k}_1 opens stage k at a new resolution; the ResNet layer that does the same
    # is the first block of a stage (one more halving deep: ResNet's stem already strides 2).
    layer_aliases = {
        "relu1_1": "stem", "relu2_1": "layer1.0", "relu3_1": "layer2.0", "relu4_1": "layer3.0",
        "relu4_2": "layer3.1", "relu5_1": "layer4.0",
    }
    variants = {"softmax": {"softmax": True}, "plain": {"softmax": False}}
    params = (
        Param("seed", int, 0, "seed of the random weights: (architecture, seed, init) is the network",
              minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]),
        Param("init", str, "torchvision", "conv weights: torchvision's ResNet init (He normal, fan-out) or "
              "PyTorch's uniform conv default", choices=("torchvision", "uniform")),
        Param("softmax", bool, False, "softmax over channels before the losses (Wang et al. 2021)"),
        Param("temperature", float, 1.0, "softmax temperature, relative to each layer's RMS activation",
              minimum=1e-6),
        Param("normalize", str, "imagenet", "input normalisation before the first conv",
              choices=("imagenet", "none")),
    )

    @classmethod
    def layer_names(cls, options: Mapping[str, Any]) -> list[str]:
        return resnet_layer_names(cls.arch)

    def __init__(self, options: Mapping[str, Any], layers: Iterable[str]):
        from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
        from torchvision.ops import FrozenBatchNorm2d

        super().__init__(options, layers)
        depth = self.keep_layers(options, layers)
        kind, blocks = STAGES[self.arch]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        # Built on the meta device (no default init, no use of the global RNG), then given
        # real storage and every weight and buffer set below.
        with torch.device("meta"):
            stages: list[nn.Module] = [
                nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), FrozenBatchNorm2d(64), nn.ReLU()),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            ]
            inplanes = 64
            for s, (planes, n) in enumerate(zip(STAGE_PLANES, blocks)):
                for b in range(n):
                    stride = 2 if (s > 0 and b == 0) else 1
                    out = planes * EXPANSION[kind]
                    downsample = None
                    if b == 0 and (stride != 1 or inplanes != out):
                        downsample = nn.Sequential(conv1x1(inplanes, out, stride), FrozenBatchNorm2d(out))
                    stages.append(block_cls(inplanes, planes, stride, downsample, norm_layer=FrozenBatchNorm2d))
                    inplanes = out
        self.body = nn.ModuleList(stages[:depth]).to_empty(device="cpu")
        generator = torch.Generator().manual_seed(int(options["seed"]))
        with torch.no_grad():
            for module in self.body.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.copy_(draw_resnet_weight(tuple(module.weight.shape), options["init"], generator))
                elif isinstance(module, FrozenBatchNorm2d):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0)
        self.register_normalization(options["normalize"])

    def features(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        h = (x - self.mean) / self.std
        for k, (name, module) in enumerate(zip(self.names, self.body)):
            h = full_precision(module, h) if k == 0 else module(h)
            if name in wanted:
                out[name] = channel_softmax(h, self.options["temperature"]) if self.options["softmax"] else h
                if len(out) == len(wanted):
                    break
        missing = wanted - out.keys()
        if missing:
            raise KeyError(f"layers not built: {sorted(missing)}")
        return out


class RandomResNet50(RandomResNet):
    name = "random-resnet50"
    description = "ResNet-50 (torchvision) with seeded random weights; layers stem, pool, layer1.0 .. layer4.2"
    arch = "resnet50"


class RandomResNet18(RandomResNet):
    name = "random-resnet18"
    description = "ResNet-18 (torchvision) with seeded random weights; layers stem, pool, layer1.0 .. layer4.1"
    arch = "resnet18"


@hookimpl
def register_backbones(register):
    register(RandomResNet50)
    register(RandomResNet18)
