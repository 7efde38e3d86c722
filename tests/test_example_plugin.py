"""The example plugin in plugins/rvgen-histogram: its loss, and installing and running it like a user.

The unit tests import the plugin module from its folder and register it with
``registry_with``; the integration test pip-installs the folder (offline) into a temporary
target and drives ``python -m rvgen`` in a subprocess with its own environment, since the
test process itself loads no external plugins (see conftest.py).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvgen.errors import RecipeError
from rvgen.recipe import parse_recipe

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "rvgen-histogram"
DIST_NAME = "rvgen-histogram"


@pytest.fixture(scope="module")
def plugin():
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        yield importlib.import_module("rvgen_histogram")
    finally:
        sys.path.remove(str(PLUGIN_DIR))


@pytest.fixture(scope="module")
def registry(plugin):
    from rvgen.plugins import registry_with

    return registry_with([plugin])


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def shuffle_positions(x: torch.Tensor, seed: int) -> torch.Tensor:
    b, c, h, w = x.shape
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    return x.reshape(b, c, h * w)[..., perm].reshape(b, c, h, w)


# --- unit tests: the loss, registered the way rvgen registers it ---------------------------------


def test_registry_with_the_module_has_the_histogram_loss(registry):
    entry = registry.get("loss", "histogram", "terms[0].loss")
    assert entry.source == "rvgen_histogram"
    assert entry.cls.__name__ == "HistogramLoss" and entry.cls.needs_target
    assert [p.name for p in entry.params] == ["projections"]
    assert {"content", "gram", "tv", "histogram"} <= set(registry.names("loss"))


@pytest.mark.parametrize("projections", [0, 6])
def test_same_values_anywhere_score_zero_and_other_colours_do_not(plugin, projections):
    loss = plugin.HistogramLoss(projections=projections)
    x = rand(2, 3, 12, 12, seed=0)
    target = loss.prepare(x)
    assert loss(x, target).shape == (2,)
    assert loss(x, target).max() < 1e-12
    assert loss(shuffle_positions(x, seed=1), target).max() < 1e-12  # histograms ignore position
    shifted = x.clone()
    shifted[:, 0] += 0.2  # more red
    assert loss(shifted, target).min() > 1e-3


def test_scale_free_and_works_on_many_channel_features(plugin):
    loss = plugin.HistogramLoss()
    a, b = rand(1, 64, 8, 8, seed=2), rand(1, 64, 8, 8, seed=3) ** 2
    value = loss(a, loss.prepare(b))
    assert value > 1e-3
    assert torch.allclose(loss(1e-4 * a, loss.prepare(1e-4 * b)), value, rtol=1e-4)


def test_target_is_resampled_to_the_current_size(plugin):
    # A uniform ramp has evenly spaced quantiles at every size: a larger target resampled to
    # the current number of positions matches exactly, wherever the values sit.
    loss = plugin.HistogramLoss()
    big = ((torch.arange(32 * 32) + 0.5) / (32 * 32)).reshape(1, 1, 32, 32).expand(1, 3, 32, 32)
    small = shuffle_positions(((torch.arange(16 * 16) + 0.5) / (16 * 16)).reshape(1, 1, 16, 16).expand(1, 3, 16, 16),
                              seed=4)
    assert loss(small, loss.prepare(big)) < 1e-10
    assert loss(big, loss.prepare(small)) < 1e-6  # the other way the extremes are clamped
    assert loss(small * 0.5, loss.prepare(big)) > 1e-2


def test_projections_see_colour_combinations_that_channel_histograms_miss(plugin):
    # Red equals green in the target; shuffling green alone keeps every channel's histogram
    # but not the colours, which only the projected histograms notice.
    u = rand(1, 1, 16, 16, seed=5)
    target_img = torch.cat([u, u, rand(1, 1, 16, 16, seed=6)], dim=1)
    mixed = torch.cat([u, shuffle_positions(u, seed=7), target_img[:, 2:]], dim=1)
    per_channel, sliced = plugin.HistogramLoss(), plugin.HistogramLoss(projections=8)
    assert per_channel(mixed, per_channel.prepare(target_img)) < 1e-12
    assert sliced(mixed, sliced.prepare(target_img)) > 1e-3


def test_adam_on_pixels_matches_a_colour_histogram(plugin):
    loss = plugin.HistogramLoss()
    g = torch.Generator().manual_seed(1)
    style = torch.stack([torch.rand(20, 20, generator=g) ** 3, 0.2 + 0.6 * torch.rand(20, 20, generator=g),
                         1 - torch.rand(20, 20, generator=g) ** 2]).unsqueeze(0)
    target = loss.prepare(style)
    x = rand(1, 3, 16, 16, seed=2).requires_grad_(True)
    before = float(loss(x.detach(), target))
    opt = torch.optim.Adam([x], lr=0.02)
    for _ in range(100):
        opt.zero_grad()
        loss(x, target).sum().backward()
        opt.step()
    after = float(loss(x.detach(), target))
    assert before / after > 1e3  # measured: 0.111 -> 6.9e-7, a factor of 1.6e5


def test_lbfgs_on_a_feature_layer_matches_activation_histograms(plugin, registry):
    backbone_cls = registry.get("backbone", "random-vgg19", "backbone.name").cls
    net = backbone_cls({p.name: p.default for p in backbone_cls.params}, ["relu1_1"]).eval().requires_grad_(False)
    loss = plugin.HistogramLoss()
    target = loss.prepare(net(rand(1, 3, 24, 24, seed=3) ** 2, ["relu1_1"])["relu1_1"])
    x = rand(1, 3, 16, 16, seed=4).requires_grad_(True)

    def value() -> torch.Tensor:
        return loss(net(x, ["relu1_1"])["relu1_1"], target).sum()

    with torch.no_grad():
        before = float(value())
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=50, tolerance_grad=0.0, tolerance_change=0.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        v = value()
        v.backward()
        return v

    for _ in range(30):
        opt.step(closure)
    with torch.no_grad():
        after = float(value())
    assert before / after > 50  # measured: 0.293 -> 7.5e-4, a factor of 390


def test_recipes_validate_the_plugins_options(registry, tmp_path):
    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "style.png")
    data = {
        "task": {"name": "style", "style": "style.png"},
        "losses": {"histogram": {"projections": 4}},
        "terms": [{"name": "colour", "loss": "histogram", "layers": ["pixels"], "target": "style"}],
    }
    recipe = parse_recipe(data, base_dir=tmp_path, registry=registry)
    assert recipe.losses["histogram"] == {"projections": 4}
    assert [t.name for t in recipe.terms] == ["colour"]
    data["losses"] = {"histogram": {"projections": -1}}
    with pytest.raises(RecipeError, match=r"losses\.histogram\.projections: must be at least 0"):
        parse_recipe(data, base_dir=tmp_path, registry=registry)
    data["losses"] = {"histogram": {"bins": 64}}
    with pytest.raises(RecipeError, match=r"losses\.histogram\.bins: unknown key; allowed: projections"):
        parse_recipe(data, base_dir=tmp_path, registry=registry)


# --- integration: pip install the folder, then the command line ----------------------------------

RECIPE = """\
description = "style transfer with an extra colour-histogram term from the rvgen-histogram plugin"

[task]
name = "style"
style = "style.png"
style_layers = ["relu1_1", "relu2_1"]
content_layers = ["relu2_1"]

[[terms]]
name = "colour"
loss = "histogram"
layers = ["pixels"]
target = "style"
weight = 1.0

[optimizer]
iterations = 10

[output]
size = 48
"""


def write_png(path: Path, size: tuple[int, int], seed: int, tint: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    xs = np.arange(w)[None, :, None]
    base = 0.5 + 0.25 * np.sin(xs / 5.0 + seed) + 0.25 * rng.random((h, w, 3))
    img = np.clip(base * np.array(tint), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """``python -m rvgen ARGS`` in the background: the three commands below run side by side,
    since each spends most of its few seconds importing torch."""
    return subprocess.Popen([sys.executable, "-m", "rvgen", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)  # the caller kills what is left if this raises
    return proc.returncode, out, err


@pytest.mark.slow  # 25-31 s measured on 2 busy shared cores: pip plus three fresh interpreters importing torch
def test_pip_installed_plugin_runs_from_the_command_line(tmp_path):
    # Build from a copy so setuptools' build/ and egg-info never land in the repository.
    source = tmp_path / "src"
    shutil.copytree(PLUGIN_DIR, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    assert (site / "rvgen_histogram.py").is_file()

    write_png(tmp_path / "photos" / "photo.png", (48, 36), seed=0, tint=(1.0, 0.9, 0.7))
    write_png(tmp_path / "style.png", (40, 24), seed=1, tint=(0.3, 0.5, 1.0))
    recipe = tmp_path / "colour.toml"
    recipe.write_text(RECIPE)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RVGEN_LOAD_PLUGINS")}
    env.update(PYTHONPATH=str(site), RVGEN_LOAD_PLUGINS=DIST_NAME, COLUMNS="200", PYTHONWARNINGS="ignore")

    out, refused_out = tmp_path / "out", tmp_path / "out-refused"
    run_args = ["run", str(recipe), "--input", str(tmp_path / "photos"), "--device", "cpu", "-q"]
    listing = start(["plugins", "--json"], env, tmp_path)
    running = start([*run_args, "--output", str(out)], env, tmp_path)
    # Installed but not loaded: RVGEN_LOAD_PLUGINS="" loads no plugins, so the recipe names an unknown loss.
    refusing = start([*run_args, "--output", str(refused_out)], {**env, "RVGEN_LOAD_PLUGINS": ""}, tmp_path)
    try:
        code, stdout, stderr = finish(listing)
        assert code == 0, stderr
        assert "Warning" not in stderr
        losses = {e["name"]: e for e in json.loads(stdout)["loss"]}
        assert losses["histogram"]["source"] == f"{DIST_NAME} 0.1.0"
        assert [p["name"] for p in losses["histogram"]["params"]] == ["projections"]
        assert losses["gram"]["source"] == "rvgen (built-in)"

        code, stdout, stderr = finish(running)
        assert code == 0, stdout + stderr
        assert (out / "photo.png").is_file()
        with Image.open(out / "photo.png") as result:
            assert result.size == (48, 36)
        sidecar = json.loads((out / "photo.png.json").read_text())
        assert set(sidecar["loss"]["terms"]) == {"content", "style", "colour"}
        assert sidecar["loss"]["terms"]["colour"] >= 0
        assert sidecar["recipe"]["resolved"]["terms"][0]["loss"] == "histogram"

        code, stdout, stderr = finish(refusing)
        assert code == 2, stdout + stderr
        errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "histogram" in errors[0], stderr
        assert "terms[0].loss: unknown loss 'histogram'" in errors[0]
        assert not (refused_out / "photo.png").exists()
    finally:
        for proc in (listing, running, refusing):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
