"""Scores of a result against a reference image, for ``rvgen compare``.

All take (1, 3, H, W) tensors in [0, 1] and return a float.

- :func:`psnr` and :func:`ssim` (scikit-image's) for reconstructions: how much of the input
  came back. PSNR is capped at :data:`PSNR_CAP` so an exact copy gives a finite number.
- :class:`GramEvaluator` for textures and styles: the relative Gram-matrix error on an
  *independent* network (a random VGG-19 with a seed no recipe uses by default), so the
  score is not the loss that was optimised.
- :func:`colour_distance`: how far the colour distributions are apart (per-channel
  Wasserstein-1 distance, in units of the [0, 1] pixel range).
- :func:`structure_distance`: what Gram matrices do not see, large-scale regularity. It
  compares how strongly each image correlates with itself at long distances (an eighth to a
  half of the image), where a brick wall's courses or a grid's period show up and a texture
  that only matches local statistics does not.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0
EVALUATOR_SEED = 20160
"""Seed of the evaluator network; a compared backbone with this seed would grade its own loss."""
EVALUATOR_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STRUCTURE_SIZE = 64
QUANTILES = 256


def _numpy(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().clamp(0, 1).cpu()[0].permute(1, 2, 0).numpy().astype(np.float64)


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} needs images of the same size, got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for [0, 1] images, at most :data:`PSNR_CAP`."""
    from skimage.metrics import peak_signal_noise_ratio

    _same_shape(result, reference, "PSNR")
    a, b = _numpy(result), _numpy(reference)
    if np.array_equal(a, b):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(b, a, data_range=1.0)))


def ssim(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Structural similarity (scikit-image, colour channels averaged); 1 is identical."""
    from skimage.metrics import structural_similarity

    _same_shape(result, reference, "SSIM")
    a, b = _numpy(result), _numpy(reference)
    side = min(a.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(b, a, channel_axis=-1, data_range=1.0, win_size=max(win, 3)))


def colour_distance(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over R, G, B of the Wasserstein-1 distance between the two images' value distributions."""
    q = torch.linspace(0, 1, QUANTILES, dtype=torch.float64)
    a = result.detach().double().clamp(0, 1).cpu()[0].flatten(1)
    b = reference.detach().double().clamp(0, 1).cpu()[0].flatten(1)
    return float((torch.quantile(a, q, dim=1) - torch.quantile(b, q, dim=1)).abs().mean())


def autocorrelation(image: torch.Tensor, size: int = STRUCTURE_SIZE) -> torch.Tensor:
    """Normalised autocorrelation of the luminance of the central square, resized to ``size``.

    Returned with lag 0 at the centre, shape (size + 1, size + 1), lags -size/2..size/2;
    1 at lag 0. Zero padding makes it the plain (not circular) autocorrelation.
    """
    x = image.detach().float().clamp(0, 1).cpu()
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top:top + side, left:left + side]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    grey = (0.299 * x[0, 0] + 0.587 * x[0, 1] + 0.114 * x[0, 2]).double()
    grey = grey - grey.mean()
    spectrum = torch.fft.rfft2(grey, s=(2 * size, 2 * size))
    acf = torch.fft.irfft2(spectrum.abs().pow(2), s=(2 * size, 2 * size))
    acf = torch.fft.fftshift(acf)
    centre = size
    half = size // 2
    acf = acf[centre - half:centre + half + 1, centre - half:centre + half + 1]
    zero = acf[half, half]
    return acf / zero if zero > 0 else torch.zeros_like(acf)


def structure_distance(result: torch.Tensor, reference: torch.Tensor, size: int = STRUCTURE_SIZE) -> float:
    """How differently the two images repeat at long range.

    For every whole-pixel distance from size/8 to size/2, the strongest positive and negative
    autocorrelation at that distance (in any direction) form a profile; the result is the
    RMS difference of the two profiles. A brick wall has strong peaks at the brick and
    course spacings, white noise none, a texture that matches only local statistics weak
    ones. Taking the extremes per distance makes it blind to where and in which direction
    a peak lies, so two crops of one wall at slightly different angles still match (a
    lag-by-lag comparison penalised them more than noise).
    """
    a, b = autocorrelation(result, size), autocorrelation(reference, size)
    n = a.shape[0]
    lags = torch.arange(n, dtype=torch.float64) - n // 2
    radius = (lags[:, None] ** 2 + lags[None, :] ** 2).sqrt().round()
    diffs = []
    for r in range(math.ceil(size / 8), size // 2 + 1):
        ring = radius == r
        diffs += [a[ring].max() - b[ring].max(), a[ring].min() - b[ring].min()]
    return float(torch.stack(diffs).pow(2).mean().sqrt())


class GramEvaluator:
    """Relative Gram-matrix error on an independent random VGG-19, averaged over relu1_1..relu5_1."""

    def __init__(self, seed: int = EVALUATOR_SEED, device: torch.device | str = "cpu"):
        from rvgen.backbones.vgg import RandomVGG19
        from rvgen.losses.builtin import GramLoss

        options = {p.name: p.default for p in RandomVGG19.params} | {"seed": seed}
        self.device = torch.device(device)
        self.network = RandomVGG19(options, EVALUATOR_LAYERS).eval().requires_grad_(False).to(self.device)
        self.loss = GramLoss()

    @torch.no_grad()
    def distance(self, result: torch.Tensor, reference: torch.Tensor) -> float:
        feats = self.network(result.to(self.device), EVALUATOR_LAYERS)
        refs = self.network(reference.to(self.device), EVALUATOR_LAYERS)
        values = [float(self.loss(feats[layer], self.loss.prepare(refs[layer]))[0]) for layer in EVALUATOR_LAYERS]
        return math.fsum(values) / len(values)


@lru_cache(maxsize=1)
def gram_evaluator() -> GramEvaluator:
    """The shared :class:`GramEvaluator` on the CPU, built once per process."""
    return GramEvaluator(device="cpu")


def gram_distance(result: torch.Tensor, reference: torch.Tensor) -> float:
    """:meth:`GramEvaluator.distance` on the shared evaluator."""
    return gram_evaluator().distance(result.float().cpu(), reference.float().cpu())
