"""The plugin author's guide (docs/plugin-guide.md) builds a package that works as written.

Its files are taken from the guide's own code blocks (a block whose first line is
``# file: PATH``), never from a copy: the quick tests register the module in this process
and load its recipe; the slow ones run the guide's unit-test snippet, and pip-install the
package (offline, into a temporary folder, so the virtualenv stays as it was) and run the
guide's ``rvgen run`` and ``rvgen compare`` commands in subprocesses.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import psnr, write_sample
from rvgen import imageio
from rvgen.plugins import registry_with
from rvgen.recipe import load_recipe

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugin-guide.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
FAST = ["--set", "optimizer.iterations=10", "--set", "output.size=48", "--device", "cpu"]


def guide_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(GUIDE.read_text())


def extract(root: Path) -> dict[str, Path]:
    """Write every ``# file: PATH`` block of the guide under ``root`` (blocks naming one file
    are joined in order); returns the paths by name."""
    parts: dict[str, list[str]] = {}
    for _, body in guide_blocks():
        first, _, rest = body.partition("\n")
        match = re.fullmatch(r"# file: (\S+)", first)
        if match:
            parts.setdefault(match.group(1), []).append(rest)
    paths = {}
    for name, texts in parts.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(texts))
        paths[name] = path
    return paths


def guide_command(verb: str) -> list[str]:
    """The guide's ``rvgen VERB mono.toml ...`` command line, as arguments after ``rvgen``."""
    (line,) = [line for lang, body in guide_blocks() if lang == "sh" for line in body.splitlines()
               if line.startswith(f"rvgen {verb} mono.toml")]
    return shlex.split(line)[1:]


@pytest.fixture
def mono(tmp_path, monkeypatch):
    paths = extract(tmp_path)
    monkeypatch.syspath_prepend(str(paths["rvgen-mono/rvgen_mono.py"].parent))
    module = importlib.import_module("rvgen_mono")
    yield module, paths
    sys.modules.pop("rvgen_mono", None)


def test_the_guide_has_the_whole_package():
    names = {match for _, body in guide_blocks() for match in re.findall(r"\A# file: (\S+)", body)}
    assert names == {"rvgen-mono/pyproject.toml", "rvgen-mono/rvgen_mono.py", "mono.toml"}


def test_the_guides_package_registers_without_a_fault_and_its_recipe_loads(mono):
    module, paths = mono
    registry = registry_with([module])  # strict: any fault the registry can see raises here
    assert {("backbone", "random-tiny"), ("loss", "charbonnier"), ("task", "mono")} <= {
        (kind, name) for kind, entries in registry.entries.items() for name in entries}
    recipe = load_recipe(paths["mono.toml"], [], registry)
    assert recipe.task["name"] == "mono" and recipe.backbone == {"name": "random-tiny", "seed": 0, "width": 32}
    assert recipe.references(registry) == {}  # the grey copy is derived from the input: no file
    assert recipe.plugins(registry) == {}  # registered through the API: no distribution to record


@pytest.mark.slow  # 4-14 s on 2 busy cores: preflight's tries of the three plugins, then a short run
def test_the_guides_unit_test_snippet_runs(mono):
    (snippet,) = [body for lang, body in guide_blocks() if lang == "python" and "import rvgen_mono" in body]
    assert "preflight(recipe, registry)" in snippet  # which tries the backbone, the loss and the task
    exec(compile(snippet, str(GUIDE), "exec"), {})  # the guide's own unit test: its asserts hold


def grey(image: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True).expand_as(image)


@pytest.mark.slow  # 50-60 s measured on 2 busy cores: pip, then three fresh interpreters importing torch
def test_the_guides_package_installs_and_runs_from_the_command_line(tmp_path):
    paths = extract(tmp_path)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(tmp_path / "rvgen-mono")],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    write_sample(tmp_path / "photos" / "cat.png", "chelsea", 48)
    write_sample(tmp_path / "photos" / "coffee.png", "coffee", 48)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RVGEN_LOAD_PLUGINS")}
    env.update(PYTHONPATH=str(site), RVGEN_LOAD_PLUGINS="rvgen-mono", PYTHONWARNINGS="ignore")

    def start(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "rvgen", *args], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    procs = [start(["plugins", "--json"]), start([*guide_command("run"), *FAST, "-q"]),
             start([*guide_command("compare"), *FAST, "-q"])]
    try:
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    (code, listing, err), (run_code, run_out, run_err), (cmp_code, cmp_out, cmp_err) = results
    assert code == 0 and "Warning" not in err, err
    data = json.loads(listing)
    assert data["left_out"] == []
    for kind, name in (("task", "mono"), ("backbone", "random-tiny"), ("loss", "charbonnier")):
        assert next(e for e in data[kind] if e["name"] == name)["source"] == "rvgen-mono 0.1.0"

    assert run_code == 0, run_out + run_err
    out = tmp_path / "out"
    for name in ("cat", "coffee"):
        side = json.loads((out / f"{name}.png.json").read_text())
        assert side["plugins"] == {"rvgen-mono": "0.1.0"} and side["references"] == {}
        assert side["loss"]["final"] < side["loss"]["initial"] / 3  # measured: 0.885 -> 0.229, 0.845 -> 0.151
        result = imageio.load_image(str(out / f"{name}.png"), 48)
        photo = imageio.load_image(str(tmp_path / "photos" / f"{name}.png"), 48)
        # nearer the photo's greyscale copy than the photo: measured 15.3 vs 11.8 dB, 21.7 vs 17.2 dB
        assert psnr(result, grey(photo)) > psnr(result, photo) + 2.5

    assert cmp_code == 0, cmp_out + cmp_err
    with open(tmp_path / "compare" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["column"] for r in rows}) == ["random-tiny relu1_1=conv1", "random-tiny relu2_1=conv2",
                                                  "random-vgg19 relu1_1", "random-vgg19 relu2_1"]
    assert len(rows) == 8 and all(float(r["psnr"]) > 10 for r in rows)
    by_layer = {layer: torch.tensor([float(r["psnr"]) for r in rows if r["layer"] == layer]).mean()
                for layer in ("relu1_1", "relu2_1")}
    assert by_layer["relu1_1"] > by_layer["relu2_1"]  # the shallower layer keeps more: measured 36.7 vs 19.9 dB
    assert importlib.util.find_spec("rvgen_mono") is None  # installed only into the temporary folder
