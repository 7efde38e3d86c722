"""``rvgen compare`` and the metrics it reports."""

import csv
import json
import math

import pytest
import torch
from click.testing import CliRunner
from conftest import png_size, sample, write_recipe, write_sample

from rvgen import hookimpl, imageio, metrics
from rvgen.cli import cli
from rvgen.compare import parse_backbone_spec, plan_columns, run_comparison, write_outputs
from rvgen.engine import Term
from rvgen.errors import RecipeError, UsageError
from rvgen.params import Param
from rvgen.plugins import registry_with
from rvgen.tasks import Metric, Task


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---- metrics -----------------------------------------------------------------------------

def test_metrics_of_an_image_against_itself_and_against_noise():
    x = sample("astronaut", 48)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    assert metrics.psnr(x, x) == metrics.PSNR_CAP
    assert metrics.psnr(noise, x) < 12
    assert 20 < metrics.psnr((x + 0.02).clamp(0, 1), x) < 40
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert metrics.ssim(noise, x) < 0.2
    assert metrics.colour_distance(x, x) == 0.0
    assert metrics.colour_distance(torch.zeros_like(x), torch.ones_like(x)) == pytest.approx(1.0)
    assert metrics.colour_distance(x, x.flip(-1)) == pytest.approx(0.0, abs=1e-12)  # same colours, moved
    assert metrics.structure_distance(x, x) == 0.0
    evaluator = metrics.GramEvaluator()
    assert evaluator.distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert evaluator.distance(noise, x) > 10 * evaluator.distance(x.flip(-1), x)


def test_structure_distance_sees_layout_that_local_statistics_miss():
    """Stripes of period 8 against the same pixels in shuffled 4x4 tiles: same colours and
    local content, no long-range period. The structure distance tells them apart far more
    than two crops of the same stripes."""
    y = torch.arange(64).view(1, 1, 64, 1).expand(1, 3, 64, 64).float()
    stripes = ((y % 8) < 4).float() * 0.8 + 0.1
    shifted = torch.roll(stripes, shifts=3, dims=-2)
    tiles = stripes.unfold(2, 4, 4).unfold(3, 4, 4).reshape(1, 3, 256, 4, 4)
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    shuffled = tiles[:, :, order].reshape(1, 3, 16, 16, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 64, 64)
    assert metrics.colour_distance(shuffled, stripes) < 0.01
    same = metrics.structure_distance(shifted, stripes)
    broken = metrics.structure_distance(shuffled, stripes)
    assert broken > 5 * same and broken > 0.1


# ---- backbone specs and columns ----------------------------------------------------------

def test_backbone_specs_map_variants_and_options():
    registry = registry_with()
    assert parse_backbone_spec("random-vgg19", registry) == ("random-vgg19", {})
    assert parse_backbone_spec("random-vgg19:stacked", registry) == ("random-vgg19", {"stacked_candidates": 4})
    assert parse_backbone_spec("random-resnet50:softmax:temperature=0.5", registry) == (
        "random-resnet50", {"softmax": True, "temperature": 0.5})
    with pytest.raises(RecipeError, match=r"unknown backbone 'random-vgg91' \(did you mean 'random-vgg19'\?\)"):
        parse_backbone_spec("random-vgg91", registry)
    with pytest.raises(UsageError, match="has no variant 'stacke' \\(did you mean 'stacked'\\?\\); variants: max, stacked, stacked-pixels"):
        parse_backbone_spec("random-vgg19:stacke", registry)
    with pytest.raises(UsageError, match="random-resnet50 has no option 'pooling'"):
        parse_backbone_spec("random-resnet50:pooling=avg", registry)


def test_columns_map_vgg_layers_to_resnet_equivalents(tmp_path):
    registry = registry_with()
    data = {"task": {"name": "reconstruct"}, "backbone": {"name": "random-vgg19", "pooling": "max"},
            "output": {"size": 32}}
    columns, recipes = plan_columns(data, ["random-vgg19", "random-resnet18"], ["relu1_1", "relu3_1"], [0, 2],
                                    registry, tmp_path)
    assert [c.label for c in columns] == [
        "random-vgg19 seed 0 relu1_1", "random-vgg19 seed 0 relu3_1", "random-vgg19 seed 2 relu1_1",
        "random-vgg19 seed 2 relu3_1", "random-resnet18 seed 0 relu1_1=stem", "random-resnet18 seed 0 relu3_1=layer2.0",
        "random-resnet18 seed 2 relu1_1=stem", "random-resnet18 seed 2 relu3_1=layer2.0"]
    assert recipes[0].backbone["pooling"] == "max"  # the recipe's own backbone options are kept for it
    assert recipes[5].task["layer"] == "layer2.0" and recipes[7].backbone["seed"] == 2
    with pytest.raises(UsageError, match=r"--layers: the task .texture. declares no layer_option.*tasks that do: reconstruct"):
        plan_columns({"task": {"name": "texture"}}, [], ["relu1_1"], [], registry, tmp_path)
    with pytest.raises(UsageError, match="backbone random-resnet18 has no such layer and no equivalent"):
        plan_columns(data, ["random-resnet18"], ["relu3_3"], [], registry, tmp_path)
    with pytest.raises(UsageError, match="'random-vgg19 relu1_1' is asked for twice"):
        plan_columns(data, ["random-vgg19", "random-vgg19"], ["relu1_1"], [], registry, tmp_path)
    style = {"task": {"name": "style", "style": "skimage:brick", "style_layers": ["relu1_1", "relu3_1"],
                      "content_layers": ["relu4_2"]}}
    _, (vgg, resnet) = plan_columns(style, ["random-vgg19", "random-resnet50"], [], [], registry, tmp_path)
    assert vgg.task["style_layers"] == ["relu1_1", "relu3_1"]
    assert resnet.task["style_layers"] == ["stem", "layer2.0"] and resnet.task["content_layers"] == ["layer3.1"]


# ---- the command -------------------------------------------------------------------------

def test_compare_writes_a_sheet_and_tables_consistent_with_the_images(tmp_path):
    photos = tmp_path / "photos"
    write_sample(photos / "cat.png", "chelsea", 32)
    write_sample(photos / "coffee.png", "coffee", 32)
    recipe = write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\n[optimizer]\niterations = 4\n'
                                                '[output]\nsize = 32\n')
    out = tmp_path / "cmp"
    result = run("compare", recipe, "--input", photos, "--output", out, "--backbones", "random-vgg19,random-resnet18",
                 "--layers", "relu1_1,relu4_1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "PSNR dB by layer" in result.output and "relu4_1=layer3.0" in result.output

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 * 4 and {r["input"] for r in rows} == {"cat", "coffee"}
    for row in rows:  # each score matches the saved PNG (up to 8-bit rounding)
        image = imageio.load_image(out / "results" / row["column"].replace(" ", "_") / f"{row['input']}.png")
        source = imageio.load_image(photos / f"{row['input']}.png", 32)
        assert float(row["psnr"]) == pytest.approx(metrics.psnr(image, source), abs=0.3)
        assert float(row["ssim"]) == pytest.approx(metrics.ssim(image, source), abs=0.02)
    psnr = {(r["column"], r["input"]): float(r["psnr"]) for r in rows}
    # relu1_1 of the random VGG keeps almost everything after 4 steps; relu4_1 does not.
    assert all(psnr[("random-vgg19 relu1_1", n)] > psnr[("random-vgg19 relu4_1", n)] + 5 for n in ("cat", "coffee"))

    data = json.loads((out / "metrics.json").read_text())
    assert data["task"] == "reconstruct" and len(data["columns"]) == 4 and len(data["results"]) == 8
    summary = {row["column"]: row for row in data["summary"]}
    first = summary["random-vgg19 relu1_1"]["psnr"]
    values = [psnr[("random-vgg19 relu1_1", n)] for n in ("cat", "coffee")]
    assert first["n"] == 2 and first["mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
    assert first["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-4)
    delta = summary["random-resnet18 relu4_1=layer3.0"]["delta"]
    assert delta["baseline"] == "random-vgg19 relu4_1"
    assert delta["mean"] == pytest.approx(
        summary["random-resnet18 relu4_1=layer3.0"]["psnr"]["mean"] - summary["random-vgg19 relu4_1"]["psnr"]["mean"],
        abs=1e-4)
    assert (out / "summary.csv").read_text().count("\n") == 1 + 4

    width, height = png_size(out / "sheet.png")
    assert width >= 5 * 64 and height >= 2 * 64  # input + 4 columns, 2 rows


@pytest.mark.slow
def test_compare_texture_scores_against_the_input(tmp_path):
    registry = registry_with()
    data = {"task": {"name": "texture"}, "optimizer": {"iterations": 3}, "output": {"size": 32}}
    columns, recipes = plan_columns(data, ["random-resnet18"], [], [], registry, tmp_path)
    assert recipes[0].task["layers"] is None  # the ResNet's own style layers
    x = sample("brick", 32)
    comparison = run_comparison(columns, recipes, [("skimage:brick", "brick")], registry=registry)
    (outcome,) = comparison.outcomes
    assert set(outcome.scores) == {"gram", "structure", "colour"}
    evaluator = metrics.GramEvaluator()
    assert outcome.scores["gram"] == pytest.approx(evaluator.distance(outcome.image, x), rel=1e-4)
    assert outcome.scores["colour"] == pytest.approx(metrics.colour_distance(outcome.image, x))


def test_compare_bad_input_is_one_line(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\n')
    result = run("compare", recipe, "--output", tmp_path / "o", "--backbones", "random-resnet50:stacked")
    assert result.exit_code == 2
    assert result.output.startswith("Error: --backbones random-resnet50:stacked: random-resnet50 has no variant")
    assert result.output.count("\n") == 1
    result = run("compare", recipe, "--output", tmp_path / "o", "--seeds", "a,b")
    assert result.exit_code == 2 and "--seeds a,b: expected a comma list of integers" in result.output
    result = run("compare", recipe, "--output", tmp_path / "o", "--input", tmp_path / "missing")
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_structure_distance_ranks_brick_crops_before_shuffled_tiles_and_noise():
    """Two crops of scikit-image's brick wall (bricks at slightly different angles) are
    closer than the first crop with its tiles shuffled, which is closer than noise. The Gram
    distance, lenient about layout, rates the shuffled tiles closer than the real crop."""
    import torch.nn.functional as F

    wall = imageio.load_image("skimage:brick", 256)

    def crop(top, left):
        return F.interpolate(wall[..., top:top + 128, left:left + 128], size=(64, 64), mode="bilinear",
                             antialias=True)

    a, b = crop(0, 0), crop(128, 128)
    tiles = a.unfold(2, 8, 8).unfold(3, 8, 8).reshape(1, 3, 64, 8, 8)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    shuffled = tiles[:, :, order].reshape(1, 3, 8, 8, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 64, 64)
    noise = (a.mean() + a.std() * (torch.rand(a.shape, generator=torch.Generator().manual_seed(1)) * 3.4 - 1.7))
    crop_d, shuffled_d, noise_d = (metrics.structure_distance(x, a) for x in (b, shuffled, noise))
    assert 2 * crop_d < shuffled_d < noise_d
    evaluator = metrics.GramEvaluator()
    assert evaluator.distance(shuffled, a) < evaluator.distance(b, a)


def test_compare_style_scores_against_the_style_image_and_the_content(tmp_path):
    registry = registry_with()
    style = write_sample(tmp_path / "style.png", "hubble_deep_field", 32)
    data = {"task": {"name": "style", "style": "style.png"}, "optimizer": {"iterations": 2}, "output": {"size": 32}}
    columns, recipes = plan_columns(data, ["random-resnet18"], [], [], registry, tmp_path)
    comparison = run_comparison(columns, recipes, [("skimage:coffee", "coffee")], registry=registry)
    (outcome,) = comparison.outcomes
    content, reference = sample("coffee", 32), imageio.load_image(style, 32)
    assert set(outcome.scores) == {"gram", "structure", "colour", "content_ssim"}
    assert outcome.scores["colour"] == pytest.approx(metrics.colour_distance(outcome.image, reference))
    assert outcome.scores["content_ssim"] == pytest.approx(metrics.ssim(outcome.image, content))
    assert outcome.scores["content_ssim"] > 0.5  # two iterations from the content photo keep it


# ---- plugin tasks ------------------------------------------------------------------------

class Blur(Task):
    """A third-party task: reconstruct relu1_1 and declare its own score."""

    name = "blur-copy"
    params = (Param("seed", int, 0, "seed"),)
    metrics = (Metric("mae", "mean abs err", False, 4),)

    def terms(self):
        return [Term("content", "content", ("relu1_1",))]

    def score(self, result, content, references):
        return {"mae": float((result - content).abs().mean())}


class Unscored(Blur):
    name = "unscored"
    metrics = ()

    def score(self, result, content, references):
        raise AssertionError("a task without metrics is not scored")


class TaskPlugin:
    @hookimpl
    def register_tasks(self, register):
        register(Blur)
        register(Unscored)


def test_compare_runs_a_plugin_task_and_scores_it_with_its_own_metric(tmp_path):
    registry = registry_with([TaskPlugin()])
    data = {"task": {"name": "blur-copy"}, "optimizer": {"iterations": 6}, "output": {"size": 32}}
    columns, recipes = plan_columns(data, ["random-vgg19"], [], [0, 1], registry, tmp_path)
    inputs = [("skimage:chelsea", "cat"), ("skimage:coffee", "coffee")]
    comparison = run_comparison(columns, recipes, inputs, tmp_path / "out", registry=registry)
    assert len(comparison.outcomes) == 4 and not comparison.failures
    for o in comparison.outcomes:
        content = sample("chelsea" if o.input == "cat" else "coffee", 32)
        assert o.scores == {"mae": pytest.approx(float((o.image - content).abs().mean()))}
        start = float((0.5 - content).abs().mean())  # the mid-grey noise it started from
        assert o.scores["mae"] < 0.4 * start  # relu1_1 gives the photo back
        written = imageio.load_image(tmp_path / "out" / "results" / columns[o.column].slug / f"{o.input}.png")
        assert (written - o.image).abs().max() <= 0.5 / 255 + 1e-6  # the file is the scored image
    summary = {row["column"]: row for row in comparison.summary()}
    # The paired difference is taken against the first backbone at the same seed: itself here.
    assert summary["random-vgg19 seed 1"]["delta"]["baseline"] == "random-vgg19 seed 1"
    assert summary["random-vgg19 seed 1"]["delta"]["mean"] == 0.0
    assert summary["random-vgg19 seed 0"]["mae"]["n"] == 2

    paths = write_outputs(comparison, tmp_path / "out", {})
    header = (tmp_path / "out" / "metrics.csv").read_text().splitlines()[0]
    assert header == "column,backbone,seed,layer,backbone_layer,input,mae,seconds,loss"
    assert png_size(paths["sheet"])[0] >= 3 * 64


def test_compare_runs_a_task_without_metrics_and_still_draws_its_sheet(tmp_path):
    registry = registry_with([TaskPlugin()])
    data = {"task": {"name": "unscored"}, "optimizer": {"iterations": 2}, "output": {"size": 32}}
    columns, recipes = plan_columns(data, ["random-vgg19"], [], [], registry, tmp_path)
    comparison = run_comparison(columns, recipes, [("skimage:coffee", "coffee")], tmp_path / "out", registry=registry)
    (outcome,) = comparison.outcomes
    assert outcome.scores == {} and outcome.loss < 1
    paths = write_outputs(comparison, tmp_path / "out", {})
    assert paths["sheet"].is_file()
    assert json.loads(paths["json"].read_text())["summary"][0]["n"] == 1


@pytest.mark.slow
def test_compare_runs_each_column_on_two_cpu_workers(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n'
                                               '[optimizer]\niterations = 20\n[output]\nsize = 24\n')
    result = run("compare", recipe, "--input", "skimage:chelsea,coffee,camera", "--output", tmp_path / "cmp",
                 "--seeds", "0,1", "--devices", "cpu", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "on cpu (2 worker(s))" in result.output
    rows = list(csv.DictReader((tmp_path / "cmp" / "metrics.csv").open()))
    assert len(rows) == 6 and all(float(r["psnr"]) > 25 for r in rows)
    sidecars = list((tmp_path / "cmp" / "results").rglob("*.png.json"))
    assert len(sidecars) == 6
    assert {json.loads(p.read_text())["device"] for p in sidecars} == {"cpu"}
