"""Recipes: defaults, every kind of error, overrides, path resolution and the shipped recipes."""

from pathlib import Path

import pytest
from conftest import write_recipe, write_sample

from rvgen.errors import RecipeError, UsageError
from rvgen.recipe import apply_overrides, load_recipe, parse_recipe, parse_value

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def error(data, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(data, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_a_four_line_recipe_fills_sensible_defaults():
    recipe = parse_recipe({"task": {"name": "reconstruct"}})
    assert recipe.backbone["name"] == "random-vgg19"
    assert recipe.backbone["init"] == "uniform" and recipe.backbone["pooling"] == "avg"
    assert recipe.optimizer.name == "lbfgs" and recipe.optimizer.iterations == 300
    assert recipe.output["size"] == 512 and recipe.output["format"] == "png"
    assert recipe.task["layer"] is None  # resolved to the backbone's default by the task


def test_unknown_table_suggests_the_nearest():
    msg = error({"task": {"name": "reconstruct"}, "optimiser": {"iterations": 3}})
    assert msg.startswith("optimiser: unknown table") and "did you mean 'optimizer'" in msg


def test_unknown_key_names_the_key_path_and_suggests():
    msg = error({"task": {"name": "reconstruct"}, "optimizer": {"iteratons": 3}})
    assert msg.startswith("optimizer.iteratons: unknown key") and "'iterations'" in msg
    assert "allowed:" in msg


@pytest.mark.parametrize(
    ("section", "value", "expected"),
    [
        ({"optimizer": {"iterations": "ten"}}, "optimizer.iterations", "expected int, got string 'ten'"),
        ({"optimizer": {"iterations": True}}, "optimizer.iterations", "expected int, got boolean"),
        ({"optimizer": {"iterations": 0}}, "optimizer.iterations", "must be at least 1"),
        ({"optimizer": {"name": "sgd"}}, "optimizer.name", "allowed: adam, lbfgs"),
        ({"output": {"size": 4.5}}, "output.size", "expected int"),
        ({"backbone": {"pooling": "mean"}}, "backbone.pooling", "allowed: avg, max"),
        ({"backbone": {"seed": "zero"}}, "backbone.seed", "expected int"),
    ],
)
def test_wrong_types_choices_and_ranges(section, value, expected):
    msg = error({"task": {"name": "reconstruct"}, **section})
    assert msg.startswith(value) and expected in msg


def test_unknown_plugin_names_suggest_the_nearest():
    msg = error({"task": {"name": "stlye"}})
    assert msg.startswith("task.name: unknown task 'stlye'") and "did you mean 'style'" in msg
    msg = error({"task": {"name": "reconstruct"}, "backbone": {"name": "random-vgg91"}})
    assert msg.startswith("backbone.name") and "did you mean 'random-vgg19'" in msg
    msg = error({"task": {"name": "texture", "loss": "gramm"}})
    assert msg.startswith("task.loss: unknown loss 'gramm'") and "'gram'" in msg


def test_missing_task_name_lists_the_tasks():
    msg = error({"task": {"layer": "relu2_1"}})
    assert msg.startswith("task.name: required") and "reconstruct, style, texture" in msg


def test_unknown_layer_names_the_backbone_and_suggests():
    msg = error({"task": {"name": "reconstruct", "layer": "relu3_l"}})
    assert msg.startswith("task.layer: unknown layer 'relu3_l' for backbone random-vgg19")
    assert "did you mean 'relu3_1'" in msg
    msg = error({"task": {"name": "texture", "layers": ["relu1_1", "relu9_1"]}})
    assert msg.startswith("task.layers[1]: unknown layer 'relu9_1'")
    # random-vgg16 has no relu5_4
    msg = error({"task": {"name": "reconstruct", "layer": "relu5_4"}, "backbone": {"name": "random-vgg16"}})
    assert "for backbone random-vgg16" in msg


def test_style_needs_its_style_image(tmp_path):
    msg = error({"task": {"name": "style"}})
    assert msg.startswith("task.style: required")
    msg = error({"task": {"name": "style", "style": "nowhere.jpg"}}, base_dir=tmp_path)
    assert msg == f"task.style: file not found: {tmp_path / 'nowhere.jpg'}"


def test_paths_resolve_relative_to_the_recipe_file(tmp_path, monkeypatch):
    style = write_sample(tmp_path / "recipes" / "art" / "s.png", "coffee", 16)
    path = write_recipe(tmp_path / "recipes" / "r.toml", '[task]\nname = "style"\nstyle = "art/s.png"\n')
    monkeypatch.chdir(tmp_path)  # the working folder does not matter
    assert load_recipe(path).task["style"] == str(style)


def test_set_paths_resolve_relative_to_the_working_folder(tmp_path, monkeypatch):
    other = write_sample(tmp_path / "elsewhere" / "o.png", "coffee", 16)
    write_sample(tmp_path / "recipes" / "s.png", "coffee", 16)
    path = write_recipe(tmp_path / "recipes" / "r.toml", '[task]\nname = "style"\nstyle = "s.png"\n')
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_recipe(path, ["task.style=o.png"]).task["style"] == str(other)


def test_sample_images_are_accepted_and_checked():
    assert parse_recipe({"task": {"name": "style", "style": "skimage:coffee"}}).task["style"] == "skimage:coffee"
    msg = error({"task": {"name": "style", "style": "skimage:cofee"}})
    assert msg.startswith("task.style: unknown sample image 'cofee'") and "'coffee'" in msg


@pytest.mark.parametrize(
    ("text", "value"),
    [("50", 50), ("1e-3", 0.001), ("true", True), ('"relu2_1"', "relu2_1"), ("relu2_1", "relu2_1"),
     ('["relu1_1", "relu2_1"]', ["relu1_1", "relu2_1"]), ("[64, 48]", [64, 48]), ("photos/a b.jpg", "photos/a b.jpg")],
)
def test_set_values_parse_as_toml_or_fall_back_to_strings(text, value):
    assert parse_value(text) == value


def test_overrides_reach_any_key_and_are_validated(tmp_path):
    path = write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\n[optimizer]\niterations = 300\n')
    recipe = load_recipe(path, ["optimizer.iterations=50", "backbone.seed=7", "task.layer=relu2_1"])
    assert recipe.optimizer.iterations == 50 and recipe.backbone["seed"] == 7 and recipe.task["layer"] == "relu2_1"
    with pytest.raises(RecipeError, match=r"^optimizer\.iteratons: unknown key"):
        load_recipe(path, ["optimizer.iteratons=5"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(path, ["optimizer.iterations"])
    with pytest.raises(RecipeError, match=r"--set task\.name\.x: task\.name is not a table"):
        apply_overrides({"task": {"name": "style"}}, ["task.name.x=1"])


def test_invalid_toml_and_missing_recipe_are_one_line(tmp_path):
    path = write_recipe(tmp_path / "bad.toml", "[task\nname = 1\n")
    with pytest.raises(RecipeError, match=r"bad\.toml: invalid TOML"):
        load_recipe(path)
    with pytest.raises(UsageError, match=r"nope\.toml: no such file and no shipped recipe"):
        load_recipe(tmp_path / "nope.toml")


def test_python_takes_shipped_names_and_overrides_as_strings_or_dicts():
    by_name = load_recipe("starry_night", ["output.size=96", "optimizer.iterations=7"])
    assert by_name.source.endswith("starry_night.toml")
    dotted = load_recipe("starry_night", {"output.size": 96, "optimizer.iterations": 7})
    nested = load_recipe("starry_night.toml", {"output": {"size": 96}, "optimizer": {"iterations": 7}})
    assert by_name.digest() == dotted.digest() == nested.digest() != load_recipe("starry_night").digest()
    with pytest.raises(RecipeError, match=r"^output\.size: expected int"):
        load_recipe("starry_night", {"output": {"size": "big"}}, flag="overrides")
    with pytest.raises(RecipeError, match=r"^overrides: expected a list of KEY=VALUE strings or a dict"):
        load_recipe("starry_night", "output.size=96", flag="overrides")


def test_explicit_layer_weights_must_cover_the_layers():
    data = {"task": {"name": "texture", "layers": ["relu1_1", "relu2_1"], "weighting": {"relu1_1": 1.0}}}
    assert error(data) == "task.weighting: no weight for relu2_1"
    data["task"]["weighting"] = {"relu1_1": 1.0, "relu2_1": 0.5}
    assert parse_recipe(data).task["weighting"] == {"relu1_1": 1.0, "relu2_1": 0.5}
    data["task"]["weighting"] = "sometimes"
    assert error(data).startswith("task.weighting: unknown weighting 'sometimes'")


def test_extra_terms_are_validated():
    base = {"task": {"name": "style", "style": "skimage:coffee"}}
    ok = parse_recipe({**base, "terms": [{"loss": "gram", "layers": ["relu1_1"], "target": "style", "weight": 2.0}]})
    assert ok.terms[0].target == "style" and ok.terms[0].weight == 2.0 and ok.terms[0].name == "gram"
    msg = error({**base, "terms": [{"loss": "gram", "layers": ["relu1_1"], "target": "syle"}]})
    assert msg.startswith("terms[0].target: unknown target 'syle'") and "'style'" in msg
    msg = error({**base, "terms": [{"loss": "content", "layers": ["relu1_1"], "target": "none"}]})
    assert msg.startswith("terms[0].target: loss 'content' compares with an image")
    msg = error({**base, "terms": [{"loss": "tv"}]})
    assert msg.startswith("terms[0].layers: required")


def test_digest_follows_what_changes_results():
    a = parse_recipe({"task": {"name": "reconstruct"}, "description": "one"})
    b = parse_recipe({"task": {"name": "reconstruct"}, "description": "two"})
    c = parse_recipe({"task": {"name": "reconstruct"}, "backbone": {"seed": 1}})
    assert a.digest() == b.digest() != c.digest()


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.description, "every shipped recipe says what it does"


def test_every_task_has_a_shipped_recipe():
    tasks = {load_recipe(p).task["name"] for p in RECIPES.glob("*.toml")}
    assert {"reconstruct", "texture", "style"} <= tasks
