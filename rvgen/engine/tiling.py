"""Exact tiled evaluation: one image's loss and gradient, one tile's activations alive at a time.

The built-in losses compare statistics that are sums over positions (a Gram matrix, a
feature map's squared error, total variation). So an evaluation can run tile by tile:

- pass 1, without autograd: every tile (its interior plus a halo) goes through the
  backbone, and its interior's share of every layer's statistic is added up; from the
  totals come the loss and, by autograd on the small statistics alone, the gradient of the
  loss with respect to each statistic (a C x C matrix per Gram layer);
- pass 2, per tile: forward with autograd, the tile's statistic contracted with that
  gradient, backward into the tile's pixels. The pixel gradients of all tiles add up to
  the whole image's gradient.

Tile interiors start on multiples of the backbone's total stride, so every layer's feature
grid lines up with the whole image's; a halo covering the deepest layer's receptive field
makes each interior's features equal to the whole image's there (the zero padding at a
tile's edge only reaches into the halo). With the full halo the tiled loss and gradient
equal the untiled ones up to float rounding; a smaller halo trades exactness for speed.

A loss takes part by declaring ``tiled = True`` and implementing ``statistic(features,
target, window)`` (its additive share over the window's positions) and ``finish(statistic,
target)`` (the loss from the summed statistic). A backbone takes part by returning a
:class:`TileGeometry` from ``tile_geometry(layers)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class TileGeometry:
    """How a backbone's layers sit on the pixel grid: each layer's stride (pixels per feature
    position) and the margin in pixels, on each side, that the deepest layer's features
    depend on (the receptive field reaching past a position)."""

    strides: dict[str, int]
    margin: int

    @property
    def stride(self) -> int:
        """The largest stride: tile origins must be multiples of it."""
        return max(self.strides.values(), default=1)

    @property
    def halo(self) -> int:
        """The margin rounded up to the stride: the halo that makes tiles exact."""
        return round_up(self.margin, self.stride)


@dataclass(frozen=True)
class Window:
    """Where a tile's interior lies, for one layer: ``rows`` and ``cols`` slice the interior
    out of the tile's feature map; ``top`` and ``left`` are the interior's first position in
    the whole image's feature map, of size ``height`` x ``width``."""

    rows: slice
    cols: slice
    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Tile:
    """One tile: the pixels it reads (``crop``, interior plus halo, clipped to the image) and
    its interior, both as (top, bottom, left, right) in pixels."""

    crop: tuple[int, int, int, int]
    interior: tuple[int, int, int, int]

    def slices(self) -> tuple[slice, slice]:
        top, bottom, left, right = self.crop
        return slice(top, bottom), slice(left, right)

    def window(self, stride: int, shape: tuple[int, int]) -> Window:
        """The interior at a layer of ``stride`` whose whole-image map is ``shape`` (H, W)."""
        height, width = shape
        top, bottom, left, right = self.interior
        crop_top, _, crop_left, _ = self.crop
        first_row, first_col = top // stride, left // stride
        # Interior ends are multiples of the stride except at the image's edge, where the
        # map ends at floor(pixels / stride), as the network's pooling floors.
        last_row, last_col = min(bottom // stride, height), min(right // stride, width)
        rows = slice(first_row - crop_top // stride, last_row - crop_top // stride)
        cols = slice(first_col - crop_left // stride, last_col - crop_left // stride)
        return Window(rows, cols, first_row, first_col, height, width)


@dataclass(frozen=True)
class TilePlan:
    """The tiles of an image of ``shape`` (H, W): interiors ``size`` pixels square (the last
    ones smaller), each read with ``halo`` pixels around it."""

    shape: tuple[int, int]
    size: int
    halo: int
    geometry: TileGeometry

    def __post_init__(self) -> None:
        stride = self.geometry.stride
        if self.size % stride or self.size <= 0:
            raise ValueError(f"a tile size must be a positive multiple of the network's stride {stride}, got {self.size}")
        if self.halo % stride or self.halo < 0:
            raise ValueError(f"a halo must be a multiple of the network's stride {stride}, got {self.halo}")

    def __iter__(self) -> Iterator[Tile]:
        height, width = self.shape
        for top in range(0, height, self.size):
            for left in range(0, width, self.size):
                bottom, right = min(height, top + self.size), min(width, left + self.size)
                crop = (max(0, top - self.halo), min(height, bottom + self.halo),
                        max(0, left - self.halo), min(width, right + self.halo))
                yield Tile(crop, (top, bottom, left, right))

    def __len__(self) -> int:
        return math.ceil(self.shape[0] / self.size) * math.ceil(self.shape[1] / self.size)

    @property
    def crop_side(self) -> int:
        """The long side of the largest crop: what one tile's activations are sized by."""
        return min(max(self.shape), self.size + 2 * self.halo)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
