"""Built-in losses: content (feature maps), gram (Gatys style statistics), tv (smoothness),
temporal (a video frame near the previous result, warped).

All three are batched: every statistic (the scale of a target, the norm of its Gram) is
taken per image, so an image's loss does not depend on which images share its batch. All
three are tiled: each is a function of a sum over positions, so large images can be
evaluated tile by tile (:mod:`rvgen.engine.tiling`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rvgen.engine.tiling import Window
from rvgen.hookspecs import hookimpl
from rvgen.losses import Loss, gram_matrix, image_scale, widen


def interior(features: torch.Tensor, window: Window) -> torch.Tensor:
    return features[..., window.rows, window.cols]


class ContentLoss(Loss):
    """Squared error between feature maps, relative to the target's mean square."""

    name = "content"
    description = "squared error of feature maps (Mahendran & Vedaldi), relative to the target's energy"
    batched = True
    tiled = True

    def prepare(self, features: torch.Tensor) -> Any:
        scale = image_scale(features)
        return widen(features.detach()) / scale, scale

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        scaled_target, scale = target
        diff = widen(features) / scale - scaled_target
        return diff.pow(2).flatten(1).mean(1)

    def statistic(self, features: torch.Tensor, target: Any, window: Window) -> torch.Tensor:
        scaled_target, scale = target
        f = widen(interior(features, window)) / scale
        t = scaled_target[..., window.top:window.top + f.shape[-2], window.left:window.left + f.shape[-1]]
        return (f - t).pow(2).flatten(1).sum(1) / (f.shape[1] * window.height * window.width)

    def finish(self, statistic: torch.Tensor, target: Any) -> torch.Tensor:
        return statistic


class GramLoss(Loss):
    """Squared error between Gram matrices, relative to the target Gram's mean square."""

    name = "gram"
    description = "squared error of Gram matrices (Gatys et al.), relative to the target's, computed in float32"
    batched = True
    tiled = True
    blendable = True
    guidable = True

    def prepare(self, features: torch.Tensor) -> Any:
        scale = image_scale(features)
        gram = gram_matrix(features.detach()) / scale.flatten(1).pow(2).unsqueeze(-1)
        norm = gram.pow(2).flatten(1).mean(1).clamp_min(torch.finfo(torch.float32).tiny)
        return gram, scale.view(-1, 1, 1).pow(2), norm

    def mean_target(self, targets: Sequence[tuple[Any, float]]) -> Any:
        """The weighted mean of the targets' normalised Grams, with the weighted mean of their
        squared scales to normalise the result's Gram by; the norm is the mean's own."""
        total = sum(weight for _, weight in targets)
        gram = sum(t[0] * (weight / total) for t, weight in targets)
        scale_squared = sum(t[1] * (weight / total) for t, weight in targets)
        norm = gram.pow(2).flatten(1).mean(1).clamp_min(torch.finfo(torch.float32).tiny)
        return gram, scale_squared, norm

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        # gram(f / s) = gram(f) / s²: scaling the small Gram, not the large features.
        gram, scale_squared, norm = target
        diff = gram_matrix(features) / scale_squared - gram
        return diff.pow(2).flatten(1).mean(1) / norm

    def statistic(self, features: torch.Tensor, target: Any, window: Window) -> torch.Tensor:
        # The interior's share of the whole map's Gram, which averages over all its positions.
        f = interior(features, window)
        share = f.shape[-2] * f.shape[-1] / (window.height * window.width)
        return gram_matrix(f) * share

    def finish(self, statistic: torch.Tensor, target: Any) -> torch.Tensor:
        gram, scale_squared, norm = target
        return (statistic / scale_squared - gram).pow(2).flatten(1).mean(1) / norm


class TotalVariationLoss(Loss):
    """Mean squared difference between neighbouring pixels; suppresses speckle."""

    name = "tv"
    description = "total variation (squared differences of neighbouring pixels); use on the pixels layer"
    needs_target = False
    batched = True
    tiled = True

    def forward(self, features: torch.Tensor, target: Any = None) -> torch.Tensor:
        dx = features[..., :, 1:] - features[..., :, :-1]
        dy = features[..., 1:, :] - features[..., :-1, :]
        return widen(dx).pow(2).flatten(1).mean(1) + widen(dy).pow(2).flatten(1).mean(1)

    def statistic(self, features: torch.Tensor, target: Any, window: Window) -> torch.Tensor:
        # Each difference belongs to the tile whose interior holds its first pixel; its
        # second pixel is in the tile's halo, or past the image's edge (then it has none).
        rows, cols = window.rows, window.cols
        right = slice(cols.start, min(cols.stop, features.shape[-1] - 1))
        below = slice(rows.start, min(rows.stop, features.shape[-2] - 1))
        dx = features[..., rows, right.start + 1:right.stop + 1] - features[..., rows, right]
        dy = features[..., below.start + 1:below.stop + 1, cols] - features[..., below, cols]
        h, w, c = window.height, window.width, features.shape[1]
        return (widen(dx).pow(2).flatten(1).sum(1) / (c * h * (w - 1))
                + widen(dy).pow(2).flatten(1).sum(1) / (c * (h - 1) * w))

    def finish(self, statistic: torch.Tensor, target: Any = None) -> torch.Tensor:
        return statistic


class TemporalLoss(Loss):
    """Ruder et al.'s short-term temporal loss on the pixels: the weighted mean squared
    difference between the image and its anchor (the previous frame's result warped into this
    frame), weighted by each pixel's reliability. The target is the anchor image itself, RGB
    and weight (B, 4, H, W), a fixed target: nothing flows back through the warp."""

    name = "temporal"
    description = ("video frames: squared difference to the previous result warped by the optical flow, where the "
                   "flow is reliable (Ruder et al.); use on the pixels layer, target anchor")
    batched = True
    tiled = True

    def prepare(self, features: torch.Tensor) -> Any:
        anchor = widen(features.detach())
        return anchor[:, :3], anchor[:, 3:4].clamp(0, 1)

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        image, weight = target
        return (weight * (widen(features) - image).pow(2)).flatten(1).mean(1)

    def statistic(self, features: torch.Tensor, target: Any, window: Window) -> torch.Tensor:
        image, weight = target
        f = widen(interior(features, window))
        rows = slice(window.top, window.top + f.shape[-2])
        cols = slice(window.left, window.left + f.shape[-1])
        diff = weight[..., rows, cols] * (f - image[..., rows, cols]).pow(2)
        return diff.flatten(1).sum(1) / (f.shape[1] * window.height * window.width)

    def finish(self, statistic: torch.Tensor, target: Any) -> torch.Tensor:
        return statistic


@hookimpl
def register_losses(register):
    register(ContentLoss)
    register(GramLoss)
    register(TotalVariationLoss)
    register(TemporalLoss)
