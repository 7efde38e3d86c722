"""The random VGG backbones: torchvision's layout, layer names, seeded weights, truncation."""

import math

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from rvgen.backbones.vgg import VGG_CFGS, RandomVGG16, RandomVGG19

OPTIONS = {"seed": 0, "init": "kaiming", "std": 0.015, "pooling": "avg", "normalize": "imagenet"}


def build(cls=RandomVGG19, layers=("relu5_4",), **options):
    return cls({**OPTIONS, **options}, layers).requires_grad_(False)


def test_layer_names_follow_the_literature():
    names = RandomVGG19.layer_names(OPTIONS)
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names[-3:] == ["conv5_4", "relu5_4", "pool5"]
    assert len(names) == 37 and sum(n.startswith("conv") for n in names) == 16
    assert len(RandomVGG16.layer_names(OPTIONS)) == 31 and "relu5_4" not in RandomVGG16.layer_names(OPTIONS)


@pytest.mark.parametrize(("cls", "key"), [(RandomVGG19, "E"), (RandomVGG16, "D")])
def test_modules_match_torchvision_features_index_for_index(cls, key):
    assert VGG_CFGS[key] == cfgs[key]
    ours = build(cls, layers=[cls.layer_names(OPTIONS)[-1]], pooling="max")
    theirs = make_layers(cfgs[key])
    assert len(ours.body) == len(theirs)
    for a, b in zip(ours.body, theirs):
        assert type(a) is type(b)
        if isinstance(a, nn.Conv2d):
            assert a.weight.shape == b.weight.shape


def test_built_only_up_to_the_deepest_layer_asked_for():
    net = build(layers=["relu1_1", "relu2_1"])
    assert net.names == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1", "relu2_1"]
    assert len(net.body) == 7


def test_features_have_the_expected_shapes():
    net = build(layers=["relu1_1", "pool2", "relu3_1"])
    feats = net(torch.rand(2, 3, 64, 48), ["relu1_1", "pool2", "relu3_1", "pixels"])
    assert feats["relu1_1"].shape == (2, 64, 64, 48)
    assert feats["pool2"].shape == (2, 128, 16, 12)
    assert feats["relu3_1"].shape == (2, 256, 16, 12)
    assert feats["pixels"].shape == (2, 3, 64, 48)


def test_same_seed_same_weights_on_every_machine():
    net = build(layers=["relu5_1"])
    w = net.body[0].weight.detach()
    # Drawn on the CPU from torch.Generator().manual_seed(0): fixed numbers, whatever the device.
    assert w.flatten()[:3].tolist() == pytest.approx([-0.306415, -0.313633, -0.068199], abs=1e-5)
    assert float(w.sum()) == pytest.approx(13.041274, abs=1e-3)
    again = build(layers=["relu5_1"])
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    other = build(layers=["relu5_1"], seed=1)
    assert not torch.equal(other.body[0].weight, net.body[0].weight)


def test_truncated_network_is_a_prefix_of_the_full_one():
    full, short = build(layers=["relu5_4"]), build(layers=["relu2_1"])
    for a, b in zip(short.body, full.body):
        if isinstance(a, nn.Conv2d):
            assert torch.equal(a.weight, b.weight)


def test_initialisations_have_their_documented_scale():
    kaiming = build(layers=["relu3_1"])
    conv = kaiming.body[10]  # conv3_1: 128 -> 256 channels
    assert float(conv.weight.std()) == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.03)
    assert float(conv.bias.abs().sum()) == 0.0
    normal = build(layers=["relu3_1"], init="normal", std=0.015)
    assert float(normal.body[10].weight.std()) == pytest.approx(0.015, rel=0.03)
    uniform = build(layers=["relu3_1"], init="uniform")
    assert float(uniform.body[10].weight.abs().max()) <= 1 / math.sqrt(128 * 9)
    # kaiming and normal draw the same numbers: they differ by one factor per layer
    ratio = normal.body[10].weight / kaiming.body[10].weight
    assert float(ratio.std() / ratio.mean()) < 1e-4


def test_pooling_and_normalisation_options():
    assert isinstance(build(layers=["pool1"]).body[4], nn.AvgPool2d)
    assert isinstance(build(layers=["pool1"], pooling="max").body[4], nn.MaxPool2d)
    x = torch.rand(1, 3, 16, 16)
    a = build(layers=["relu1_1"])(x, ["relu1_1"])["relu1_1"]
    b = build(layers=["relu1_1"], normalize="none")(x, ["relu1_1"])["relu1_1"]
    assert not torch.allclose(a, b)
