"""Guides: masks that say where on an image a term's statistics are taken (guided Gram matrices).

A guide is a (B, 1, H, W) map in [0, 1] over an image's pixels: 1 where a region is, 0 where
it is not, soft in between. A term with a guide compares the statistics of the features
*weighted by the guide at that layer*, normalised by the guide's mass there, so a small
region is held to its painting as firmly as a large one (Gatys et al. 2017, "Controlling
Perceptual Factors in Neural Style Transfer"). For a Gram matrix that is

    G = sum_p w(p) f(p) f(p)^T / sum_p w(p),

which the engine gets from any ``guidable`` loss by handing it the features times
``sqrt(w N / sum w)`` (N positions): the loss's own mean over positions becomes the weighted
mean. A guide of ones gives the unguided statistic exactly.

The guide reaches each layer's grid (:func:`propagate`) in one of three ways:

- ``resize``: the mean of the guide over each position's stride cell (area resampling);
- ``inside``: a position belongs to the region as much as the *least* covered pixel of its
  receptive field (the region eroded by the field: only features that saw nothing else);
- ``all``: as much as the *most* covered pixel of its receptive field (dilated: every
  feature that saw any of it).

The receptive field comes from the backbone's declared geometry (each layer's stride and
margin, :class:`~rvgen.engine.tiling.TileGeometry`); a backbone that declares none gets
``resize`` onto the layer's grid whatever the mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("resize", "inside", "all")
EMPTY = 1e-6  # a guide whose mean at a layer is below this has no region there (its term counts 0)


def resize_guide(guide: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A guide (B, 1, h, w) resampled to ``shape`` (H, W): area-weighted when shrinking,
    bilinear when growing, kept in [0, 1]."""
    if tuple(guide.shape[-2:]) == tuple(shape):
        return guide
    shrink = shape[0] <= guide.shape[-2] and shape[1] <= guide.shape[-1]
    out = F.interpolate(guide, size=tuple(shape), mode="bilinear", antialias=shrink, align_corners=False)
    return out.clamp(0, 1)


def propagate(guide: torch.Tensor, shape: tuple[int, int], mode: str = "resize",
              stride: int | None = None, margin: int | None = None) -> torch.Tensor:
    """The guide (B, 1, H, W) at the pixels, carried to a layer whose map is ``shape`` (h, w).

    ``stride`` and ``margin`` are the layer's (pixels per position, and how far past a
    position its receptive field reaches); without them, or with ``mode = "resize"``, the
    guide is area-resampled onto the layer's grid."""
    if mode not in MODES:
        raise ValueError(f"unknown guide mode {mode!r}; modes: {', '.join(MODES)}")
    g = guide.float()
    if stride is None or margin is None or (mode == "resize" and stride == 1):
        return resize_guide(g, shape)
    if mode == "resize":
        out = F.avg_pool2d(g, kernel_size=stride, stride=stride)
    else:
        # Position p of a layer sees pixels [p s - margin, p s + s - 1 + margin]: a window of
        # s + 2 margin pixels, stepped by s. Max pooling pads with -inf, so past the image's
        # edge nothing counts (an image's border does not erode the region).
        kernel, pad = stride + 2 * margin, margin
        out = F.max_pool2d(g if mode == "all" else -g, kernel_size=kernel, stride=stride, padding=pad)
        out = out if mode == "all" else -out
    if tuple(out.shape[-2:]) != tuple(shape):  # a map that does not floor as the pooling does
        out = resize_guide(out, shape)
    return out


def weighting(guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The factor (B, 1, h, w) a layer's features are multiplied by so that a loss's mean over
    positions becomes the guide-weighted mean (``sqrt(w N / sum w)``), and whether the region
    is there at all (B,): 1.0 where it is, 0.0 where the guide is empty at this layer (the
    factor is then 0 and the term's loss counts nothing for that image)."""
    w = guide.float().clamp(0, 1)
    mean = w.flatten(1).mean(1)
    present = (mean > EMPTY).float()
    factor = (w / mean.clamp_min(EMPTY).view(-1, 1, 1, 1)).sqrt() * present.view(-1, 1, 1, 1)
    return factor, present


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """``mask`` (B, 1, H, W) blurred by a Gaussian of standard deviation ``radius`` / 2 pixels,
    cut off at ``radius`` * 1.5 (so pixels further than that from the region stay exactly 0,
    or exactly 1 inside it); ``radius`` 0 returns it unchanged."""
    if radius <= 0:
        return mask
    sigma = radius / 2
    reach = max(1, int(round(radius * 1.5)))
    x = torch.arange(-reach, reach + 1, dtype=torch.float32, device=mask.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    m = mask.float()
    m = F.pad(m, (reach, reach, 0, 0), mode="replicate")
    m = F.conv2d(m, kernel.view(1, 1, 1, -1))
    m = F.pad(m, (0, 0, reach, reach), mode="replicate")
    m = F.conv2d(m, kernel.view(1, 1, -1, 1))
    return m.clamp(0, 1)


def composite(result: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``result`` where ``mask`` (B, 1, H', W', resized to the result) is 1, ``photo`` where it is 0."""
    m = resize_guide(mask.to(result.device, torch.float32), tuple(result.shape[-2:]))
    photo = photo.to(result.device, result.dtype)
    if tuple(photo.shape[-2:]) != tuple(result.shape[-2:]):
        photo = F.interpolate(photo, size=tuple(result.shape[-2:]), mode="bilinear", antialias=True,
                              align_corners=False).clamp(0, 1)
    return photo + (result - photo) * m.to(result.dtype)
