"""Built-in losses: content (feature maps), gram (Gatys style statistics), tv (smoothness).

All three are batched: every statistic (the scale of a target, the norm of its Gram) is
taken per image, so an image's loss does not depend on which images share its batch.
"""

from __future__ import annotations

from typing import Any

import torch

from rvgen.hookspecs import hookimpl
from rvgen.losses import Loss, gram_matrix, image_scale


class ContentLoss(Loss):
    """Squared error between feature maps, relative to the target's mean square."""

    name = "content"
    description = "squared error of feature maps (Mahendran & Vedaldi), relative to the target's energy"
    batched = True

    def prepare(self, features: torch.Tensor) -> Any:
        scale = image_scale(features)
        return features.detach().float() / scale, scale

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        scaled_target, scale = target
        diff = features.float() / scale - scaled_target
        return diff.pow(2).flatten(1).mean(1)


class GramLoss(Loss):
    """Squared error between Gram matrices, relative to the target Gram's mean square."""

    name = "gram"
    description = "squared error of Gram matrices (Gatys et al.), relative to the target's, computed in float32"
    batched = True

    def prepare(self, features: torch.Tensor) -> Any:
        scale = image_scale(features)
        gram = gram_matrix(features.detach()) / scale.flatten(1).pow(2).unsqueeze(-1)
        norm = gram.pow(2).flatten(1).mean(1).clamp_min(torch.finfo(torch.float32).tiny)
        return gram, scale.view(-1, 1, 1).pow(2), norm

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        # gram(f / s) = gram(f) / s²: scaling the small Gram, not the large features.
        gram, scale_squared, norm = target
        diff = gram_matrix(features) / scale_squared - gram
        return diff.pow(2).flatten(1).mean(1) / norm


class TotalVariationLoss(Loss):
    """Mean squared difference between neighbouring pixels; suppresses speckle."""

    name = "tv"
    description = "total variation (squared differences of neighbouring pixels); use on the pixels layer"
    needs_target = False
    batched = True

    def forward(self, features: torch.Tensor, target: Any = None) -> torch.Tensor:
        dx = features[..., :, 1:] - features[..., :, :-1]
        dy = features[..., 1:, :] - features[..., :-1, :]
        return dx.float().pow(2).flatten(1).mean(1) + dy.float().pow(2).flatten(1).mean(1)


@hookimpl
def register_losses(register):
    register(ContentLoss)
    register(GramLoss)
    register(TotalVariationLoss)
