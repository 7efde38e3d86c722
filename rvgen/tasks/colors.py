"""Colour controls of the style task: keep the photo's colours, or match the style's to them.

- :func:`keep_colors` (``colors = "content"``): the result's luminance with the photo's
  chroma, in YCbCr (ITU-R BT.601, full range, as JPEG), as neural-style's
  ``-original_colors 1`` does after optimising.
- :func:`match_colors` (``colors = "match"``): the style image's colours moved to the
  photo's mean and covariance before optimising (the linear colour transfer of Gatys et al.
  2017, "Controlling Perceptual Factors in Neural Style Transfer", with the symmetric
  matrix square root of Hertzmann's image analogies), then clamped to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RGB_TO_YCBCR = torch.tensor([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
], dtype=torch.float64)
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)
EPS = 1e-5  # added to the colour covariances' diagonals (a flat image has none)


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image.device, image.dtype), image)


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> Y in [0, 1], Cb and Cr centred on 0 (in [-0.5, 0.5])."""
    return _apply(RGB_TO_YCBCR, image)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return _apply(YCBCR_TO_RGB, image)


def keep_colors(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The luminance of ``result`` with the chroma of ``content`` (resized to the result),
    clamped to [0, 1]."""
    if content.shape[-2:] != result.shape[-2:]:
        content = F.interpolate(content, size=result.shape[-2:], mode="bilinear", antialias=True,
                                align_corners=False)
    y = rgb_to_ycbcr(result.float())[:, :1]
    chroma = rgb_to_ycbcr(content.to(result.device, torch.float32))[:, 1:]
    return ycbcr_to_rgb(torch.cat([y, chroma], dim=1)).clamp(0, 1).to(result.dtype)


def _moments(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = image[0].reshape(3, -1).double()
    mean = pixels.mean(1, keepdim=True)
    centred = pixels - mean
    cov = centred @ centred.T / pixels.shape[1] + EPS * torch.eye(3, dtype=torch.float64, device=image.device)
    return mean, cov


def _sqrt(cov: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(cov)
    return vectors @ torch.diag(values.clamp_min(EPS).pow(power)) @ vectors.T


def match_colors(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``image`` (1, 3, h, w) with its colours' mean and covariance moved to ``target``'s
    (1, 3, H, W): x -> C_t^½ C_s^-½ (x - μ_s) + μ_t, clamped to [0, 1]."""
    mean_s, cov_s = _moments(image)
    mean_t, cov_t = _moments(target.to(image.device))
    transform = _sqrt(cov_t) @ _sqrt(cov_s, -0.5)
    pixels = image[0].reshape(3, -1).double()
    out = transform @ (pixels - mean_s) + mean_t
    return out.reshape(image.shape).clamp(0, 1).to(image.dtype)
