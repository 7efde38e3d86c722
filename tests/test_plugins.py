"""Plugin registration and discovery: built-ins, the public API, entry points, clashes."""

import inspect
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rvgen import hookimpl, hookspecs
from rvgen.cli import cli
from rvgen.errors import PluginError, RecipeError
from rvgen.losses import Loss
from rvgen.params import Param
from rvgen.plugins import BUILTIN_SOURCE, ENV_VAR, discover, registry_with
from rvgen.recipe import parse_recipe

ROOT = Path(__file__).resolve().parent.parent


class L1Loss(Loss):
    name = "l1"
    description = "mean squared difference of channel means"
    params = (Param("scale", float, 1.0, "multiplier"),)

    def forward(self, features, target):
        return self.options["scale"] * (features.mean((2, 3)) - target.mean((2, 3))).pow(2).mean(1)


class L1Plugin:
    @hookimpl
    def register_losses(self, register):
        register(L1Loss)


def test_builtins_register_through_the_public_hooks():
    registry = registry_with()
    assert registry.names("task") == ["reconstruct", "style", "texture"]
    assert registry.names("loss") == ["content", "gram", "tv"]
    assert {"random-vgg19", "random-vgg16"} <= set(registry.names("backbone"))
    assert all(e.source == BUILTIN_SOURCE for kind in registry.entries.values() for e in kind.values())


def test_a_plugin_registered_through_the_api_is_usable_in_recipes():
    registry = registry_with([L1Plugin()])
    entry = registry.get("loss", "l1", "x")
    assert entry.cls is L1Loss and entry.source != BUILTIN_SOURCE
    recipe = parse_recipe(
        {"task": {"name": "texture", "loss": "l1"}, "losses": {"l1": {"scale": 2.0}}}, registry=registry
    )
    assert recipe.losses == {"l1": {"scale": 2.0}}
    with pytest.raises(RecipeError, match=r"losses\.l1\.scal: unknown key.*'scale'"):
        parse_recipe({"task": {"name": "texture"}, "losses": {"l1": {"scal": 2.0}}}, registry=registry)
    # without the plugin, the name is unknown
    with pytest.raises(RecipeError, match="unknown loss 'l1'"):
        parse_recipe({"task": {"name": "texture", "loss": "l1"}})


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    class Clash:
        @hookimpl
        def register_losses(self, register):
            register(type("Gram2", (L1Loss,), {"name": "gram"}))

    with pytest.raises(PluginError) as info:
        registry_with([Clash()])
    message = str(info.value)
    assert "'gram'" in message and BUILTIN_SOURCE in message and "Clash" in message


def test_registering_something_that_is_not_a_plugin_class_is_an_error():
    class Bad:
        @hookimpl
        def register_losses(self, register):
            register(lambda x: x)

    with pytest.raises(PluginError, match=r"not a subclass of rvgen\.losses\.Loss"):
        registry_with([Bad()])

    class Nameless:
        @hookimpl
        def register_losses(self, register):
            register(type("NoName", (Loss,), {}))

    with pytest.raises(PluginError, match="has no name"):
        registry_with([Nameless()])


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution 'rvgen-l1' with an entry point in group rvgen, as pip would lay it out."""
    site = tmp_path / "site"
    (site / "rvgen_l1_plugin.py").parent.mkdir(parents=True)
    (site / "rvgen_l1_plugin.py").write_text(textwrap.dedent("""
        from rvgen import hookimpl
        from rvgen.losses import Loss

        class Abs(Loss):
            name = "abs-diff"

            def forward(self, features, target):
                return (features - target).abs().flatten(1).mean(1)

        @hookimpl
        def register_losses(register):
            register(Abs)
    """))
    (site / "rvgen_broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    for dist, module in (("rvgen_l1", "rvgen_l1_plugin"), ("rvgen_broken", "rvgen_broken_plugin")):
        info = site / f"{dist}-1.2.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 1.2\n")
        (info / "entry_points.txt").write_text(f"[rvgen]\n{dist.split('_')[1]} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in ("rvgen_l1_plugin", "rvgen_broken_plugin"):
        sys.modules.pop(module, None)


def test_entry_points_load_unless_the_environment_says_otherwise(installed_plugin, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    registry = discover().registry()
    entry = registry.get("loss", "abs-diff", "x")
    assert entry.source == "rvgen-l1 1.2" and entry.package == ("rvgen-l1", "1.2")
    assert [b.line for b in registry.broken] == [
        "plugin 'broken' (rvgen-broken 1.2) is left out: importing rvgen_broken_plugin raised ImportError: needs a "
        "library that is not installed; fix it, or uninstall rvgen-broken"]

    monkeypatch.setenv(ENV_VAR, "")
    registry = discover().registry()
    assert "abs-diff" not in registry.names("loss") and registry.warnings == [] and registry.broken == []

    monkeypatch.setenv(ENV_VAR, "rvgen-l1, nonexistent")  # by distribution name
    registry = discover().registry()
    assert "abs-diff" in registry.names("loss") and registry.broken == []
    assert registry.warnings == [f"{ENV_VAR} names 'nonexistent', which is not installed"]

    monkeypatch.setenv(ENV_VAR, "RVGEN_L1")  # names compare as pip compares them
    registry = discover().registry()
    assert "abs-diff" in registry.names("loss") and registry.warnings == []

    monkeypatch.setenv(ENV_VAR, "l1")  # by entry-point name
    assert "abs-diff" in discover().registry().names("loss")


def test_every_hook_is_implemented_by_a_builtin_and_documented():
    hooks = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]
    assert hooks == ["register_backbones", "register_losses", "register_tasks"]
    pm = discover(entry_points=False).pm
    guide = (ROOT / "docs" / "plugins.md").read_text()
    for hook in hooks:
        assert getattr(pm.hook, hook).get_hookimpls(), f"no built-in implements {hook}"
        assert hook in guide, f"{hook} is not documented in docs/plugins.md"


def test_rvgen_plugins_lists_every_builtin_with_its_options():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    for name in ("reconstruct", "texture", "style", "random-vgg19", "random-vgg16", "content", "gram", "tv"):
        assert name in result.output
    for option in ("style_weight", "weighting", "variations", "pooling", "init"):
        assert option in result.output
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    vgg = next(e for e in data["backbone"] if e["name"] == "random-vgg19")
    assert {p["name"] for p in vgg["params"]} == {"seed", "init", "std", "pooling", "padding", "normalize",
                                                 "stacked_candidates", "stacked_reference", "stacked_iterations",
                                                 "stacked_size", "stacked_criterion"}
    assert next(p for p in vgg["params"] if p["name"] == "pooling")["choices"] == ["avg", "max"]


def test_plugin_losses_run_in_the_engine():

    registry = registry_with([L1Plugin()])
    recipe = parse_recipe(
        {"task": {"name": "texture", "loss": "l1", "layers": ["relu1_1"]}, "optimizer": {"iterations": 5},
         "output": {"size": 16}}, registry=registry,
    )
    synth = recipe.build("cpu", registry)
    synth.set_references({})
    result = synth.run(torch.rand(1, 3, 16, 16))
    assert result.loss < result.initial_loss
