"""Losses, the objective's automatic layer weighting, the optimisers, and target caching."""

import math

import pytest
import torch
from conftest import sample

from rvgen.backbones.vgg import RandomVGG19
from rvgen.engine import Objective, OptimizerConfig, Term, optimize
from rvgen.errors import OptimizationError
from rvgen.losses import Loss, gram_matrix
from rvgen.losses.builtin import ContentLoss, GramLoss, TotalVariationLoss
from rvgen.recipe import parse_recipe

LAYERS = ("relu1_1", "relu2_1", "relu3_1")


def vgg(init="kaiming", layers=LAYERS):
    opts = {"seed": 0, "init": init, "std": 0.015, "pooling": "avg", "normalize": "imagenet"}
    return RandomVGG19(opts, layers).eval().requires_grad_(False)


@pytest.mark.parametrize("loss_cls", [ContentLoss, GramLoss])
def test_builtin_losses_are_zero_at_the_target_and_scale_free(loss_cls):
    torch.manual_seed(0)
    f, t = torch.rand(2, 8, 6, 5), torch.rand(1, 8, 6, 5)
    loss = loss_cls()
    assert loss(t, loss.prepare(t)).item() == pytest.approx(0.0, abs=1e-12)
    value = loss(f, loss.prepare(t))
    assert value.shape == (2,) and (value > 0).all()
    for scale in (1e-6, 1e4):  # features and target scaled alike: the same loss
        assert torch.allclose(loss(f * scale, loss.prepare(t * scale)), value, rtol=1e-4)


def test_gram_matrix_does_not_depend_on_image_size():
    f = torch.rand(1, 4, 8, 8)
    tiled = f.repeat(1, 1, 2, 3)
    assert torch.allclose(gram_matrix(f), gram_matrix(tiled), rtol=1e-5)
    assert gram_matrix(torch.rand(3, 4, 5, 6)).shape == (3, 4, 4)


def test_total_variation_is_zero_on_flat_images_and_grows_with_noise():
    tv = TotalVariationLoss()
    assert tv(torch.full((1, 3, 8, 8), 0.3)).item() == 0.0
    assert tv(torch.rand(1, 3, 8, 8)).item() > tv(torch.rand(1, 3, 8, 8) * 0.1).item() > 0


def texture_objective(init: str) -> Objective:
    obj = Objective(vgg(init), [Term("texture", "gram", LAYERS, weighting="auto")], [GramLoss()])
    obj.set_targets({"input": sample("gravel", 48)})
    return obj


def test_auto_weighting_equalises_each_layers_pull_on_the_pixels():
    obj = texture_objective("kaiming")
    x0 = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    obj.auto_weight(x0)
    weights = {layer: float(w) for layer, w in obj.layer_weights[0].items()}  # (B,) tensors, B = 1
    assert sum(weights.values()) == pytest.approx(1.0)
    assert len(set(round(w, 6) for w in weights.values())) == len(LAYERS), "rule must differ from equal"
    x = x0.clone().requires_grad_(True)
    per_layer = obj.layer_losses(x)
    pulls = []
    for layer in LAYERS:
        (g,) = torch.autograd.grad(weights[layer] * per_layer[(0, layer)].sum(), x, retain_graph=True)
        pulls.append(float(g.norm()))
    assert max(pulls) / min(pulls) == pytest.approx(1.0, abs=1e-3)


def test_auto_weighting_is_the_same_for_kaiming_and_tiny_gaussian_weights():
    # With zero biases the two networks differ by one factor per layer, so scale-free
    # losses and weights must agree although raw features differ by orders of magnitude.
    x0 = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    a, b = texture_objective("kaiming"), texture_objective("normal")
    feats = {init: obj.backbone(x0, ["relu3_1"])["relu3_1"].abs().mean() for init, obj in (("k", a), ("n", b))}
    assert feats["k"] / feats["n"] > 100
    a.auto_weight(x0)
    b.auto_weight(x0)
    for layer in LAYERS:
        assert a.layer_weights[0][layer] == pytest.approx(b.layer_weights[0][layer], rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("init", ["kaiming", "normal"])
def test_texture_loss_falls_by_orders_of_magnitude_with_either_init(init):
    obj = texture_objective(init)
    x0 = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    obj.auto_weight(x0)
    result = optimize(obj, x0, OptimizerConfig(iterations=60))
    assert result.initial_loss / result.loss > 100, (result.initial_loss, result.loss)


def test_adam_keeps_pixels_in_range_and_lowers_the_loss():
    obj = Objective(vgg(layers=("relu2_1",)), [Term("content", "content", ("relu2_1",))], [ContentLoss()])
    target = sample("coffee", 32)
    obj.set_targets({"input": target})
    x0 = torch.rand(1, 3, *target.shape[-2:], generator=torch.Generator().manual_seed(0))
    result = optimize(obj, x0, OptimizerConfig(name="adam", iterations=40, lr=0.05))
    assert result.loss < result.initial_loss / 3
    assert result.image.min() >= 0 and result.image.max() <= 1


def test_a_nan_loss_is_an_optimization_error():
    class NaNLoss(Loss):
        name = "nan"

        def forward(self, features, target):
            return features.flatten(1).mean(1) * float("nan")

    obj = Objective(vgg(layers=("relu1_1",)), [Term("nan", "nan", ("relu1_1",))], [NaNLoss()])
    obj.set_targets({"input": torch.rand(1, 3, 16, 16)})
    with pytest.raises(OptimizationError, match="the loss became nan at iteration 1"):
        optimize(obj, torch.rand(1, 3, 16, 16), OptimizerConfig(iterations=3))


def test_style_targets_are_computed_once_per_run_not_per_image(monkeypatch):
    recipe = parse_recipe({
        "task": {"name": "style", "style": "skimage:coffee", "style_layers": list(LAYERS),
                 "content_layers": ["relu2_1"]},
        "optimizer": {"iterations": 2}, "output": {"size": 32},
    })
    calls = {"gram": 0}
    original = GramLoss.prepare

    def counting(self, features):
        calls["gram"] += 1
        return original(self, features)

    monkeypatch.setattr(GramLoss, "prepare", counting)
    synth = recipe.build("cpu")
    synth.set_references({"style": sample("coffee", 32)})
    for name in ("chelsea", "astronaut", "rocket"):
        synth.run(sample(name, 32))
    assert calls["gram"] == len(LAYERS)


def test_seeded_runs_are_reproducible_and_variations_differ():
    recipe = parse_recipe({"task": {"name": "texture", "layers": ["relu1_1", "relu2_1"], "variations": 2},
                           "optimizer": {"iterations": 5}, "output": {"size": 24}})
    synth = recipe.build("cpu")
    synth.set_references({})
    image = sample("brick", 24)
    a, b, c = synth.run(image, 0).image, synth.run(image, 0).image, synth.run(image, 1).image
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert math.isfinite(float(a.sum()))


def test_explicit_layer_weights_are_used_as_given_and_auto_is_left_alone():
    terms = [Term("texture", "gram", ("relu1_1", "relu2_1"), weighting={"relu1_1": 0.25, "relu2_1": 2.0})]
    obj = Objective(vgg(layers=("relu2_1",)), terms, [GramLoss()])
    obj.set_targets({"input": sample("brick", 24)})
    obj.auto_weight(torch.rand(1, 3, 24, 24))
    assert obj.layer_weights[0] == {"relu1_1": 0.25, "relu2_1": 2.0}
    x = torch.rand(1, 3, 24, 24)
    per_layer = obj.layer_losses(x)
    total, parts = obj(x)
    expected = 0.25 * per_layer[(0, "relu1_1")] + 2.0 * per_layer[(0, "relu2_1")]
    assert torch.allclose(total, expected) and torch.allclose(parts["texture"], expected)


def test_texture_size_as_a_long_side_keeps_the_exemplars_aspect():
    recipe = parse_recipe({"task": {"name": "texture", "layers": ["relu1_1"], "size": 30},
                           "optimizer": {"iterations": 2}, "output": {"size": 24}})
    synth = recipe.build("cpu")
    synth.set_references({})
    assert synth.run(sample("rocket", 24)).image.shape[-2:] == (20, 30)  # rocket is 427 x 640
