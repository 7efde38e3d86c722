"""What the optimiser moves: the pixels themselves, or a decorrelated image.

``parametrization = "fourier"`` optimises ``z`` with the image ``x = P z`` for a fixed,
invertible linear map ``P``: a spectral scaling that weights each spatial frequency ``f`` by
``1 / f`` (natural images' amplitude spectrum, after Olah et al. 2017, "Feature
Visualization"), followed by a colour map onto an opponent basis (luminance, red-green,
blue-yellow) scaled like natural photos' colour spread. A gradient step on ``z`` then moves
low frequencies and luminance as readily as the pixel parametrisation moves single pixels.

``P`` is linear, so the loss as a function of ``z`` is the same loss seen through ``P``:
its minima are the same images, and only the optimiser's path changes (for L-BFGS it is a
preconditioner). The optimiser works on flat ``z``; the objective still sees images, and
its pixel gradient comes back through ``P``'s adjoint, which also works with tiled
evaluation (whose gradient is composed by hand).
"""

from __future__ import annotations

import math

import torch

PARAMETRIZATIONS = ("pixels", "fourier")

_OPPONENT = torch.tensor([  # orthonormal columns: luminance, red-green, blue-yellow
    [1 / math.sqrt(3), 1 / math.sqrt(2), 1 / math.sqrt(6)],
    [1 / math.sqrt(3), 0.0, -2 / math.sqrt(6)],
    [1 / math.sqrt(3), -1 / math.sqrt(2), 1 / math.sqrt(6)],
], dtype=torch.float64)
# Relative spread of photos along those axes: the square roots of the eigenvalues of the RGB
# covariance of scikit-image's astronaut, chelsea, coffee, rocket and hubble_deep_field and
# the Tübingen photo at 128 px were 0.41, 0.17 and 0.036, along axes close to these.
_SPREAD = torch.tensor([1.0, 0.4, 0.1], dtype=torch.float64)


class Pixels:
    """The identity: the optimiser moves the pixels."""

    name = "pixels"

    def to_image(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def from_image(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, grad: torch.Tensor) -> torch.Tensor:
        return grad


class Fourier:
    """``x = C (F^-1 S F) z`` on (B, 3, H, W): ``F`` the orthonormal 2-D DFT, ``S`` the real,
    symmetric spectral weight ``1 / max(f, 1 / max(H, W))`` scaled to unit mean square (so
    the map is real, self-adjoint and positive definite), ``C`` the colour map."""

    name = "fourier"

    def __init__(self, shape: tuple[int, int], device: torch.device | str):
        h, w = shape
        f = torch.sqrt(torch.fft.fftfreq(h, dtype=torch.float64)[:, None] ** 2
                       + torch.fft.fftfreq(w, dtype=torch.float64)[None, :] ** 2)
        scale = 1.0 / f.clamp(min=1.0 / max(h, w))
        scale = scale / scale.pow(2).mean().sqrt()
        colour = _OPPONENT * _SPREAD / _SPREAD.pow(2).mean().sqrt()
        self.scale, self.inverse_scale = scale.to(device), (1.0 / scale).to(device)
        self.colour = colour.to(device)
        self.colour_inv = torch.linalg.inv(colour).to(device)

    @staticmethod
    def _spectral(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fft2(z, norm="ortho") * weight.to(z.dtype)
        return torch.fft.ifft2(spectrum, norm="ortho").real

    @staticmethod
    def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjhw->bihw", matrix.to(x.dtype), x)

    def to_image(self, z: torch.Tensor) -> torch.Tensor:
        return self._mix(self.colour, self._spectral(z, self.scale))

    def from_image(self, x: torch.Tensor) -> torch.Tensor:
        return self._spectral(self._mix(self.colour_inv, x), self.inverse_scale)

    def adjoint(self, grad: torch.Tensor) -> torch.Tensor:
        return self._spectral(self._mix(self.colour.T, grad), self.scale)


def parametrization(name: str, shape: tuple[int, int], device: torch.device | str) -> Pixels | Fourier:
    """The parametrisation ``name`` for images of ``shape`` (H, W)."""
    if name == "pixels":
        return Pixels()
    if name == "fourier":
        return Fourier(shape, device)
    raise ValueError(f"unknown parametrization {name!r}; choose one of {', '.join(PARAMETRIZATIONS)}")
