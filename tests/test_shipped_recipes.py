"""Shipped recipes: they parse, travel as package data, resolve by name from any folder,
and `rvgen recipes` lists them."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from rvgen import shipped
from rvgen.cli import cli
from rvgen.errors import UsageError
from rvgen.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ROOT = RECIPES.parent


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_the_shipped_recipes_are_the_repository_folder():
    assert shipped.recipes_dir() == RECIPES
    assert set(shipped.shipped()) == {p.stem for p in RECIPES.glob("*.toml")}
    assert {"monet", "great_wave", "starry_night", "scream", "texture", "reconstruct"} <= set(shipped.shipped())


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*.toml")))
def test_every_shipped_recipe_parses_and_its_style_image_is_shipped(name):
    recipe = load_recipe(shipped.resolve(name))
    assert recipe.description and shipped.description(shipped.shipped()[name]) == recipe.description
    style = recipe.task.get("style")
    if style is not None:
        assert Path(style).is_file() and Path(style).parent == RECIPES / "styles"


def test_every_style_image_is_512_px_and_credited():
    from PIL import Image

    credits = (RECIPES / "styles" / "README.md").read_text()
    images = sorted((RECIPES / "styles").glob("*.jpg"))
    assert {p.name for p in images} >= {"monet.jpg", "great_wave.jpg", "starry_night.jpg", "the_scream.jpg"}
    for path in images:
        assert max(Image.open(path).size) == 512, path.name
        assert f"`{path.name}`" in credits, path.name


def test_a_name_resolves_from_any_folder_and_an_existing_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped.resolve("monet") == RECIPES / "monet.toml"
    assert shipped.resolve("monet.toml") == RECIPES / "monet.toml"
    (tmp_path / "monet").write_text('[task]\nname = "reconstruct"\n')
    assert shipped.resolve("monet") == Path("monet")  # a file of that name wins
    (tmp_path / "monet.toml").write_text('[task]\nname = "reconstruct"\n')
    assert shipped.resolve("monet.toml") == Path("monet.toml")


def test_an_unknown_name_is_one_line_listing_the_shipped_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:
        shipped.resolve("monett")
    message = str(info.value)
    assert "\n" not in message
    assert "did you mean 'monet'?" in message
    assert "shipped: great_wave, monet," in message
    with pytest.raises(UsageError, match="no such file"):
        shipped.resolve("sub/monet.toml")  # a path with a folder is never a shipped name
    result = run("run", "monett", "--dry-run")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"Error: {message}"]
    assert run("compare", "nothing_like_it", "-o", tmp_path / "c").exit_code == 2


def test_run_by_name_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("run", "monet", "-i", "skimage:coffee", "-o", "out", "--devices", "cpu", "-q",
                 "--set", "output.size=32", "--set", "optimizer.iterations=2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "coffee.png").is_file()
    default = run("run", "great_wave", "-i", "skimage:coffee", "--dry-run")
    assert default.exit_code == 0, default.output
    assert "rvgen-out/great_wave" in default.output


def test_recipes_command_lists_names_and_descriptions():
    result = run("recipes")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name, path in shipped.shipped().items():
        assert name in result.output
        assert " ".join(shipped.description(path).split()[:4]) in text


def test_the_package_data_globs_cover_every_shipped_file():
    """setup.py ships recipes/ as rvgen.recipes; its globs must catch every recipe and image."""
    import fnmatch
    import re

    text = (ROOT / "setup.py").read_text()
    globs = re.search(r'"rvgen\.recipes": \[([^\]]*)\]', text.split("package_data", 1)[1]).group(1)
    patterns = [g.strip().strip('"') for g in globs.split(",") if g.strip()]
    for path in RECIPES.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(RECIPES).as_posix()
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel


@pytest.mark.slow  # pip builds the wheel, then one fresh interpreter lists the recipes (no torch import)
def test_a_non_editable_install_ships_the_recipes_and_finds_them_by_name(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    # Build from a copy so setuptools' build/ and egg-info never land in the repository.
    source = tmp_path / "src"
    for name in ("rvgen", "recipes"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    installed = site / "rvgen" / "recipes"
    assert {p.name for p in installed.glob("*.toml")} == {p.name for p in RECIPES.glob("*.toml")}
    assert {p.name for p in (installed / "styles").iterdir()} == {p.name for p in (RECIPES / "styles").iterdir()}

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    code = ("import rvgen.shipped as s; from rvgen.recipe import read_recipe_data; "
            "print(s.recipes_dir()); print(s.resolve('monet'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(installed), str(installed / "monet.toml")]
