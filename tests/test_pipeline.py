"""The Python API: a recipe with overrides, run on PIL images, tensors or paths, gives images
and their losses back, the same as ``rvgen run`` writes."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import psnr, sample, write_recipe, write_sample

import rvgen
from rvgen import Pipeline, imageio
from rvgen.cli import cli
from rvgen.errors import ImageError, RecipeError

RECONSTRUCT = '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n[optimizer]\niterations = 20\n[output]\nsize = 40\n'


def test_a_recipe_runs_on_pil_images_tensors_and_paths_alike(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    pipe = Pipeline.from_recipe(recipe, ["output.size=32"])
    photo = write_sample(tmp_path / "cat.png", "chelsea", 64)
    tensor = imageio.load_image(photo)
    outs = pipe.run([imageio.to_pil(tensor), tensor, photo])
    assert len(outs) == 3
    target = imageio.load_image(photo, 32)
    for out in outs:
        assert out.tensor.shape == target.shape and out.image.size == (32, target.shape[-2])
        assert psnr(out.tensor, target) > 30  # relu1_1 gives the photo back
        assert out.loss < 0.01 * out.initial_loss and set(out.parts) == {"content"}
        assert out.iterations == 20 and len(out.history) >= 10
    assert torch.equal(outs[0].tensor, outs[2].tensor)


def test_the_api_makes_what_rvgen_run_writes(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    photos = tmp_path / "photos"
    write_sample(photos / "coffee.png", "coffee", 40)
    result = CliRunner().invoke(cli, ["run", str(recipe), "-i", str(photos), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    (out,) = Pipeline.from_recipe(recipe).run([photos / "coffee.png"])
    written = imageio.load_image(tmp_path / "out" / "coffee.png")
    assert (written - out.tensor).abs().max() <= 0.5 / 255 + 1e-6
    sidecar = json.loads((tmp_path / "out" / "coffee.png.json").read_text())
    assert sidecar["loss"]["final"] == pytest.approx(out.loss, rel=1e-5)


@pytest.mark.slow
def test_variations_come_back_in_order_and_differ(tmp_path):
    pipe = Pipeline.from_recipe(write_recipe(tmp_path / "t.toml", '[task]\nname = "texture"\nvariations = 2\n'
                                             '[optimizer]\niterations = 3\n[output]\nsize = 24\n'))
    outs = pipe.run([sample("brick", 24), sample("coffee", 24)])
    assert [o.variation for o in outs] == [0, 1, 0, 1]
    assert not torch.equal(outs[0].tensor, outs[1].tensor)


def test_a_failed_image_says_why_in_its_place_and_the_others_survive(tmp_path):
    pipe = Pipeline.from_recipe(write_recipe(tmp_path / "r.toml", RECONSTRUCT))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    bad_shape, good, broken, unknown = pipe.run([torch.rand(4, 8, 8), sample("coffee", 40), tmp_path / "broken.jpg",
                                                 "skimage:nope"])
    assert good.ok and psnr(good.tensor, sample("coffee", 40)) > 25
    assert not (bad_shape.ok or broken.ok or unknown.ok)
    assert "expected a (3, H, W) or (1, 3, H, W) tensor" in str(bad_shape)
    assert isinstance(broken.error, ImageError) and "broken.jpg" in str(broken) and "\n" not in str(broken)
    assert "unknown sample image 'nope'" in str(unknown.error)
    with pytest.raises(ImageError, match="unknown sample image 'nope'"):
        unknown.image  # using a failure's image raises its error
    with pytest.raises(ImageError, match="not an image"):
        pipe.run([sample("coffee", 40), tmp_path / "broken.jpg"], raise_errors=True)
    with pytest.raises(RecipeError, match="optimizer.iterations: expected int"):
        Pipeline.from_recipe(tmp_path / "r.toml", ["optimizer.iterations=many"])


def test_a_tensor_is_resized_at_full_precision():
    pipe = Pipeline.from_recipe("reconstruct", {"output": {"size": 32}})
    fine = torch.linspace(0, 1 / 255, 64).expand(1, 3, 64, 64)  # levels finer than 8 bits
    loaded = pipe.load(fine)
    assert loaded.shape == (1, 3, 32, 32)
    assert len(torch.unique(loaded)) > 8  # 8-bit rounding would leave 0 and 1/255 only


def test_stylize_in_one_call_with_keyword_options(tmp_path):
    photo, painting = sample("chelsea", 48), sample("brick", 48)
    steps = []
    out = rvgen.stylize(photo, imageio.to_pil(painting), size=48, iterations=4, style_weight=50.0,
                        overrides={"optimizer": {"scales": 1}}, callback=steps.append)
    assert out.ok and out.tensor.shape == (1, 3, 32, 48) and out.loss < out.initial_loss
    assert steps and steps[-1].iteration == 4
    same = rvgen.stylize(photo, imageio.to_pil(painting), size=48, iterations=4, style_weight=50.0,
                         overrides=["optimizer.scales=1"])
    assert torch.equal(out.tensor, same.tensor)  # the keywords are the recipe keys they name
    with pytest.raises(RecipeError, match="task.colors"):
        rvgen.stylize(photo, painting, colors="sepia")
