"""rvgen-histogram: an example third-party rvgen plugin that adds the ``histogram`` loss.

The histogram loss of Risser, Wilmot & Barnes (2017), computed exactly as 1-D optimal
transport per channel: sort each channel's values over all positions, for the image being
optimised and for the target, and compare the sorted lists. Two images with the same
colour (or feature) distribution score zero wherever their values sit, so the loss fixes
*which* values occur and how often, and nothing about *where*. On the ``pixels`` layer it
matches colour histograms; on a feature layer it matches the distribution of every
channel's activations (the part of the statistics a Gram matrix does not pin down).

With ``projections = K`` it compares K fixed random directions of the channel space
instead of the channel axes (sliced Wasserstein distance, Heitz et al. 2021, with the
directions drawn once from a seeded generator so the objective stays deterministic and
L-BFGS can use it). That also constrains how channels vary together, which per-channel
histograms cannot: on ``pixels`` it keeps colour combinations, not just each of R, G, B.

Install it (``pip install plugins/rvgen-histogram``) and ``rvgen plugins`` lists it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from rvgen import hookimpl
from rvgen.losses import Loss, feature_scale
from rvgen.params import Param

__version__ = "0.1.0"

PROJECTION_SEED = 0
"""Seed of the random directions when ``projections > 0`` (fixed: same recipe, same loss)."""


class HistogramTarget(NamedTuple):
    """What :meth:`HistogramLoss.prepare` keeps of a target: no positions, only values."""

    sorted_values: torch.Tensor  # (B_t, K, N_t) float32, ascending along the last axis
    scale: torch.Tensor  # 0-d: the target's RMS, divides the current features too
    norm: torch.Tensor  # 0-d: mean square of the scaled (projected) target values
    directions: torch.Tensor | None  # (K, C) unit rows, or None for the channel axes


def resample_sorted(sorted_values: torch.Tensor, n: int) -> torch.Tensor:
    """Quantiles of sorted lists (..., N_t) at ``n`` evenly spaced levels, (..., n).

    Sample ``i`` of ``n`` sits at quantile level ``(i + 0.5) / n``, the same convention
    as the sorted values themselves (sample ``k`` of ``N_t`` at ``(k + 0.5) / N_t``), so
    ``n == N_t`` returns the input unchanged; in between, linear interpolation; beyond the
    first and last samples, the extremes.
    """
    size = sorted_values.shape[-1]
    if size == n:
        return sorted_values
    pos = (torch.arange(n, device=sorted_values.device, dtype=torch.float64) + 0.5) * (size / n) - 0.5
    pos = pos.clamp_(0, size - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_(max=size - 1)
    frac = (pos - lo).to(sorted_values.dtype)
    return torch.lerp(sorted_values[..., lo], sorted_values[..., hi], frac)


class HistogramLoss(Loss):
    """Squared error between sorted channel values (1-D optimal transport), relative to the target's."""

    name = "histogram"
    description = "per-channel histogram matching (Risser et al. 2017) by sorting; on pixels it matches colours"
    params = (
        Param("projections", int, 0,
              "0: a histogram per channel; K > 0: along K fixed random directions (sliced Wasserstein), "
              "which also keeps channel combinations",
              minimum=0, maximum=4096),
    )

    def __init__(self, **options: Any):
        # rvgen passes the validated [losses.histogram] table, or nothing when the recipe has
        # none: fall back to the declared defaults so both cases behave the same.
        options = {**{p.name: p.default for p in self.params}, **options}
        super().__init__(**options)
        self.projections = int(options["projections"])

    def _directions(self, channels: int, device: torch.device) -> torch.Tensor | None:
        if self.projections == 0:
            return None
        generator = torch.Generator().manual_seed(PROJECTION_SEED)
        d = torch.randn((self.projections, channels), generator=generator, dtype=torch.float32)
        return (d / d.norm(dim=1, keepdim=True)).to(device)

    @staticmethod
    def _values(features: torch.Tensor, scale: torch.Tensor, directions: torch.Tensor | None) -> torch.Tensor:
        """(B, C, H, W) -> (B, K, H*W) float32 scaled values, projected if asked."""
        b, c = features.shape[:2]
        values = features.float().reshape(b, c, -1) / scale
        if directions is not None:
            values = torch.einsum("kc,bcn->bkn", directions, values)
        return values

    def prepare(self, features: torch.Tensor) -> HistogramTarget:
        features = features.detach()
        scale = feature_scale(features)
        directions = self._directions(features.shape[1], features.device)
        sorted_values = self._values(features, scale, directions).sort(dim=-1).values
        norm = sorted_values.pow(2).mean()
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # an all-zero target: plain squared error
        return HistogramTarget(sorted_values, scale, norm, directions)

    def forward(self, features: torch.Tensor, target: HistogramTarget) -> torch.Tensor:
        current = self._values(features, target.scale, target.directions).sort(dim=-1).values
        reference = resample_sorted(target.sorted_values, current.shape[-1])
        if reference.shape[0] not in (1, current.shape[0]):
            raise ValueError(f"histogram: a target batch of {reference.shape[0]} for {current.shape[0]} images")
        if reference.shape[1] != current.shape[1]:
            raise ValueError(f"histogram: target has {reference.shape[1]} channels, features {current.shape[1]}")
        return (current - reference).pow(2).flatten(1).mean(1) / target.norm


@hookimpl
def register_losses(register):
    register(HistogramLoss)
