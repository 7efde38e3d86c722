"""Feature networks. A backbone maps an image batch to named activations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from rvgen.params import Param

PIXELS = "pixels"
"""Pseudo-layer every backbone offers: the image itself (for pixel losses such as ``tv``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class of backbone plugins.

    A subclass declares ``name``, ``description`` and ``params``, lists its layers in
    forward order with :meth:`layer_names` (which may depend on the options, but must not
    build anything), and implements :meth:`features`. ``__init__`` receives the validated
    options and the layers that will be asked for, so it can stop building at the deepest.
    Inputs are RGB in [0, 1], shape (B, 3, H, W); the backbone does its own normalisation.
    Weights are frozen by the engine.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    default_layers: ClassVar[dict[str, list[str]]] = {}
    """Layers tasks use when a recipe names none, by role: ``content``, ``style``, ``reconstruct``."""
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    """Named option sets, for ``NAME:VARIANT`` in ``rvgen compare --backbones`` (e.g. ``random-vgg19:stacked``)."""
    layer_aliases: ClassVar[dict[str, str]] = {}
    """VGG layer names mapped to this backbone's nearest equivalent, so ``rvgen compare --layers relu3_1``
    can line up backbones with different layer names."""

    def __init__(self, options: Mapping[str, Any], layers: Iterable[str]):
        super().__init__()
        self.options = dict(options)

    @classmethod
    def layer_names(cls, options: Mapping[str, Any]) -> list[str]:
        raise NotImplementedError

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        """Raise a one-line :class:`~rvgen.errors.RecipeError` if the backbone cannot be built with
        these validated options (a missing weights file), cheaply, before any work starts."""

    def features(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def tile_geometry(self, layers: Iterable[str]) -> Any:
        """How ``layers`` sit on the pixel grid, for tiled evaluation of large images: a
        :class:`rvgen.engine.tiling.TileGeometry` (each layer's stride, and the margin its
        features reach past a position), or None (the default) when this backbone cannot be
        evaluated in tiles."""
        return None

    def keep_layers(self, options: Mapping[str, Any], layers: Iterable[str]) -> int:
        """Set ``self.names`` to the layers up to the deepest one in ``layers`` (all of them
        when none is) and return how many that is: the depth to build."""
        names = self.layer_names(options)
        wanted = [n for n in layers if n in names]
        depth = max((names.index(n) for n in wanted), default=len(names) - 1) + 1
        self.names = names[:depth]
        return depth

    def register_normalization(self, normalize: str) -> None:
        """``mean`` and ``std`` buffers: ImageNet's for ``"imagenet"``, identity for ``"none"``."""
        imagenet = normalize == "imagenet"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN if imagenet else (0.0, 0.0, 0.0)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD if imagenet else (1.0, 1.0, 1.0)).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        layers = set(layers)
        out = self.features(x, layers - {PIXELS}) if layers - {PIXELS} else {}
        if PIXELS in layers:
            out[PIXELS] = x
        return out


def full_precision(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in float32 even inside a bf16 autocast region.

    Backbones run their first layer (the one that sees the pixels) this way: autocast
    would round the image to bf16's 8-bit mantissa, so the small steps an optimiser takes
    (1e-4 per pixel) would not change the loss at all and L-BFGS's line search would stall.
    """
    try:
        autocast = torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device without autocast (meta, for memory estimates)
        autocast = False
    if not autocast:
        return module(x)
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())

