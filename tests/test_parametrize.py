"""The optimiser's parametrisation of the image (pixels or fourier) and its stopping rule."""

import pytest
import torch

from conftest import psnr, sample
from rvgen.engine.lbfgs import TOLERANCE_WINDOW
from rvgen.engine.parametrize import Fourier, parametrization
from rvgen.errors import RecipeError
from rvgen.recipe import parse_recipe


def reconstruct(size: int = 48, layer: str = "relu3_1", **optimizer):
    recipe = parse_recipe({"task": {"name": "reconstruct", "layer": layer},
                           "optimizer": {"iterations": 40, **optimizer}, "output": {"size": size}})
    synth = recipe.build("cpu")
    synth.set_references({})
    return synth


def test_the_fourier_map_is_inverted_exactly_and_its_adjoint_is_its_transpose():
    P = Fourier((37, 50), "cpu")  # odd and even sides
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 37, 50, dtype=torch.float64, generator=gen)
    g = torch.randn(2, 3, 37, 50, dtype=torch.float64, generator=gen)
    x = P.to_image(z)
    assert x.dtype == torch.float64 and x.shape == z.shape
    assert (P.from_image(x) - z).abs().max() < 1e-10
    assert float((x * g).sum()) == pytest.approx(float((z * P.adjoint(g)).sum()), rel=1e-10)


def test_a_step_in_fourier_moves_low_frequencies_and_luminance_more_than_pixels_do():
    P = Fourier((64, 64), "cpu")
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(1, 3, 64, 64, generator=gen)  # a white pixel gradient
    step = P.to_image(P.adjoint(grad))  # the image change of a gradient step on z
    power = torch.fft.fft2(step).abs().pow(2).mean(dim=(0, 1))
    low, high = power[:4, :4].mean(), power[28:36, 28:36].mean()
    assert low > 100 * high  # white in pixels; 1/f^2 in power once preconditioned
    grey = step.mean(dim=1, keepdim=True)
    assert grey.pow(2).mean() > 3 * (step - grey).pow(2).mean()  # mostly luminance


@pytest.mark.parametrize("name", ["lbfgs", pytest.param("adam", marks=pytest.mark.slow)])  # adam's: with the slow ones
def test_a_fourier_inversion_lowers_the_loss_and_keeps_the_pixels_in_range(name):
    content = sample("coffee", 48)
    synth = reconstruct(name=name, parametrization="fourier", iterations=40 if name == "lbfgs" else 150,
                        lr=None if name == "lbfgs" else 0.05)
    result = synth.run(content)
    assert result.loss < result.initial_loss / 10
    assert 0 <= float(result.image.min()) and float(result.image.max()) <= 1
    assert psnr(result.image, content) > 14  # noise starts near 11 dB


def style(**optimizer):
    recipe = parse_recipe({"task": {"name": "style", "style": "skimage:hubble_deep_field"},
                           "optimizer": {"iterations": 90, **optimizer}, "output": {"size": 48}})
    synth = recipe.build("cpu")
    synth.set_references({"style": sample("hubble_deep_field", 48)})
    return synth


@pytest.mark.slow  # about 12 s on 2 cores
def test_tolerance_stops_an_image_at_the_first_iteration_its_loss_fell_too_little():
    content = sample("coffee", 48)
    full = style().run(content)  # a style loss levels off within 90 iterations
    assert full.iterations == 90
    losses = dict(full.history)  # every iteration (fewer than 96)
    first = next(k for k in sorted(losses) if k - TOLERANCE_WINDOW in losses
                 and losses[k - TOLERANCE_WINDOW] - losses[k] <= 0.01 * losses[k - TOLERANCE_WINDOW])
    stopped = style(tolerance=0.01).run(content)
    assert stopped.iterations == first < 90
    assert stopped.loss < stopped.initial_loss / 5  # stopped on the plateau, not at the start


def test_the_parametrization_and_tolerance_are_checked_in_the_recipe():
    with pytest.raises(RecipeError, match="optimizer.tolerance: only lbfgs"):
        parse_recipe({"task": {"name": "reconstruct"}, "optimizer": {"name": "adam", "tolerance": 0.01}})
    with pytest.raises(RecipeError, match="optimizer.parametrization"):
        parse_recipe({"task": {"name": "reconstruct"}, "optimizer": {"parametrization": "fourrier"}})
    with pytest.raises(ValueError, match="unknown parametrization"):
        parametrization("wavelet", (8, 8), "cpu")
