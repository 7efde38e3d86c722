"""The style controls users ask for: colours, several styles, the starting image, the style's
scale, transparency and the images along the way. Each test checks the pictures."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import sample, write_recipe, write_sample
from PIL import Image

from rvgen import Pipeline, imageio
from rvgen.cli import cli
from rvgen.engine.pyramid import resize
from rvgen.errors import RecipeError
from rvgen.pipeline import load_references
from rvgen.recipe import parse_recipe
from rvgen.tasks.colors import match_colors, rgb_to_ycbcr

SIZE = 32
LAYERS = ["relu1_1", "relu2_1", "relu3_1"]


def style_recipe(tmp_path=None, optimizer=None, output=None, **task):
    data = {
        "task": {"name": "style", "style": "skimage:hubble_deep_field", "style_layers": LAYERS,
                 "content_layers": ["relu2_1"], **task},
        "optimizer": {"iterations": 3, **(optimizer or {})},
        "output": {"size": SIZE, **(output or {})},
    }
    return parse_recipe(data, base_dir=tmp_path)


def run(recipe, photo="chelsea", references=None):
    pipe = Pipeline(recipe, "cpu", references=references)
    (out,) = pipe.run([sample(photo, SIZE)])
    return out


# -- colours ------------------------------------------------------------------------------


def test_colors_content_keeps_the_photos_chroma_and_the_results_luminance():
    photo = sample("chelsea", SIZE)
    styled = run(style_recipe(style="skimage:coffee"))
    kept = run(style_recipe(style="skimage:coffee", colors="content"))
    ours, theirs, styled_ycc = rgb_to_ycbcr(kept.tensor), rgb_to_ycbcr(photo), rgb_to_ycbcr(styled.tensor)
    chroma = (ours[:, 1:] - theirs[:, 1:]).abs()
    assert chroma.mean() < 0.005 and chroma.max() < 0.1  # only clamping into [0, 1] moves it
    # (a very dark style leaves dark pixels, which cannot carry the photo's chroma)
    assert (styled_ycc[:, 1:] - theirs[:, 1:]).abs().mean() > 5 * chroma.mean()  # the style's colours moved it
    assert (ours[:, 0] - styled_ycc[:, 0]).abs().mean() < 0.01  # the luminance is the stylised one
    assert kept.loss == pytest.approx(styled.loss)  # a post-process: the same optimisation


def test_colors_match_moves_the_styles_colour_statistics_to_the_photos():
    photo, style = sample("chelsea", SIZE), sample("hubble_deep_field", SIZE)
    task = style_recipe(colors="match").build_task()
    assert task.adapted_references() == {"style"}
    matched = task.prepare_reference("style", style, photo)
    assert matched.shape == style.shape
    for c in range(3):
        assert float(matched[0, c].mean()) == pytest.approx(float(photo[0, c].mean()), abs=0.02)
        assert float(matched[0, c].std()) == pytest.approx(float(photo[0, c].std()), abs=0.03)
    assert (style.mean((2, 3)) - photo.mean((2, 3))).abs().max() > 0.1  # they were far apart


def test_colors_match_optimises_against_the_matched_style_per_input():
    style = sample("hubble_deep_field", SIZE)
    photos = [sample("chelsea", SIZE), sample("coffee", SIZE)]
    assert photos[0].shape == photos[1].shape
    # Adam, elementwise: batching changes nothing but the last bits of batched convolutions
    # (which L-BFGS's line search would amplify, as for any batch).
    adam = {"name": "adam"}
    pipe = Pipeline(style_recipe(optimizer=adam, colors="match"), "cpu", references={"style": style})
    together = pipe.synth.run_batch(photos)  # each image against the style matched to it
    for photo, batched in zip(photos, together):
        plain = Pipeline(style_recipe(optimizer=adam), "cpu", references={"style": match_colors(style, photo)})
        alone = plain.synth.run(photo)
        assert batched.loss == pytest.approx(alone.loss, rel=1e-5)
        assert (batched.image - alone.image).abs().max() < 1e-5


# -- several styles -----------------------------------------------------------------------


def test_two_styles_weighted_1_and_0_give_the_one_style_result(tmp_path):
    one = run(style_recipe())
    two = run(style_recipe(style=["skimage:hubble_deep_field", "skimage:brick"], style_weights=[1, 0]))
    assert two.loss == one.loss and set(two.parts) == set(one.parts)
    assert (two.tensor - one.tensor).abs().max() <= 1e-6
    blend = run(style_recipe(style=["skimage:hubble_deep_field", "skimage:brick"], style_weights=[0.5, 0.5]))
    assert (blend.tensor - one.tensor).abs().max() > 0.01  # the second style counts when weighted


def test_a_folder_of_styles_blends_them_equally_and_weights_must_match(tmp_path):
    write_sample(tmp_path / "styles" / "a.png", "brick", 40)
    write_sample(tmp_path / "styles" / "b.png", "gravel", 40)
    (tmp_path / "styles" / "notes.txt").write_text("not an image")
    recipe = style_recipe(tmp_path, style="styles")
    assert recipe.task["style"] == [str(tmp_path / "styles" / "a.png"), str(tmp_path / "styles" / "b.png")]
    refs = recipe.references()
    assert set(refs) == {"style", "style2"}
    task = recipe.build_task()
    assert [(t.target, t.weight, t.blend) for t in task.terms() if t.name == "style"] == [
        ("style", 20.0, (("style", 0.5), ("style2", 0.5)))]  # one term: the mean of the two Grams
    out = run(recipe, references=load_references(refs))
    assert set(out.parts) == {"content", "style"}
    with pytest.raises(RecipeError, match="task.style_weights: 1 weights for 2 style images"):
        style_recipe(tmp_path, style="styles", style_weights=[1])


# -- the starting image and the style's scale ---------------------------------------------


def test_init_from_an_image_file_starts_from_it_resized_to_the_canvas(tmp_path):
    start = write_sample(tmp_path / "start.png", "coffee", 50)
    recipe = style_recipe(tmp_path, init="start.png", optimizer={"name": "adam", "lr": 1e-9, "iterations": 1})
    assert set(recipe.references()) == {"style", "init"}  # its hash goes in the sidecar
    out = run(recipe)
    expected = resize(imageio.load_image(start), tuple(out.tensor.shape[-2:]))
    assert (out.tensor - expected).abs().max() < 1e-5
    assert (out.tensor - sample("chelsea", SIZE)).abs().mean() > 0.05  # not the photo
    with pytest.raises(RecipeError, match="task.init: file not found"):
        style_recipe(tmp_path, init="missing.png")
    with pytest.raises(RecipeError, match=r"file not found: .*nose \(did you mean 'noise'\?\); or one of content, noise"):
        style_recipe(tmp_path, init="nose")


def test_style_scale_sizes_the_style_image_and_style_size_wins(tmp_path):
    def long_side(**task):
        (image,) = load_references(style_recipe(output={"size": 40}, **task).references()).values()
        return max(image.shape[-2:])

    assert long_side() == 40
    assert long_side(style_scale=0.5) == round(0.5 * 40)
    assert long_side(style_scale=1.5) == 60
    assert long_side(style_scale=0.5, style_size=24) == 24


# -- through rvgen run: transparency and the images along the way -------------------------


def test_an_rgba_input_gives_an_rgba_output_with_its_alpha(tmp_path):
    rgb = imageio.to_pil(sample("coffee", 40))
    alpha = Image.linear_gradient("L").resize(rgb.size)
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    (tmp_path / "in").mkdir()
    rgba.save(tmp_path / "in" / "logo.png")
    recipe = write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n'
                          '[optimizer]\niterations = 3\n[output]\nsize = 32\n')
    result = CliRunner().invoke(cli, ["run", str(recipe), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "logo.png") as out:
        assert out.mode == "RGBA"
        assert out.size == imageio.fit_long_side(rgba.size, 32)
        expected = alpha.resize(out.size, Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(expected))
        assert np.asarray(expected).std() > 20  # a real gradient, not a flat alpha
    (out,) = Pipeline.from_recipe(recipe).run([rgba])  # the Python API too
    assert out.image.mode == "RGBA" and out.tensor.shape[1] == 3


def cli_run(tmp_path, recipe, *sets):
    result = CliRunner().invoke(cli, ["run", str(recipe), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                      "-q", "--force", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    return sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".") and p.name != "index.html")


def test_save_every_writes_the_steps_beside_the_result_and_keep_steps_false_removes_them(tmp_path):
    write_sample(tmp_path / "in" / "cat.png", "chelsea", SIZE)
    recipe = write_recipe(tmp_path / "r.toml", '[task]\nname = "style"\nstyle = "skimage:hubble_deep_field"\n'
                          'style_layers = ["relu1_1", "relu2_1"]\ncontent_layers = ["relu2_1"]\ncolors = "content"\n'
                          '[optimizer]\niterations = 6\n[output]\nsize = 32\nsave_every = 2\n')
    assert cli_run(tmp_path, recipe) == ["cat.iter2.png", "cat.iter4.png", "cat.iter6.png", "cat.png", "cat.png.json"]
    final = imageio.load_image(tmp_path / "out" / "cat.png")
    assert torch.equal(imageio.load_image(tmp_path / "out" / "cat.iter6.png"), final)  # finished too
    assert not torch.equal(imageio.load_image(tmp_path / "out" / "cat.iter2.png"), final)
    for path in (tmp_path / "out").glob("cat.iter*"):
        path.unlink()
    assert cli_run(tmp_path, recipe, "output.keep_steps=false") == ["cat.png", "cat.png.json"]
    names = cli_run(tmp_path, recipe, "optimizer.iterations=10", "output.save_every=5")
    assert [n for n in names if ".iter" in n] == ["cat.iter05.png", "cat.iter10.png"]


def test_new_keys_at_their_defaults_leave_the_recipe_digest_alone():
    plain = style_recipe()
    explicit = style_recipe(colors="style", style_scale=1.0, style_weights=None,
                            output={"save_every": 0, "keep_steps": True})
    assert explicit.digest() == plain.digest()
    assert style_recipe(colors="content").digest() != plain.digest()
