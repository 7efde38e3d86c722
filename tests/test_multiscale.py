"""The random multi-scale single-layer network (Ustyuzhaninov et al. 2017): its FFT
convolution is the direct one, its filters are seeded, and its Gram statistics make a
texture that an independent network (a random VGG) finds close to the exemplar."""

import pytest
import torch
import torch.nn.functional as F
from conftest import psnr, sample
from test_quality import evaluator, gram_distance, synthesize

from rvgen.backbones.multiscale import ALL, SIZES, RandomMultiscale, draw_filters, fft_conv


def defaults(**options):
    return {p.name: p.default for p in RandomMultiscale.params} | options


@pytest.mark.parametrize("size", [3, 11, 55])
@pytest.mark.parametrize("shape", [(40, 33), (20, 24)])  # 20 px: smaller than the 55 px filter's padding
def test_fft_convolution_is_the_direct_convolution(size, shape):
    x = torch.rand(2, 3, *shape, dtype=torch.float64)
    w = draw_filters(5, size, torch.Generator().manual_seed(size)).double()
    pad = size // 2
    mode = "reflect" if pad < min(shape) else "replicate"
    direct = F.conv2d(F.pad(x, (pad,) * 4, mode=mode), w)
    out = fft_conv(x.float(), w.float())
    assert out.shape == direct.shape == (2, 5, *shape)
    assert (out.double() - direct).abs().max() < 1e-5 * direct.abs().max()


def test_filters_are_zero_mean_unit_norm_and_seeded():
    a = RandomMultiscale(defaults(width=4), [ALL])
    b = RandomMultiscale(defaults(width=4), ["k3"])
    c = RandomMultiscale(defaults(width=4, seed=1), [ALL])
    for size in SIZES:
        w = getattr(a, f"filters{size}")
        assert w.shape == (4, 3, size, size)
        assert w.sum(dim=(1, 2, 3)).abs().max() < 1e-5
        assert torch.allclose(w.pow(2).sum(dim=(1, 2, 3)), torch.ones(4), atol=1e-5)
        assert torch.equal(w, getattr(b, f"filters{size}")), "the layers asked for do not change the network"
        assert not torch.equal(w, getattr(c, f"filters{size}"))


def test_layers_and_shapes():
    net = RandomMultiscale(defaults(width=6), [ALL]).eval()
    names = RandomMultiscale.layer_names(defaults())
    assert names == [f"k{s}" for s in SIZES] + [ALL]
    for layers in RandomMultiscale.default_layers.values():
        assert set(layers) <= set(names)
    assert set(RandomMultiscale.layer_aliases.values()) <= set(names)
    feats = net(torch.rand(1, 3, 30, 36), ["k5", "k55", ALL])
    assert feats["k5"].shape == (1, 6, 30, 36) and feats[ALL].shape == (1, 6 * len(SIZES), 30, 36)
    assert torch.equal(feats[ALL][:, 6:12], feats["k5"]) and feats["k55"].min() >= 0


def test_texture_from_one_random_layer_matches_the_exemplar_on_a_random_vgg():
    # Measured at 48 px, 30 L-BFGS iterations, 16 filters per size: the independent Gram
    # distance falls from 0.103 (noise) to 0.0037, 28x; PSNR to the exemplar 18.9 dB.
    exemplar = sample("gravel", 48)
    result = synthesize({"task": {"name": "texture"}, "backbone": {"name": "random-multiscale", "width": 16},
                         "optimizer": {"iterations": 30}, "output": {"size": 48}}, exemplar)
    net = evaluator()
    noise = 0.5 + 0.1 * (torch.rand_like(exemplar) * 2 - 1)
    before, after = gram_distance(noise, exemplar, net), gram_distance(result.image, exemplar, net)
    assert after < before / 10, (before, after)
    assert psnr(result.image, exemplar) < 25, "a texture is not a copy of the exemplar"
