"""Masks and regions: where the style goes (task.mask, mask_rule, regions, labels), the guided
Gram matrices behind them (rvgen.engine.guides), and the files that record them."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import sample, write_recipe, write_sample
from PIL import Image

from rvgen import Pipeline, imageio
from rvgen.backbones.vgg import RandomVGG19
from rvgen.cli import cli
from rvgen.engine.guides import feather, propagate, weighting
from rvgen.engine.objective import Objective, Term
from rvgen.errors import ImageError, RecipeError
from rvgen.losses import gram_matrix
from rvgen.losses.builtin import GramLoss
from rvgen.recipe import parse_recipe
from rvgen.tasks.masks import mask_path, parse_rule, rule_mask

SIZE = 32
VGG = {"seed": 0, "init": "uniform", "std": 0.015, "pooling": "avg", "normalize": "imagenet"}
LAYERS = ["relu1_1", "relu2_1"]


def style_recipe(**task):
    data = {
        "task": {"name": "style", "style": "skimage:hubble_deep_field", "style_layers": LAYERS,
                 "content_layers": ["relu2_1"], **task},
        "optimizer": {"iterations": 2},
        "output": {"size": SIZE},
    }
    return parse_recipe(data)


def save_mask(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def half_mask(h, w, value=255):
    a = np.zeros((h, w), np.uint8)
    a[:, w // 2:] = value
    return a


def masked_recipe_file(tmp_path):
    """A recipe file styling each input under tmp_path/masks/{stem}.png, quickly."""
    return write_recipe(tmp_path / "r.toml", f"""
[task]
name = "style"
style = "skimage:hubble_deep_field"
style_layers = {json.dumps(LAYERS)}
mask = "{tmp_path}/masks/{{stem}}.png"
[optimizer]
iterations = 2
[output]
size = {SIZE}
""")


def masked_run(recipe, photo_path):
    pipe = Pipeline(recipe)
    (out,) = pipe.run([str(photo_path)])
    return out.tensor, pipe.load(str(photo_path))


# -- patterns -------------------------------------------------------------------------------


def test_a_pattern_names_each_inputs_mask_by_its_stem_and_folder(tmp_path, monkeypatch):
    assert mask_path("/m/{stem}.png", "beach.jpg").as_posix() == "/m/beach.png"
    assert mask_path("/m/{relpath}/{stem}.png", "beach.jpg").as_posix() == "/m/beach.png"  # empty at the top
    assert mask_path("/m/{relpath}/{stem}.png", "2024/may/beach.jpg").as_posix() == "/m/2024/may/beach.png"
    monkeypatch.chdir(tmp_path)  # relative to where rvgen runs, as --set paths are
    recipe = style_recipe(mask="masks/{stem}.png")
    assert recipe.task["mask"] == str(tmp_path / "masks" / "{stem}.png")
    with pytest.raises(RecipeError, match=r"^task\.mask: a pattern may name only \{stem\} and \{relpath\}"):
        style_recipe(mask="masks/{name}.png")
    with pytest.raises(RecipeError, match=r"^task\.mask: a pattern may name only"):
        style_recipe(mask="masks/{stem.__class__}.png")


# -- the engine: guides at each layer, guided Grams ------------------------------------------


def test_a_mask_reaches_each_layer_resized_eroded_or_dilated_by_the_receptive_field():
    vgg = RandomVGG19(VGG, ["relu3_1"])
    geometry = vgg.tile_geometry(["relu3_1"])
    stride, margin = geometry.strides["relu3_1"], geometry.margin
    assert stride == 4 and margin > stride
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 32:] = 1
    shape = (16, 16)
    resized = propagate(mask, shape, "resize", stride, margin)
    inside = propagate(mask, shape, "inside", stride, margin)
    touched = propagate(mask, shape, "all", stride, margin)
    assert resized.shape == inside.shape == touched.shape == (1, 1, 16, 16)
    assert resized[0, 0, 0].tolist() == [0.0] * 8 + [1.0] * 8  # the edge falls on a cell's edge
    reach = -(-margin // stride)  # positions within the receptive field of the edge
    row_in, row_all = inside[0, 0, 5].tolist(), touched[0, 0, 5].tolist()
    assert row_in == [0.0] * (8 + reach) + [1.0] * (8 - reach)  # eroded by the field
    assert row_all == [0.0] * (8 - reach) + [1.0] * (8 + reach)  # dilated by it
    assert inside[0, 0, :, -1].eq(1).all()  # the image's own border erodes nothing


def test_a_guided_gram_is_the_mask_weighted_mean_and_a_small_region_is_not_a_weak_one():
    torch.manual_seed(0)
    f = torch.rand(2, 5, 8, 8)
    ones = torch.ones(2, 1, 8, 8)
    factor, present = weighting(ones)
    assert torch.allclose(gram_matrix(f * factor), gram_matrix(f)) and present.tolist() == [1.0, 1.0]
    small = torch.zeros(2, 1, 8, 8)
    small[..., :2, :2] = 1  # 4 of 64 positions
    small[1] = 0  # the second image has no region at all
    factor, present = weighting(small)
    expected = gram_matrix(f[:1, :, :2, :2])  # the Gram of the region alone, at full strength
    assert torch.allclose(gram_matrix(f * factor)[0], expected[0], atol=1e-6)
    assert present.tolist() == [1.0, 0.0] and factor[1].abs().sum() == 0


def tiny_objective(guided: bool = True):
    vgg = RandomVGG19(VGG, ["relu2_1"]).eval().requires_grad_(False)
    term = Term("style", "gram", ("relu1_1", "relu2_1"), 1.0, "style", "equal", guide="mask" if guided else None)
    return Objective(vgg, [term], [GramLoss()])


def test_guided_terms_evaluate_the_same_in_tiles_per_image_and_in_a_batch():
    torch.manual_seed(0)
    x, style = torch.rand(2, 3, 32, 32), torch.rand(1, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, ..., 13:] = 1
    mask[1, ..., :20, :] = 0.5
    obj = tiny_objective()
    obj.set_targets({"style": style})
    obj.set_guides({"mask": mask})
    whole_loss, whole_grad = obj.value_and_grad(x)
    obj.tile_size = 16
    tiled_loss, tiled_grad = obj.value_and_grad(x)
    assert torch.allclose(tiled_loss, whole_loss, rtol=1e-4)
    assert torch.allclose(tiled_grad, whole_grad, rtol=1e-3, atol=1e-6 * float(whole_grad.abs().max()))
    obj.tile_size = None
    with obj.subset([1]):
        alone, _ = obj.value_and_grad(x[1:])
    assert torch.allclose(alone, whole_loss[1:], rtol=1e-5)


def test_a_paintings_mask_takes_the_target_from_its_white_part_even_for_an_adapted_reference():
    vgg = RandomVGG19(VGG, ["relu2_1"]).eval().requires_grad_(False)
    term = Term("style", "gram", ("relu1_1", "relu2_1"), 1.0, "style", "equal", target_guide="style_mask")
    obj = Objective(vgg, [term], [GramLoss()])
    two = torch.zeros(1, 3, 32, 32)
    two[:, 0, :, :16], two[:, 2, :, 16:] = 0.9, 0.9  # red | blue
    right = torch.zeros(1, 3, 32, 32)
    right[..., 16:] = 1
    obj.set_targets({"style": two, "style_mask": right})
    guided = obj.targets[(0, "relu2_1")][0]
    obj.set_targets({"style": two})  # a reference adapted per input comes alone: the mask is kept
    assert torch.equal(obj.targets[(0, "relu2_1")][0], guided)
    plain = tiny_objective(guided=False)
    grams = {}
    for name, channel in (("red", 0), ("blue", 2)):
        flat = torch.zeros(1, 3, 32, 32)
        flat[:, channel] = 0.9
        plain.set_targets({"style": flat})
        grams[name] = plain.targets[(0, "relu2_1")][0]
    to = {name: float((guided - g).norm() / g.norm()) for name, g in grams.items()}
    assert to["blue"] < 0.25 < 1.0 < to["red"], to


def test_feathering_fades_over_a_few_pixels_and_leaves_the_rest_exact():
    mask = torch.zeros(1, 1, 8, 40)
    mask[..., 20:] = 1
    soft = feather(mask, 3.0)
    row = soft[0, 0, 4]
    assert row[:15].eq(0).all() and row[25:].eq(1).all()  # exactly the photo beyond the edge
    assert 0 < row[19] < 0.5 < row[20] < 1


# -- the style task ---------------------------------------------------------------------------


@pytest.fixture
def photo(tmp_path):
    return write_sample(tmp_path / "photos" / "cat.png", "chelsea", SIZE)


def test_black_keeps_the_photo_white_equals_the_unmasked_run_and_half_keeps_half(tmp_path, photo):
    h, w = imageio.load_image(str(photo)).shape[-2:]
    names = {"white": np.full((h, w), 255), "black": np.zeros((h, w)),
             "half": half_mask(2 * h, 3 * w)}  # another size than the photo
    for name, array in names.items():  # one copy of the photo per mask: one pipeline for all
        (tmp_path / f"{name}.png").write_bytes(photo.read_bytes())
        save_mask(tmp_path / "masks" / f"{name}.png", array)
    pipe = Pipeline(style_recipe(mask=str(tmp_path / "masks" / "{stem}.png")))
    white, black, half = (o.tensor for o in pipe.run([str(tmp_path / f"{name}.png") for name in names]))
    plain, content = masked_run(style_recipe(), photo)
    assert torch.allclose(white, plain, atol=2e-5)
    assert torch.equal(black, content)
    edge = 5  # the feathered edge: 3 px, reaching 4.5
    kept, styled = (slice(None), slice(None), slice(None), slice(0, w // 2 - edge)), \
        (slice(None), slice(None), slice(None), slice(w // 2 + edge, None))
    assert torch.allclose(half[kept], content[kept], atol=1e-6)
    assert (half[styled] - content[styled]).abs().mean() > 0.5 * (plain[styled] - content[styled]).abs().mean()


def test_a_folder_with_masks_records_them_redoes_a_changed_one_and_fails_a_missing_one(tmp_path, photos):
    mask = save_mask(tmp_path / "masks" / "cat.png", half_mask(SIZE, SIZE))  # trip/coffee.png has none
    out = tmp_path / "out"
    args = ["run", str(masked_recipe_file(tmp_path)), "-i", str(photos), "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # one image failed, the other is made
    assert (out / "cat.png").exists() and not (out / "trip" / "coffee.png").exists()
    line = [ln for ln in result.output.splitlines() if "mask not found" in ln]
    assert line and all(f"{tmp_path}/masks/coffee.png" in ln and "trip/coffee.png" in ln for ln in line)
    assert "Traceback" not in result.output

    recorded = json.loads((out / "cat.png.json").read_text())["masks"]
    page = (out / "index.html").read_text()
    assert page.count("<figcaption>mask</figcaption>") == 1 and "masks/cat.png" in page  # beside the result
    info = CliRunner().invoke(cli, ["info", str(out / "cat.png")])
    assert f"mask:       mask (sha256 {recorded['mask']})" in info.output

    save_mask(mask, half_mask(SIZE, SIZE, 128))  # the same name, another mask: made again
    redo = CliRunner().invoke(cli, [*args, "--set", "task.mask_missing=whole"])  # and coffee styled whole
    assert redo.exit_code == 0 and "2 done" in redo.output, redo.output
    assert json.loads((out / "cat.png.json").read_text())["masks"] != recorded
    assert json.loads((out / "trip" / "coffee.png.json").read_text())["masks"] == {"mask": "missing"}
    again = CliRunner().invoke(cli, [*args, "--set", "task.mask_missing=whole"])
    assert "0 done, 0 failed, 2 already done" in again.output, again.output


def test_a_rule_makes_the_mask_from_the_photo_without_eval():
    image = torch.zeros(1, 3, 2, 3)
    image[0, :, 0, 0] = 1.0  # white
    image[0, 0, 0, 1] = 1.0  # red
    image[0, 1, 0, 2] = 1.0  # green
    image[0, 2, 1, 0] = 1.0  # blue
    image[0, :, 1, 1] = 0.3  # dark grey
    assert rule_mask(parse_rule("luminance > 0.6", "k"), image)[0, 0].tolist() == [[1, 0, 0], [0, 0, 0]]
    assert rule_mask(parse_rule("hue in 90..150 and saturation > 0.5", "k"), image)[0, 0].tolist() == \
        [[0, 0, 1], [0, 0, 0]]
    assert rule_mask(parse_rule("hue in 330..30 and saturation >= .5 or not (value > 0.2)", "k"),
                     image)[0, 0].tolist() == [[0, 1, 0], [0, 0, 1]]  # a hue range past 360; not; or
    for bad, why in [("luminance > 2", "thresholds go from 0 to 1"), ("brightness > 0.5", "unknown channel"),
                     ("__import__('os')", "cannot read the rule"), ("luminance >", "expected number"),
                     ("luminance > 0.5 0.6", "unexpected")]:
        with pytest.raises(RecipeError, match=rf"^task\.mask_rule: .*{why}"):
            style_recipe(mask_rule=bad)


def test_region_tables_are_checked_with_one_line_naming_the_key(tmp_path):
    region = {"mask": "m/{stem}.png", "style": "skimage:coffee"}
    cases = [
        ({"regions": [{**region, "color": "#00ff00"}]}, r"^task\.regions\[0\]: give one of mask"),
        ({"regions": [{"color": "#00ff00", "style": "skimage:coffee"}]}, r"^task\.regions\[0\]\.color: needs task\.labels"),
        ({"labels": "l/{stem}.png", "regions": [{"color": "green", "style": "skimage:coffee"}]},
         r"^task\.regions\[0\]\.color: expected a colour"),
        ({"regions": [{**region, "stlye": "x"}]}, r"^task\.regions\[0\]\.stlye: unknown key \(did you mean 'style'\?\)"),
        ({"regions": [{"mask": "m/{stem}.png"}]}, r"^task\.regions\[0\]\.style: required"),
        ({"regions": [{**region, "style": "nope.png"}]}, r"^task\.regions\[0\]\.style: file not found"),
        ({"regions": {"mask": "x"}}, r"^task\.regions: expected an array of tables"),
        ({"regions": [region], "mask": "m/{stem}.png"}, r"^task\.regions: give either regions or a mask"),
        ({"style": None}, r"^task\.style: required"),
    ]
    for task, message in cases:
        with pytest.raises(RecipeError, match=message):
            style_recipe(**task)
        assert "\n" not in str(pytest.raises(RecipeError, style_recipe, **task).value)


def test_the_new_keys_absent_or_at_their_defaults_change_no_digest():
    plain = style_recipe()
    explicit = style_recipe(mask=None, mask_rule=None, regions=None, labels=None, mask_missing="fail",
                            mask_propagation="resize", feather=3.0)
    assert explicit.digest() == plain.digest()
    assert style_recipe(mask_rule="luminance > 0.5").digest() != plain.digest()
    terms = parse_recipe({"task": {"name": "reconstruct"},
                          "terms": [{"loss": "tv", "layers": ["pixels"], "weight": 0.1}]}).to_dict()["terms"]
    assert "guide" not in terms[0] and "target_guide" not in terms[0]


def test_regions_from_a_label_image_each_take_their_own_painting(tmp_path, photo):
    h, w = imageio.load_image(str(photo)).shape[-2:]
    labels = np.zeros((h, w, 3), np.uint8)
    labels[:, : w // 2] = (255, 0, 0)
    labels[:, w // 2:] = (0, 255, 0)
    (tmp_path / "labels").mkdir()
    Image.fromarray(labels).save(tmp_path / "labels" / "cat.png")
    recipe = style_recipe(style=None, labels=str(tmp_path / "labels" / "{stem}.png"), regions=[
        {"color": "#ff0000", "style": "skimage:coffee"},
        {"color": "#0f0", "style": "skimage:hubble_deep_field", "style_weight": 40.0},
    ])
    assert ("task.labels", str(tmp_path / "labels" / "{stem}.png")) in recipe.files()  # --from says it reads them
    task = recipe.build_task()
    assert set(task.references()) == {"region1", "region2"}
    guides = task.guides("cat.png", imageio.load_image(str(photo)))
    assert set(guides) == {"region1", "region2", "styled"}
    assert guides["region1"][..., : w // 2].eq(1).all() and guides["region1"][..., w // 2:].eq(0).all()
    terms = [t for t in task.terms() if t.name == "style"]
    assert [(t.target, t.guide, t.weight) for t in terms] == [("region1", "region1", 20.0),
                                                              ("region2", "region2", 40.0)]
    with pytest.raises(ImageError, match="label image not found"):
        task.guides("dog.png", imageio.load_image(str(photo)))


def test_a_masked_texture_takes_its_statistics_from_the_masked_part_of_the_input(tmp_path):
    torch.manual_seed(0)
    photo = torch.zeros(1, 3, 32, 32)
    photo[:, 0, :, :16] = 0.6 + 0.4 * torch.rand(32, 16)  # red noise on the left
    photo[:, 2, :, 16:] = 0.6 + 0.4 * torch.rand(32, 16)  # blue noise on the right
    path = tmp_path / "two.png"
    imageio.to_pil(photo).save(path)
    data = {"task": {"name": "texture", "layers": ["relu1_1", "relu2_1"], "mask_rule": "hue in 200..260"},
            "optimizer": {"iterations": 8}, "output": {"size": 32}}
    (out,) = Pipeline(parse_recipe(data)).run([str(path)])
    red, blue = float(out.tensor[:, 0].mean()), float(out.tensor[:, 2].mean())
    assert blue > 0.65 and red < 0.1, (red, blue)  # the blue half's texture only (unmasked: 0.51 and 0.33)


@pytest.mark.slow
def test_two_regions_each_come_closer_to_their_own_painting(tmp_path):
    from pathlib import Path

    from rvgen import metrics

    styles = Path(__file__).resolve().parents[1] / "recipes" / "styles"
    photo = write_sample(tmp_path / "cat.png", "chelsea", 96)
    h, w = imageio.load_image(str(photo)).shape[-2:]
    save_mask(tmp_path / "left" / "cat.png", 255 - half_mask(h, w))
    save_mask(tmp_path / "right" / "cat.png", half_mask(h, w))
    data = {"task": {"name": "style", "style_layers": LAYERS + ["relu3_1", "relu4_1"], "style_weight": 30.0, "regions": [
        {"mask": str(tmp_path / "left" / "{stem}.png"), "style": str(styles / "monet.jpg")},
        {"mask": str(tmp_path / "right" / "{stem}.png"), "style": str(styles / "starry_night.jpg")}]},
        "optimizer": {"iterations": 40}, "output": {"size": 96}}
    (out,) = Pipeline(parse_recipe(data)).run([str(photo)])
    monet, starry = (imageio.load_image(str(styles / name), 96) for name in ("monet.jpg", "starry_night.jpg"))
    left, right = out.tensor[..., : w // 2 - 4], out.tensor[..., w // 2 + 4:]
    assert metrics.gram_distance(left, monet) < metrics.gram_distance(left, starry)
    assert metrics.gram_distance(right, starry) < metrics.gram_distance(right, monet)
