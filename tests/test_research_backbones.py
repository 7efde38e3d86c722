"""Research backbones: random ResNets (and their channel softmax), trained VGG-19 from a file,
and the stacked ranVGG construction with its cache."""

from pathlib import Path

import pytest
import torch
from conftest import sample, write_sample
from torchvision.models.vgg import cfgs, make_layers

from rvgen import imageio
from rvgen.backbones.resnet import RandomResNet18, RandomResNet50, channel_softmax
from rvgen.backbones.trained import WEIGHTS_FILE, WEIGHTS_URL, TrainedVGG19
from rvgen.backbones.vgg import RandomVGG19
from rvgen.errors import RecipeError
from rvgen.recipe import parse_recipe
from rvgen.stacked import apply, candidate_weight, reconstruction_loss, stack


def defaults(cls, **options):
    return {p.name: p.default for p in cls.params} | options


def stacked_vgg(options, layers):
    """A random VGG-19 stacked as the recipe layer builds it."""
    net = RandomVGG19(options, layers)
    apply(net)
    return net


def build(cls, layers, **options):
    return cls(defaults(cls, **options), layers).eval().requires_grad_(False)


# ---- random ResNets ----------------------------------------------------------------------

RESNET_SHAPES = {  # at a 64 x 64 input: channels and side of each stage's output
    RandomResNet18: {"stem": (64, 32), "pool": (64, 16), "layer1.1": (64, 16), "layer2.0": (128, 8),
                     "layer3.1": (256, 4), "layer4.1": (512, 2)},
    RandomResNet50: {"stem": (64, 32), "pool": (64, 16), "layer1.2": (256, 16), "layer2.3": (512, 8),
                     "layer3.5": (1024, 4), "layer4.2": (2048, 2)},
}


@pytest.mark.parametrize("cls", [RandomResNet18, RandomResNet50])
def test_resnet_layers_and_shapes(cls):
    names = cls.layer_names(defaults(cls))
    blocks = {RandomResNet18: 8, RandomResNet50: 16}[cls]
    assert names[:2] == ["stem", "pool"] and len(names) == 2 + blocks and names[-1] == list(RESNET_SHAPES[cls])[-1]
    for role, layers in cls.default_layers.items():
        assert set(layers) <= set(names), role
    assert set(cls.layer_aliases.values()) <= set(names)
    net = build(cls, names)
    feats = net(torch.rand(1, 3, 64, 64), list(RESNET_SHAPES[cls]))
    for layer, (channels, side) in RESNET_SHAPES[cls].items():
        assert tuple(feats[layer].shape) == (1, channels, side, side), layer


def test_resnet_is_torchvisions_architecture():
    from torchvision.models import resnet18

    ours = build(RandomResNet18, ["layer4.1"])
    theirs = resnet18(weights=None)
    keys = {f"body.{i}": k for i, k in enumerate(["stem", "maxpool", "layer1.0", "layer1.1", "layer2.0", "layer2.1",
                                                  "layer3.0", "layer3.1", "layer4.0", "layer4.1"])}
    ref = theirs.state_dict()
    for key, value in ours.state_dict().items():
        if key in ("mean", "std"):
            continue
        prefix = ".".join(key.split(".")[:2])
        rest = key[len(prefix) + 1:]
        if prefix == "body.0":  # our stem is Sequential(conv1, bn1, relu)
            rest = {"0": "conv1", "1": "bn1"}[rest.split(".")[0]] + "." + rest.split(".", 1)[1]
            theirs_key = rest
        else:
            theirs_key = f"{keys[prefix]}.{rest}"
        assert theirs_key in ref, key
        assert ref[theirs_key].shape == value.shape, key


def test_resnet_weights_are_seeded_and_independent_of_depth():
    a = build(RandomResNet50, ["layer2.0"], seed=3)
    b = build(RandomResNet50, ["layer3.0"], seed=3)
    c = build(RandomResNet50, ["layer2.0"], seed=4)
    x = sample("astronaut", 48)
    fa, fb, fc = a(x, ["layer2.0"]), b(x, ["layer2.0"]), c(x, ["layer2.0"])
    assert torch.equal(fa["layer2.0"], fb["layer2.0"])  # building deeper does not change the first blocks
    assert not torch.allclose(fa["layer2.0"], fc["layer2.0"])
    assert len(a.body) == 2 + 3 + 1 and len(b.body) == 2 + 3 + 4 + 1


def test_channel_softmax_is_relative_to_each_layers_scale():
    plain = build(RandomResNet50, ["layer3.0"])
    soft = build(RandomResNet50, ["layer3.0"], softmax=True, temperature=0.5)
    x = sample("chelsea", 64)
    raw = plain(x, ["stem", "layer3.0"])
    out = soft(x, ["stem", "layer3.0"])
    for layer in ("stem", "layer3.0"):
        h = raw[layer]
        rms = h.pow(2).mean().sqrt()
        expected = torch.softmax(h / (0.5 * rms), dim=1)
        assert torch.allclose(out[layer], expected, atol=1e-6)
        assert torch.allclose(out[layer].sum(1), torch.ones_like(out[layer][:, 0]), atol=1e-5)
        # scale-free: multiplying the features does not change the softmax
        assert torch.allclose(channel_softmax(7.0 * h, 0.5), channel_softmax(h, 0.5), atol=1e-6)
    # A fixed temperature of 1 on the raw features is nearly one-hot at layer4 (RMS about 16)
    # and nearly uniform at the stem (RMS about 0.14); relative to each layer's RMS, the
    # softmax keeps about the same entropy at every depth.
    deep = build(RandomResNet50, ["layer4.2"])(x, ["stem", "layer4.2"])
    assert float(torch.softmax(deep["layer4.2"], 1).max(1).values.mean()) > 0.5
    assert float(torch.softmax(deep["stem"], 1).max(1).values.mean()) < 0.05

    def normalised_entropy(p):
        return float(-(p * p.clamp_min(1e-30).log()).sum(1).mean() / torch.log(torch.tensor(float(p.shape[1]))))

    entropies = [normalised_entropy(channel_softmax(deep[layer], 1.0)) for layer in ("stem", "layer4.2")]
    assert all(0.75 < e < 0.99 for e in entropies), entropies


# ---- trained VGG-19 ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A torchvision VGG-19 ``features`` with random weights, saved as torchvision names them."""
    torch.manual_seed(1)
    features = make_layers(cfgs["E"])
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_FILE
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path, features.eval()


def test_trained_vgg19_loads_torchvision_weights_into_the_right_layers(vgg_weights):
    path, features = vgg_weights
    net = build(TrainedVGG19, ["relu3_1"], weights=str(path), pooling="max")
    assert net.layer_names({}) == RandomVGG19.layer_names({})
    names = net.names
    assert torch.equal(net.body[names.index("conv1_1")].weight, features[0].weight)
    assert torch.equal(net.body[names.index("conv3_1")].bias, features[10].bias)
    x = sample("coffee", 40)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = features[:12]((x - mean) / std)  # torchvision's features up to relu3_1
    assert torch.allclose(net(x, ["relu3_1"])["relu3_1"], expected, atol=1e-5)


def test_trained_vgg19_through_a_recipe_with_a_relative_path(vgg_weights, tmp_path):
    path, _ = vgg_weights
    recipe = parse_recipe({"task": {"name": "reconstruct", "layer": "relu2_1"},
                           "backbone": {"name": "trained-vgg19", "weights": str(path)}}, base_dir=tmp_path)
    assert recipe.backbone["weights"] == str(path.resolve())
    msg = pytest.raises(RecipeError, parse_recipe, {"task": {"name": "reconstruct"},
                        "backbone": {"name": "trained-vgg19", "weights": "nope.pth"}}, base_dir=tmp_path).value
    assert str(msg).startswith("backbone.weights: file not found")


def test_trained_vgg19_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    err = pytest.raises(RecipeError, build, TrainedVGG19, ["relu1_1"]).value
    message = str(err)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE) in message and WEIGHTS_URL in message


def test_trained_vgg19_refuses_wrong_files(vgg_weights, tmp_path):
    path, _ = vgg_weights
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    err = pytest.raises(RecipeError, build, TrainedVGG19, ["relu1_1"], weights=str(text)).value
    assert "is not a PyTorch weights file" in str(err) and "\n" not in str(err)

    state = torch.load(path, weights_only=True)
    state["features.2.weight"] = torch.zeros(32, 64, 3, 3)
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    err = pytest.raises(RecipeError, build, TrainedVGG19, ["relu1_2"], weights=str(wrong)).value
    assert "features.2.weight has shape (32, 64, 3, 3), vgg19 needs (64, 64, 3, 3)" in str(err)
    assert build(TrainedVGG19, ["relu1_1"], weights=str(wrong)) is not None  # only built layers are read

    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, resnet)
    err = pytest.raises(RecipeError, build, TrainedVGG19, ["relu1_1"], weights=str(resnet)).value
    assert "has no features.0.weight" in str(err)

    pickled = tmp_path / "list.pth"
    torch.save([1, 2, 3], pickled)
    err = pytest.raises(RecipeError, build, TrainedVGG19, ["relu1_1"], weights=str(pickled)).value
    assert "holds no state dict" in str(err)


# ---- stacked ranVGG ----------------------------------------------------------------------

@pytest.mark.parametrize("criterion", ["features", "pixels"])
def test_stacked_construction_keeps_the_lowest_loss_candidate_and_caches(tmp_path, monkeypatch, criterion):
    monkeypatch.setenv("RVGEN_CACHE_DIR", str(tmp_path / "cache"))
    reference = write_sample(tmp_path / "ref.png", "astronaut", 16)
    options = defaults(RandomVGG19, stacked_candidates=2, stacked_reference=str(reference), stacked_iterations=4,
                       stacked_size=16, seed=5, stacked_criterion=criterion)
    net = stacked_vgg(options, ["relu1_2"])
    record = net.stack_record
    assert record.built == 2 and record.layers == ["relu1_1", "relu1_2"]
    assert record.path.is_file() and record.path.parent == tmp_path / "cache" / "stacked"

    # Redo the selection by hand: candidate 0 is the plain network's draw, 1 a seeded extra one.
    plain = RandomVGG19(defaults(RandomVGG19, seed=5), ["relu1_2"]).requires_grad_(False)
    ref = imageio.load_image(str(reference), 16)
    for n, (index, conv) in enumerate(plain.convs()):
        candidates = [conv.weight.detach().clone(), candidate_weight(tuple(conv.weight.shape), options, n, 1)]
        losses = []
        for weight in candidates:
            with torch.no_grad():
                conv.weight.copy_(weight)
            losses.append(reconstruction_loss(plain, plain.names[index + 1], ref, 4, criterion))
        best = min(range(2), key=losses.__getitem__)
        assert losses == pytest.approx(record.losses[n], rel=1e-5)
        assert record.chosen[n] == best
        assert torch.equal(net.body[index].weight, candidates[best])
        with torch.no_grad():
            conv.weight.copy_(candidates[best])
        assert losses[0] != losses[1]

    again = stacked_vgg(options, ["relu1_2"])
    assert again.stack_record.built == 0  # from the cache
    assert all(torch.equal(a.weight, b.weight) for (_, a), (_, b) in zip(again.convs(), net.convs()))
    deeper = stacked_vgg(options, ["relu2_1"])
    assert deeper.stack_record.built == 1 and len(deeper.stack_record.chosen) == 3  # extends the cached two
    assert torch.equal(deeper.body[2].weight, net.body[2].weight)

    other = stacked_vgg(options | {"seed": 6}, ["relu1_1"])
    assert other.stack_record.path != record.path and other.stack_record.built == 1


def test_stacked_cache_survives_a_corrupt_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RVGEN_CACHE_DIR", str(tmp_path))
    reference = write_sample(tmp_path / "ref.png", "coffee", 16)
    options = defaults(RandomVGG19, stacked_candidates=2, stacked_reference=str(reference), stacked_iterations=2,
                       stacked_size=16)
    record = stack(RandomVGG19(defaults(RandomVGG19), ["relu1_1"]), options)
    record.path.write_bytes(b"garbage")
    again = stacked_vgg(options, ["relu1_1"])
    assert again.stack_record.built == 1 and again.stack_record.chosen == record.chosen


def test_missing_trained_weights_stop_a_recipe_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    err = pytest.raises(RecipeError, parse_recipe, {"task": {"name": "reconstruct"},
                                                    "backbone": {"name": "trained-vgg19"}}).value
    assert "weights not found at" in str(err) and WEIGHTS_URL in str(err)
