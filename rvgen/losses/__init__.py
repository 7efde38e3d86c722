"""Losses compare the features of the image being optimised with a target statistic."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from rvgen.params import Param


class Loss(nn.Module):
    """Base class of loss plugins.

    ``prepare`` turns the target image's features at one layer into whatever the loss
    compares against (the features themselves, a Gram matrix, a histogram); it runs once
    per target, not once per iteration. ``forward`` returns one loss value per image of the
    batch, shape (B,). Losses that compare with nothing (``needs_target = False``, such as
    total variation) get ``target=None``.

    Built-in losses are *scale-free*: multiplying the features and the target by a constant
    leaves the value unchanged. That keeps layers of very different magnitude comparable and
    lets automatic layer weighting work for any weight initialisation.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    needs_target: ClassVar[bool] = True

    def __init__(self, **options: Any):
        super().__init__()
        self.options = {**{p.name: p.default for p in self.params}, **options}

    def prepare(self, features: torch.Tensor) -> Any:
        return features.detach()

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        raise NotImplementedError


def feature_scale(features: torch.Tensor) -> torch.Tensor:
    """Root mean square of a target's features (1 where it is all zeros), as a 0-d tensor.

    Dividing by it before squaring keeps tiny activations (deep layers of a network with
    small random weights) from underflowing float32.
    """
    rms = features.detach().float().pow(2).mean().sqrt()
    return torch.where(rms > 0, rms, torch.ones_like(rms))


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), averaged over positions so image size does not matter."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)
