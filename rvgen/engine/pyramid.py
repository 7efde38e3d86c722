"""Coarse-to-fine: the levels of the image pyramid and resizing between them.

With ``scales > 1`` a batch is optimised first at the smallest level, then upsampled to the
next and optimised again, up to the output size (as crowsonkb's style_transfer does). Coarse
levels are cheap and settle the large structures, so the full-size level needs far fewer
iterations for the same loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


COARSE_ABOVE = 1024  # px: longer sides start from a coarser level even at scales = 1


@dataclass(frozen=True)
class PyramidConfig:
    """``scales`` levels at most (1: single scale), each ``1 / scale_step`` the size of the next,
    none with a long side under ``min_size``; ``scale_iterations`` per level below the output
    size: one number for all of them, a sequence from the coarsest level up to the one just
    below the output size (see :meth:`budgets`), or ``None`` (the optimiser's ``iterations``)."""

    scales: int = 1
    min_size: int = 64
    scale_iterations: int | tuple[int, ...] | None = None
    scale_step: float = 2.0
    upsample_detail: bool = False
    """Start each finer level from the coarser result plus the starting image's detail that
    upsampling loses (see :meth:`rvgen.engine.synth.Synthesizer._upsample`)."""

    def budgets(self, levels: int, iterations: int) -> list[int]:
        """Iterations at each of ``levels`` levels, smallest first; the output level gets
        ``iterations``. A sequence of ``scale_iterations`` is aligned to the output end: its
        last entry is the level just below the output size, and its first entry also serves
        any coarser level it does not reach (a small image, whose coarse levels are left
        out, drops the coarsest entries instead)."""
        below = levels - 1
        given = self.scale_iterations
        if given is None:
            lower = [iterations] * below
        elif isinstance(given, int):
            lower = [given] * below
        elif below <= len(given):
            lower = list(given[len(given) - below:])
        else:
            lower = [given[0]] * (below - len(given)) + list(given)
        return lower + [iterations]

    def levels(self, canvas: tuple[int, int], min_side: int = 1) -> list[float]:
        """Scale factors of the levels, smallest first, leaving out coarse levels whose short
        side would be under ``min_side`` (too small for the network's deepest layer used).
        A single-scale setting still starts images larger than :data:`COARSE_ABOVE` px from
        coarser levels, halving down to it: large structures only form at coarse scales, and
        a large level needs few iterations when it starts from a good half-size result."""
        scales = self.scales
        if scales == 1 and max(canvas) > COARSE_ABOVE:
            scales = 1 + math.ceil(math.log2(max(canvas) / COARSE_ABOVE))
        step = self.scale_step if self.scales > 1 else 2.0
        factors = pyramid(canvas, scales, self.min_size, step)
        return [f for f in factors[:-1] if min(scaled(canvas, f)) >= min_side] + factors[-1:]


def resize(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize (B, 3, H, W) to ``shape``: antialiased when shrinking, bicubic (clamped) when growing."""
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    if shape[0] <= image.shape[-2] and shape[1] <= image.shape[-1]:
        return F.interpolate(image, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(image, size=shape, mode="bicubic", align_corners=False).clamp(0, 1)


def scaled(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def pyramid(canvas: tuple[int, int], scales: int, min_size: int, step: float = 2.0) -> list[float]:
    """Scale factors of the levels, smallest first, ending at 1: dividing the long side by
    ``step`` each level down, for ``scales`` levels at most, none whose long side is under
    ``min_size``."""
    long_side = max(canvas)
    factors = [1.0]
    for k in range(1, scales):
        if long_side / step**k < min_size:
            break
        factors.insert(0, step**-k)
    return factors
