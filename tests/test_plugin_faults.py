"""Every fault a plugin can cause is one line naming its distribution and what to change,
found when the registry is built or the recipe is checked; a plugin at fault is left out
and the others go on. Also: what a result records of the plugins it was made with, targets
a task derives from the input, and ``rvgen compare --layers`` for a plugin task."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import rvgen.plugins
from conftest import TINY_RECONSTRUCT, psnr, sample, write_recipe, write_sample
from rvgen import hookimpl
from rvgen.backbones import Backbone
from rvgen.batch.runner import prepare
from rvgen.cli import cli
from rvgen.compare.execute import run_comparison
from rvgen.compare.plan import plan_columns
from rvgen.engine import Term
from rvgen.errors import PluginError
from rvgen.losses import Loss
from rvgen.params import Param
from rvgen.pipeline import Pipeline, preflight
from rvgen.plugins import ENV_VAR, discover, registry_with
from rvgen.recipe import parse_recipe
from rvgen.tasks import Metric, Task

# -- plugins installed as pip would lay them out: a module and a dist-info with an entry point ---

GOOD = """
from rvgen import hookimpl
from rvgen.losses import Loss

class Abs(Loss):
    name = "abs-diff"
    batched = True

    def forward(self, features, target):
        return (features - target).abs().flatten(1).mean(1)

@hookimpl
def register_losses(register):
    register(Abs)
"""
WRONG_PARAMETER = """
from rvgen import hookimpl
from rvgen.losses import Loss

class Sq(Loss):
    name = "sq-diff"

    def forward(self, features, target):
        return (features - target).pow(2).flatten(1).mean(1)

@hookimpl
def register_losses(reg):
    reg(Sq)
"""
MISSPELT = WRONG_PARAMETER.replace("sq-diff", "misspelt-diff").replace(
    "def register_losses(reg):\n    reg(Sq)", "def register_loss(register):\n    register(Sq)")
NO_TERMS = """
from rvgen import hookimpl
from rvgen.tasks import Task

class Lazy(Task):
    name = "lazy"

@hookimpl
def register_tasks(register):
    register(Lazy)
"""
PLUGINS = {"good": GOOD, "wrongparam": WRONG_PARAMETER, "misspelt": MISSPELT, "noterms": NO_TERMS}


def install(site: Path, name: str, source: str, version: str = "1.0") -> None:
    """Distribution rvgen-NAME at ``version``, module rvgen_NAME_plugin, entry point NAME."""
    module = f"rvgen_{name}_plugin"
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    for old in site.glob(f"rvgen_{name}-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"rvgen_{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: rvgen-{name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[rvgen]\n{name} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path to install plugins in; the process's registry is rebuilt from it."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(rvgen.plugins, "_cache", None)
    monkeypatch.delenv("COLUMNS", raising=False)
    yield site
    for name in [m for m in sys.modules if m.startswith("rvgen_") and m.endswith("_plugin")]:
        del sys.modules[name]


def use(monkeypatch, *names: str) -> None:
    monkeypatch.setenv(ENV_VAR, ",".join(f"rvgen-{n}" for n in names))
    monkeypatch.setattr(rvgen.plugins, "_cache", None)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Warning:")]


# -- item 1 and 2: one rule for every plugin fault ----------------------------------------------


def test_faulty_plugins_are_left_out_with_one_line_each_and_the_others_load(site, monkeypatch):
    for name, source in PLUGINS.items():
        install(site, name, source)
    use(monkeypatch, *PLUGINS)
    registry = discover().registry()
    assert "abs-diff" in registry.names("loss")
    lines = {b.plugin: b.line for b in registry.broken}
    assert lines == {
        "wrongparam": "plugin 'wrongparam' (rvgen-wrongparam 1.0) is left out: its hook register_losses(reg) must "
                      "take one parameter named 'register': def register_losses(register)",
        "misspelt": "plugin 'misspelt' (rvgen-misspelt 1.0) is left out: register_loss is not an rvgen hook (did you "
                    "mean 'register_losses'?); the hooks are register_backbones, register_losses, register_tasks",
        "noterms": "plugin 'noterms' (rvgen-noterms 1.0) is left out: task 'lazy' (Lazy) does not define terms(self) "
                   "returning a list of rvgen.engine.Term",
    }
    # what each would have registered is known, so a recipe that needs it is told why it is missing
    assert {b.plugin: sorted(b.names) for b in registry.broken} == {
        "wrongparam": [("loss", "sq-diff")], "misspelt": [("loss", "misspelt-diff")], "noterms": [("task", "lazy")]}
    with pytest.raises(PluginError) as info:
        parse_recipe({"task": {"name": "lazy"}}, registry=registry)
    assert str(info.value) == f"task.name: the task 'lazy' is not available: {lines['noterms']}"


def test_a_raising_hook_and_a_clash_leave_only_that_plugin_out():
    class Raising:
        @hookimpl
        def register_losses(self, register):
            register(Scalar)
            raise RuntimeError("config file\nnot found")

    class Clash:
        @hookimpl
        def register_losses(self, register):
            register(type("Gram2", (Scalar,), {"name": "gram"}))
            register(type("Other", (Scalar,), {"name": "other"}))

    registry = registry_with([Raising(), Clash()], strict=False)
    problems = {b.plugin.rsplit(".", 1)[1]: b.problem for b in registry.broken}
    assert problems["Raising"] == "its hook register_losses raised RuntimeError: config file not found"
    assert problems["Clash"].startswith("two plugins register the loss 'gram': rvgen (built-in) and ")
    assert problems["Clash"].endswith("Clash; give one of them another name")
    assert "other" not in registry.names("loss") and "scalar" not in registry.names("loss")  # whole, never half
    assert registry.get("loss", "gram", "x").source == "rvgen (built-in)"
    with pytest.raises(PluginError, match=r"^terms\[0\]\.loss: the loss 'other' is not available: plugin .*Clash"):
        registry.get("loss", "other", "terms[0].loss")


def test_the_command_line_warns_for_recipes_that_do_not_use_them_and_stops_those_that_do(site, monkeypatch,
                                                                                         tmp_path):
    for name, source in PLUGINS.items():
        install(site, name, source)
    use(monkeypatch, *PLUGINS)
    image = write_sample(tmp_path / "in" / "cat.png", "chelsea", 32)
    plain = write_recipe(tmp_path / "plain.toml", TINY_RECONSTRUCT)
    result = invoke("run", plain, "--input", image.parent, "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert [w.split(" is left out")[0] for w in warnings(result)] == [  # by distribution name
        "Warning: plugin 'misspelt' (rvgen-misspelt 1.0)", "Warning: plugin 'noterms' (rvgen-noterms 1.0)",
        "Warning: plugin 'wrongparam' (rvgen-wrongparam 1.0)"]

    uses = write_recipe(tmp_path / "uses.toml", TINY_RECONSTRUCT + '[[terms]]\nloss = "sq-diff"\nlayers = ["pixels"]\n')
    monkeypatch.setattr(rvgen.plugins, "_cache", None)
    result = invoke("run", uses, "--input", image.parent, "--output", tmp_path / "out2")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: terms[0].loss: the loss 'sq-diff' is not available: plugin 'wrongparam' "
                      "(rvgen-wrongparam 1.0) is left out: its hook register_losses(reg) must take one parameter "
                      "named 'register': def register_losses(register)"]
    assert len(warnings(result)) == 2 and not any("wrongparam" in w for w in warnings(result))  # said once, as the error
    assert not (tmp_path / "out2").exists()


def test_a_plugin_that_does_not_import_stops_a_recipe_naming_what_it_may_provide(site, monkeypatch, tmp_path):
    install(site, "good", GOOD)
    install(site, "gone", "import a_library_that_is_not_installed\n")
    use(monkeypatch, "good", "gone")
    recipe = write_recipe(tmp_path / "r.toml", TINY_RECONSTRUCT + '[[terms]]\nloss = "gone-loss"\nlayers = ["pixels"]\n')
    result = invoke("run", recipe, "--output", tmp_path / "out")
    assert result.exit_code == 2
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: terms[0].loss: unknown loss 'gone-loss'")
    assert error.endswith("; plugin 'gone' (rvgen-gone 1.0) is left out: importing rvgen_gone_plugin raised "
                          "ModuleNotFoundError: No module named 'a_library_that_is_not_installed'; fix it, or "
                          "uninstall rvgen-gone")


def test_a_plugin_that_exits_while_imported_is_left_out_too(site, monkeypatch):
    install(site, "quits", "import sys\nsys.exit(3)\n")
    use(monkeypatch, "quits")
    (broken,) = discover().registry().broken
    assert broken.line == ("plugin 'quits' (rvgen-quits 1.0) is left out: importing rvgen_quits_plugin raised "
                           "SystemExit: 3; fix it, or uninstall rvgen-quits")


def test_rvgen_plugins_lists_the_plugins_left_out_with_their_problem(site, monkeypatch):
    for name, source in PLUGINS.items():
        install(site, name, source)
    use(monkeypatch, *PLUGINS)
    result = invoke("plugins")
    assert result.exit_code == 0 and warnings(result) == []
    listing = result.stdout
    assert "abs-diff  (rvgen-good 1.0)" in listing
    left_out = listing[listing.index("Left out"):]
    assert "\nwrongparam  (rvgen-wrongparam 1.0)\n  its hook register_losses(reg) must take one parameter" in left_out
    assert "\nmisspelt  (rvgen-misspelt 1.0)\n  register_loss is not an rvgen hook" in left_out
    monkeypatch.setattr(rvgen.plugins, "_cache", None)
    data = json.loads(invoke("plugins", "--json").stdout)
    assert [(b["plugin"], b["source"]) for b in data["left_out"]] == [
        ("misspelt", "rvgen-misspelt 1.0"), ("noterms", "rvgen-noterms 1.0"), ("wrongparam", "rvgen-wrongparam 1.0")]


def test_rvgen_plugins_piped_prints_whole_lines(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    result = invoke("plugins")  # CliRunner's output is no terminal
    assert result.exit_code == 0
    (line,) = [line for line in result.stdout.splitlines() if line.split()[:1] == ["style_weight"]]
    assert line.endswith("weight of the style term (20: the painting's strokes and colours across the picture; 5 "
                         "left the photo with a fine texture over it)")
    assert not any(line != line.rstrip() for line in result.stdout.splitlines())


# -- item 3: faults in what a plugin's classes do, found before any work ------------------------


class Scalar(Loss):
    name = "scalar"

    def forward(self, features, target):
        return (features - target).pow(2).mean()  # over the batch too: one number


class Detached(Loss):
    name = "detached"

    def forward(self, features, target):
        return torch.tensor([float((features - target).pow(2).mean().detach())])


class BadTiles(Loss):
    name = "bad-tiles"
    tiled = True

    def forward(self, features, target):
        return (features - target).pow(2).flatten(1).mean(1)

    def statistic(self, features, target, window):
        f = features[..., window.rows, window.cols]
        return (f - target).pow(2).flatten(1).sum(1)  # the tile's sum, not its share of the mean

    def finish(self, statistic, target):
        return statistic


class Stile(Task):
    name = "stile"
    params = (Param("style", str, "skimage:brick", "a style image", kind="path"),)

    def references(self):
        return {"style": (self.options["style"], None)}

    def terms(self):
        return [Term("style", "gram", ("relu1_1",), target="stile")]


class Raises(Task):
    name = "raises"

    def terms(self):
        return [Term("content", "content", (self.options["layer"],))]  # no such option


class Losses:
    @hookimpl
    def register_losses(self, register):
        for cls in (Scalar, Detached, BadTiles):
            register(cls)

    @hookimpl
    def register_tasks(self, register):
        register(Stile)
        register(Raises)


def test_a_task_without_terms_is_refused_when_the_registry_is_built():
    class Lazy:
        @hookimpl
        def register_tasks(self, register):
            register(type("Lazy", (Task,), {"name": "lazy"}))

    with pytest.raises(PluginError, match=r"task 'lazy' \(Lazy\) does not define terms\(self\) returning a list"):
        registry_with([Lazy()])
    registry = registry_with([Lazy()], strict=False)
    assert "lazy" not in registry.names("task") and "does not define terms" in registry.broken[0].problem


def test_a_term_naming_no_reference_and_a_raising_task_fail_at_the_recipe_check():
    registry = registry_with([Losses()])
    source = registry.get("task", "stile", "x").source
    with pytest.raises(PluginError) as info:
        parse_recipe({"task": {"name": "stile"}}, registry=registry)
    assert str(info.value) == (f"task 'stile' ({source}) is at fault: its term 'style' compares with 'stile', which is "
                               "not one of its targets (did you mean 'style'?) (input, style); fix Term(target=...) or "
                               "declare it in references() or derived_references()")
    with pytest.raises(PluginError, match=rf"task 'raises' \({source}\) failed: its terms\(\) raised KeyError: "
                                          "'layer'; fix the plugin"):
        parse_recipe({"task": {"name": "raises"}}, registry=registry)


@pytest.mark.parametrize("loss, message", [
    ("scalar", r"forward\(\) returned shape \(\) at layer pixels, for 1 image; return one loss per image, shape \(B,\)"),
    ("detached", r"forward\(\)'s value at layer pixels, for 1 image does not depend on the features through autograd"),
    ("bad-tiles", r"it declares tiled = True, but finish\(statistic\(features, target, whole image\)\) = \[\d+\.\d+\] "
                  r"where forward\(features, target\) = \[0\.\d+\] at layer pixels"),
])
def test_a_loss_that_breaks_its_contract_fails_at_preflight(loss, message):
    registry = registry_with([Losses()])
    recipe = parse_recipe({**_toml(TINY_RECONSTRUCT), "terms": [{"loss": loss, "layers": ["pixels"]}]},
                          registry=registry)
    with pytest.raises(PluginError, match=rf"^loss '{loss}' \(.*Losses\) is at fault: {message}"):
        preflight(recipe, registry)


def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


# -- item 4: results record the plugins they were made with -------------------------------------


def test_results_record_plugin_versions_and_a_new_version_redoes_them(site, monkeypatch, tmp_path):
    install(site, "good", GOOD, "1.0")
    use(monkeypatch, "good")
    image = write_sample(tmp_path / "in" / "cat.png", "chelsea", 32)
    recipe = write_recipe(tmp_path / "r.toml", TINY_RECONSTRUCT + '[[terms]]\nloss = "abs-diff"\nlayers = ["pixels"]\n')
    out = tmp_path / "out"
    args = ("run", recipe, "--input", image.parent, "--output", out, "-q")
    assert invoke(*args).exit_code == 0
    assert json.loads((out / "cat.png.json").read_text())["plugins"] == {"rvgen-good": "1.0"}
    info = json.loads(invoke("info", out / "cat.png", "--json").stdout)  # the image carries it too
    assert info["plugins"] == {"rvgen-good": "1.0"}
    assert "plugins:    rvgen-good 1.0" in invoke("info", out / "cat.png").stdout

    monkeypatch.setattr(rvgen.plugins, "_cache", None)
    result = invoke(*args)
    assert "0 done, 0 failed, 1 already done" in result.output, result.output  # same version: finished
    install(site, "good", GOOD, "1.1")
    monkeypatch.setattr(rvgen.plugins, "_cache", None)
    result = invoke(*args)
    assert "1 done" in result.output, result.output  # another version may compute another loss: redone
    assert json.loads((out / "cat.png.json").read_text())["plugins"] == {"rvgen-good": "1.1"}

    install(site, "good", GOOD, "1.2")  # another version installed: --from warns, and goes on
    monkeypatch.setattr(rvgen.plugins, "_cache", None)
    result = invoke("run", "--from", out / "cat.png", "--input", image.parent, "--output", tmp_path / "again",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"Warning: {out / 'cat.png'} was made with the plugin rvgen-good 1.1, installed here at 1.2 (pip install " \
           "'rvgen-good==1.1'); results may differ" in result.stderr

    use(monkeypatch)  # the plugin not installed (not loaded): --from names the package that made the image
    result = invoke("run", "--from", out / "cat.png", "--input", image.parent, "--output", tmp_path / "again")
    assert result.exit_code == 2
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: losses.abs-diff: unknown loss 'abs-diff'")
    assert error.endswith("; cat.png was made with the plugin rvgen-good 1.1, which is not installed here "
                          "(pip install 'rvgen-good==1.1')")


def test_built_in_recipes_record_no_plugins_and_keep_their_run_key():
    recipe = parse_recipe(_toml(TINY_RECONSTRUCT))
    assert recipe.plugins() == {} and prepare(recipe).plugins == {}


# -- item 5: a target derived from the input, with no file ---------------------------------------


class Grey(Task):
    """Reconstruct the input in grey: the target is derived from the input, no reference file."""

    name = "grey"
    params = (Param("seed", int, 0, "seed"),)

    def derived_references(self):
        return frozenset({"grey"})

    def prepare_reference(self, name, image, content):
        return image.mean(1, keepdim=True).expand_as(image)

    def terms(self):
        return [Term("grey", "content", ("pixels", "relu1_1"), target="grey")]  # relu1_1: builds one layer


class GreyPlugin:
    @hookimpl
    def register_tasks(self, register):
        register(Grey)


def test_a_task_derives_its_target_from_the_input_without_a_reference_file():
    registry = registry_with([GreyPlugin()])
    recipe = parse_recipe({"task": {"name": "grey"}, "optimizer": {"iterations": 10}, "output": {"size": 32}},
                          registry=registry)
    assert recipe.references(registry) == {} and prepare(recipe, registry).references == {}  # nothing to load or hash
    content = sample("chelsea", 32)
    (out,) = Pipeline(recipe, "cpu", registry).run([content])
    grey = content.mean(1, keepdim=True).expand_as(content)
    assert psnr(out.tensor, grey) > 60  # measured: 86 dB (from noise at 11 dB)
    assert psnr(out.tensor, content) < 25  # not the coloured input: 19.6 dB
    # [[terms]] of a recipe may compare with it too
    extra = parse_recipe({"task": {"name": "grey"}, "terms": [{"loss": "gram", "layers": ["relu1_1"],
                                                              "target": "grey"}]}, registry=registry)
    assert extra.terms[0].target == "grey"


# -- item 6: a plugin task opts in to rvgen compare --layers ------------------------------------


class Sweep(Task):
    name = "sweep"
    params = (Param("layers", list, None, "layers", kind="layers", nullable=True),)
    layer_option = "layers"

    def terms(self):
        return [Term("content", "content", tuple(self.layers_option("layers", "reconstruct")))]


class SweepPlugin:
    @hookimpl
    def register_tasks(self, register):
        register(Sweep)


def test_a_plugin_task_declares_the_option_compare_layers_sweeps(tmp_path):
    registry = registry_with([SweepPlugin()])
    columns, recipes = plan_columns({"task": {"name": "sweep"}}, ["random-vgg19", "random-resnet18"],
                                    ["relu1_1", "relu3_1"], [], registry, tmp_path)
    assert [c.label for c in columns] == ["random-vgg19 relu1_1", "random-vgg19 relu3_1",
                                          "random-resnet18 relu1_1=stem", "random-resnet18 relu3_1=layer2.0"]
    assert [r.task["layers"] for r in recipes] == [["relu1_1"], ["relu3_1"], ["stem"], ["layer2.0"]]

    class NotALayer:
        @hookimpl
        def register_tasks(self, register):
            register(type("Odd", (Sweep,), {"name": "odd", "layer_option": "seed"}))

    with pytest.raises(PluginError, match=r"task 'odd' \(Odd\) declares layer_option = 'seed', which is not one of "
                                          r"its params of kind \"layer\" or \"layers\""):
        registry_with([NotALayer()])


class BadScore(Task):
    name = "bad-score"
    params = (Param("seed", int, 0, "seed"),)
    metrics = (Metric("mae", "mean abs err", False),)

    def terms(self):
        return [Term("content", "content", ("relu1_1",))]

    def score(self, result, content, references):
        return {"mea": float((result - content).abs().mean())}  # misspelt: no "mae"


class BadScorePlugin:
    @hookimpl
    def register_tasks(self, register):
        register(BadScore)


def test_a_plugin_tasks_wrong_scores_fail_its_results_in_one_line(tmp_path):
    registry = registry_with([BadScorePlugin()])
    data = {"task": {"name": "bad-score"}, "optimizer": {"iterations": 2}, "output": {"size": 32}}
    columns, recipes = plan_columns(data, [], [], [], registry, tmp_path)
    comparison = run_comparison(columns, recipes, [("skimage:coffee", "coffee")], tmp_path / "out", registry=registry)
    assert comparison.outcomes == []
    ((_, name, reason),) = comparison.failures
    assert name == "coffee" and reason.startswith("task 'bad-score' (test_plugin_faults.BadScorePlugin) is at fault: "
                                                  "score() must return a number for each of its metrics (mae), got "
                                                  "{'mea': 0.")


class WrongStart(Grey):
    name = "wrong-start"

    def init(self, content, shape, generator):
        return torch.rand(1, 3, 8, 8, generator=generator)  # not the canvas's size


class WrongDerived(Grey):
    name = "wrong-derived"

    def prepare_reference(self, name, image, content):
        return image.mean(1, keepdim=True)  # one channel: the loss would compare (B, 1, ...) features


class StartPlugin:
    @hookimpl
    def register_tasks(self, register):
        register(WrongStart)
        register(WrongDerived)


@pytest.mark.parametrize("task, message", [
    ("wrong-start", r"init\(\) returned shape \(1, 3, 8, 8\); it must return an image of shape \(1, 3, 32, 32\)"),
    ("wrong-derived", r"prepare_reference\('grey'\) of a derived reference returned shape \(1, 1, 32, 32\); it must "
                      r"return an image of shape \(1, 3, 32, 32\)"),
])
def test_a_plugin_task_returning_the_wrong_image_fails_at_preflight(task, message):
    registry = registry_with([StartPlugin()])
    recipe = parse_recipe({"task": {"name": task}}, registry=registry)
    with pytest.raises(PluginError, match=rf"^task '{task}' \(.*StartPlugin\) is at fault: {message}$"):
        preflight(recipe, registry)


class Forgetful(Backbone):
    name = "forgetful"
    default_layers = {"content": ["a"], "style": ["a", "b"], "reconstruct": ["b"]}

    @classmethod
    def layer_names(cls, options):
        return ["a", "b"]

    def __init__(self, options, layers):
        super().__init__(options, layers)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def features(self, x, layers):
        return {"a": self.conv(x)}  # never "b"


class OnValues(Forgetful):
    name = "on-values"

    def features(self, x, layers):
        h = self.conv(x)
        return {"a": h, "b": h * float(h.abs().max().item() > 0)}  # a decision on values: no meta device


class BackbonePlugin:
    @hookimpl
    def register_backbones(self, register):
        register(Forgetful)
        register(OnValues)


@pytest.mark.parametrize("backbone, message", [
    ("forgetful", r"features\(x, layers\) returned no \(B, C, H, W\) tensor for b of a 32 px image"),
    ("on-values", r"failed: its features\(\) on the meta device \(memory estimate; no \.item\(\) or decisions on "
                  r"values\) raised"),
])
def test_a_plugin_backbone_that_leaves_out_a_layer_or_needs_values_fails_at_preflight(backbone, message):
    registry = registry_with([BackbonePlugin()])
    recipe = parse_recipe({"task": {"name": "reconstruct", "layer": "b"}, "backbone": {"name": backbone}},
                          registry=registry)
    with pytest.raises(PluginError, match=rf"^backbone '{backbone}' \(.*BackbonePlugin\) (is at fault: )?{message}"):
        preflight(recipe, registry)


def test_a_plugin_loss_that_raises_when_built_is_one_line_naming_it():
    class Fragile(Scalar):
        name = "fragile"

        def __init__(self, **options):
            super().__init__(**options)
            raise OSError("lookup table missing")

    class FragilePlugin:
        @hookimpl
        def register_losses(self, register):
            register(Fragile)

    registry = registry_with([FragilePlugin()])
    recipe = parse_recipe({**_toml(TINY_RECONSTRUCT), "terms": [{"loss": "fragile", "layers": ["pixels"]}]},
                          registry=registry)
    with pytest.raises(PluginError, match=r"^loss 'fragile' \(.*FragilePlugin\) failed: its __init__\(\) raised "
                                          r"OSError: lookup table missing; fix the plugin$"):
        preflight(recipe, registry)
