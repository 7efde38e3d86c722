"""Built-in losses: content (feature maps), gram (Gatys style statistics), tv (smoothness)."""

from __future__ import annotations

from typing import Any

import torch

from rvgen.hookspecs import hookimpl
from rvgen.losses import Loss, feature_scale, gram_matrix


class ContentLoss(Loss):
    """Squared error between feature maps, relative to the target's mean square."""

    name = "content"
    description = "squared error of feature maps (Mahendran & Vedaldi), relative to the target's energy"

    def prepare(self, features: torch.Tensor) -> Any:
        scale = feature_scale(features)
        return features.detach().float() / scale, scale

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        scaled_target, scale = target
        diff = features.float() / scale - scaled_target
        return diff.pow(2).flatten(1).mean(1)


class GramLoss(Loss):
    """Squared error between Gram matrices, relative to the target Gram's mean square."""

    name = "gram"
    description = "squared error of Gram matrices (Gatys et al.), relative to the target's, computed in float32"

    def prepare(self, features: torch.Tensor) -> Any:
        scale = feature_scale(features)
        gram = gram_matrix(features.detach().float() / scale)
        norm = gram.pow(2).mean().clamp_min(torch.finfo(torch.float32).tiny)
        return gram, scale, norm

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        gram, scale, norm = target
        diff = gram_matrix(features.float() / scale) - gram
        return diff.pow(2).flatten(1).mean(1) / norm


class TotalVariationLoss(Loss):
    """Mean squared difference between neighbouring pixels; suppresses speckle."""

    name = "tv"
    description = "total variation (squared differences of neighbouring pixels); use on the pixels layer"
    needs_target = False

    def forward(self, features: torch.Tensor, target: Any = None) -> torch.Tensor:
        dx = features[..., :, 1:] - features[..., :, :-1]
        dy = features[..., 1:, :] - features[..., :-1, :]
        return dx.float().pow(2).flatten(1).mean(1) + dy.float().pow(2).flatten(1).mean(1)


@hookimpl
def register_losses(register):
    register(ContentLoss)
    register(GramLoss)
    register(TotalVariationLoss)
