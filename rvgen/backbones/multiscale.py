"""A random multi-scale single-layer network, after Ustyuzhaninov et al. (ICLR 2017),
"What does it take to generate natural textures?".

One convolutional layer and a ReLU, no pooling, no depth: ``width`` random filters at each
of the sizes 3, 5, 7, 11, 15, 23, 37 and 55 pixels, all seeing the image at once. That paper
found the Gram statistics of such a layer give textures about as good as a trained VGG's,
so it is the control for "how much of a texture (or a style) needs a deep network at all".

Each filter is drawn from a normal distribution on the CPU (generator seeded with ``seed``,
the sizes in increasing order), made zero-mean, so that it answers to structure rather than
to the mean brightness, and scaled to unit norm, so that every size answers on the same
scale. The 37 and 55 pixel filters would cost 10^11 multiply-adds per image as direct
convolutions at 256 px, so every size is applied through the FFT: the image is padded by
reflection (by replication where it is smaller than the filter) and transformed once per
filter size, and each filter bank is a product in the frequency domain (the filters'
spectra are kept while the image size stays). The result equals the direct convolution to
float32 rounding (a test checks it).

Layers: ``k3``, ``k5``, ... ``k55`` (the ReLU maps of one filter size, ``width`` channels
each) and ``all`` (every size, concatenated: the paper's single layer). Style and texture
use the per-size layers by default: eight Gram matrices of ``width`` channels cost a
fraction of one Gram matrix of all ``8 * width`` channels and keep each scale's statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from rvgen.backbones import Backbone
from rvgen.hookspecs import hookimpl
from rvgen.params import SEED_RANGE, Param

SIZES = (3, 5, 7, 11, 15, 23, 37, 55)
ALL = "all"


def size_layer(size: int) -> str:
    return f"k{size}"


def draw_filters(width: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``width`` zero-mean, unit-norm random filters of ``size`` x ``size`` over RGB."""
    w = torch.randn((width, 3, size, size), generator=generator, dtype=torch.float64)
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return (w / w.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()).float()


def filter_spectrum(weight: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The conjugate spectrum of a filter bank (O, C, k, k) zero-padded to ``shape``, laid
    out (H, W', C, O) for :func:`fft_conv`'s product."""
    return torch.fft.rfft2(weight.float(), s=shape).conj().permute(2, 3, 1, 0).contiguous()


def fft_conv(x: torch.Tensor, weight: torch.Tensor, spectrum: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=k // 2)`` with reflection padding, through the FFT.

    The padded image ``xp`` has size (H + k - 1, W + k - 1); the cross-correlation of ``xp``
    with the filter is the inverse transform of ``X * conj(W)``, whose first H x W values
    never wrap around, so they are the direct convolution's output. ``spectrum`` is
    :func:`filter_spectrum` of ``weight`` at that size, when the caller keeps it.
    """
    k = weight.shape[-1]
    h, w = x.shape[-2:]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    shape = tuple(xp.shape[-2:])
    if spectrum is None:
        spectrum = filter_spectrum(weight, shape)
    xf = torch.fft.rfft2(xp.float(), s=shape)
    yf = torch.matmul(xf.permute(2, 3, 0, 1), spectrum).permute(2, 3, 0, 1)  # (B, O, H, W')
    return torch.fft.irfft2(yf, s=shape)[..., :h, :w]


class RandomMultiscale(Backbone):
    name = "random-multiscale"
    description = ("one layer of random filters of sizes 3 to 55 px, no depth, no pooling "
                   "(Ustyuzhaninov et al. 2017); layers k3 .. k55 and all")
    default_layers = {
        "reconstruct": [ALL],
        "content": [ALL],
        "style": [size_layer(s) for s in SIZES],
    }
    # VGG layers lined up by receptive field (relu1_1 sees 3 px, relu2_1 10, relu3_1 24,
    # relu4_1 60, relu5_1 all of it), for `rvgen compare --layers`.
    layer_aliases = {"relu1_1": "k3", "relu2_1": "k11", "relu3_1": "k23", "relu4_1": "k55",
                     "relu4_2": "k55", "relu5_1": ALL}
    params = (
        Param("seed", int, 0, "seed of the random filters: (seed, width) is the network",
              minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]),
        Param("width", int, 128, "filters per size (the paper: 128, 1024 channels in all)", minimum=1, maximum=1024),
        Param("normalize", str, "imagenet", "input normalisation before the filters", choices=("imagenet", "none")),
    )

    @classmethod
    def layer_names(cls, options: Mapping[str, Any]) -> list[str]:
        return [size_layer(s) for s in SIZES] + [ALL]

    def __init__(self, options: Mapping[str, Any], layers: Iterable[str]):
        super().__init__(options, layers)
        self.keep_layers(options, layers)
        generator = torch.Generator().manual_seed(int(options["seed"]))
        for size in SIZES:  # every size is drawn, so the filters of one size never depend on the layers asked for
            self.register_buffer(f"filters{size}", draw_filters(int(options["width"]), size, generator))
        self.register_normalization(options["normalize"])
        self._spectra: dict[int, torch.Tensor] = {}  # filter spectra for images of self._shape
        self._shape: tuple = ()

    def spectrum(self, size: int, x: torch.Tensor) -> torch.Tensor:
        """The spectrum of the ``size`` px filters for images shaped like ``x``, kept until the
        shape changes (an optimiser evaluates one shape many times in a row)."""
        shape = (tuple(x.shape[-2:]), x.device)
        if shape != self._shape:
            self._spectra, self._shape = {}, shape
        if size not in self._spectra:
            pad = size // 2
            padded = (x.shape[-2] + 2 * pad, x.shape[-1] + 2 * pad)
            self._spectra[size] = filter_spectrum(getattr(self, f"filters{size}"), padded)
        return self._spectra[size]

    def features(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = set(layers)
        unknown = wanted - set(self.layer_names(self.options))
        if unknown:
            raise KeyError(f"layers not built: {sorted(unknown)}")
        sizes = SIZES if ALL in wanted else [s for s in SIZES if size_layer(s) in wanted]
        h = ((x - self.mean) / self.std).float()
        maps = {size_layer(s): F.relu(fft_conv(h, getattr(self, f"filters{s}"), self.spectrum(s, h))) for s in sizes}
        out = {name: maps[name] for name in wanted if name != ALL}
        if ALL in wanted:
            out[ALL] = torch.cat([maps[size_layer(s)] for s in SIZES], dim=1)
        return out


@hookimpl
def register_backbones(register):
    register(RandomMultiscale)
