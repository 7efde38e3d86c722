"""What rvgen reads and writes is trusted only as far as it should be (issue 25): no file of
the user's overwritten, nothing read from an edited sidecar, record or image's metadata
used unchecked or shown raw, and numbers out of range refused before any work."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_RECONSTRUCT, write_recipe, write_sample
from test_report import Page

import torch

from rvgen import Pipeline, hookimpl, imageio
from rvgen.batch.jobs import plan_jobs
from rvgen.batch.steps import write_step
from rvgen.cli import cli
from rvgen.errors import RecipeError
from rvgen.losses import Loss
from rvgen.losses.builtin import GramLoss
from rvgen.plugins import registry_with
from rvgen.recipe import BLEND_MEAN, load_recipe, parse_recipe
from rvgen.report.record import RECORD_NAME

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECONSTRUCT = TINY_RECONSTRUCT


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def a_sidecar(**changes) -> dict:
    """A sidecar as rvgen writes one, with ``changes``."""
    data = {
        "input": {"name": "x.jpg", "source": "/photos/x.jpg", "sha256": "0" * 16},
        "variation": 0,
        "recipe": {"source": "r.toml", "digest": "d" * 16, "resolved": {"task": {"name": "reconstruct"}}},
        "references": {},
        "loss": {"initial": 1.0, "final": 0.5, "terms": {"content": 0.5}},
        "history": [[0, 1.0], [2, 0.5]],
        "iterations": 2,
        "seconds": 0.5,
        "device": "cpu",
    }
    data.update(changes)
    return data


def test_a_users_index_html_is_kept_and_the_page_is_written_as_rvgen_html(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = "<html><body>my own page</body></html>"
    (out / "index.html").write_text(mine)
    result = run("report", out)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").read_text() == mine
    page = (out / "rvgen.html").read_text()
    assert '<meta name="generator" content="rvgen">' in page
    assert f"{out / 'index.html'} is not rvgen's page, so the folder's page is {out / 'rvgen.html'}" in result.stderr
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    result = run("run", recipe, "-i", "skimage:coffee", "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").read_text() == mine and (out / "coffee.png").is_file()
    assert "coffee.png" in (out / "rvgen.html").read_text()
    assert result.stderr.count("is not rvgen's page") == 1
    # rvgen's own page (and one written before pages said so) is rewritten as index.html
    (out / "index.html").unlink()
    (out / "rvgen.html").unlink()
    assert run("report", out).exit_code == 0 and (out / "index.html").is_file() and not (out / "rvgen.html").exists()
    assert run("report", out).exit_code == 0 and not (out / "rvgen.html").exists()
    (out / "index.html").write_text(mine)  # neither name free: no page, nothing replaced
    (out / "rvgen.html").write_text(mine)
    result = run("report", out)
    assert result.exit_code == 2 and result.output.strip() == (
        f"Error: {out / 'index.html'} and {out / 'rvgen.html'} are not rvgen's pages; rvgen replaces neither, so "
        "the folder's page is not written")
    assert (out / "index.html").read_text() == mine == (out / "rvgen.html").read_text()


def test_a_sidecar_of_the_wrong_types_is_skipped_with_one_line_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    write_sample(out / "old.png", "brick", 32)
    (out / "old.png.json").write_text(json.dumps(a_sidecar(iterations="many")))
    result = run("report", out)
    assert result.exit_code == 0, result.output
    assert "Warning: old.png.json: iterations: expected an integer, got the text \"many\"; left out" in result.stderr
    assert "internal error" not in result.output
    page = (out / "index.html").read_text()
    assert "Not read (1)" in page and "old.png.json: iterations: expected an integer" in page
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    log = tmp_path / "log.jsonl"
    result = run("run", recipe, "-i", "skimage:coffee", "-o", out, "--log-file", log)
    assert result.exit_code == 0, result.output
    assert (out / "coffee.png").is_file() and (out / "coffee.png.json").is_file()
    assert result.stderr.count("old.png.json") == 1
    warnings = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "warning"]
    assert [w["message"] for w in warnings] == ["old.png.json: iterations: expected an integer, got the text "
                                                "\"many\"; left out"]


def test_record_entries_of_the_wrong_types_are_left_out_never_written_as_markup(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    good = {"started": "2026-01-01T00:00:00+00:00", "seconds": 1.0, "recipe": "r.toml", "digest": "d", "done": 1,
            "failed": 0, "not_started": 0, "already_done": 0, "devices": {"cpu": 1}, "signal": None}
    bad = {**good, "done": "<script>alert(1)</script>", "not_started": "<b>x</b>"}
    (out / RECORD_NAME).write_text(json.dumps({"failures": {"a.png": {"input": "<script>", "variation": "0"}},
                                               "pending": [], "runs": [good, bad]}))
    result = run("report", out)
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "<script" not in page and "<b>x</b>" not in page
    assert "runs[1].done: expected an integer" in result.stderr
    assert "failures['a.png'].variation: expected an integer" in result.stderr
    assert "pending: expected an object, got a list" in result.stderr
    assert "runs[1].done: expected an integer" in page


STYLE = '''
[task]
name = "style"
style = "private.png"
style_layers = ["relu1_1"]
content_layers = ["relu1_1"]

[optimizer]
iterations = 2

[output]
size = 32
'''


def crafted(path: Path, recipe_text: str, base: Path, **changes) -> Path:
    """An image whose rvgen metadata records ``recipe_text`` (resolved from ``base``), with ``changes``."""
    resolved = parse_recipe(tomllib.loads(recipe_text), base_dir=base).to_dict()
    data = {"recipe": {"source": "r.toml", "digest": "0" * 16, "resolved": resolved},
            "input": {"name": "coffee.png", "sha256": "0" * 16}, "loss": {"initial": 1.0, "final": 0.5},
            "iterations": 2, "seconds": 1.0, "device": "cpu"}
    data.update(changes)
    text = changes.pop("text", None) or json.dumps(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.save_image(imageio.load_image("skimage:coffee", 32), path, "png", metadata={"rvgen": text})
    return path


def test_from_writes_to_a_folder_named_after_the_image_never_one_its_metadata_names(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    (here / "index.html").write_text("mine")
    monkeypatch.chdir(here)
    image = crafted(tmp_path / "made.png", RECONSTRUCT, tmp_path,
                    recipe={"source": "..", "digest": "0" * 16,
                            "resolved": parse_recipe(tomllib.loads(RECONSTRUCT)).to_dict()})
    result = run("run", "--from", image, "-i", "skimage:coffee")
    assert result.exit_code == 0, result.output
    assert f"writes results, sidecars and the page in {Path('rvgen-out') / 'made'}" in result.stderr
    assert (here / "rvgen-out" / "made" / "coffee.png").is_file()
    assert (here / "index.html").read_text() == "mine" and sorted(p.name for p in here.iterdir()) == ["index.html",
                                                                                                   "rvgen-out"]


def test_from_names_every_file_its_recipe_reads_and_the_page_shows_none_of_them(tmp_path):
    private = write_sample(tmp_path / "private.png", "astronaut", 40)
    image = crafted(tmp_path / "made.png", STYLE, tmp_path)
    out = tmp_path / "out"
    dry = run("run", "--from", image, "-i", "skimage:coffee", "-o", out, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"reads task.style = {private} (named in the image's metadata)" in dry.stderr
    assert f"writes results, sidecars and the page in {out}" in dry.stderr
    assert not out.exists()
    result = run("run", "--from", image, "-i", "skimage:coffee", "-o", out)
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "private.png\"" not in page and "href=\"../private.png" not in page
    assert Page(page).hrefs and all("private" not in url for url in Page(page).hrefs + Page(page).srcs)
    assert json.loads((out / "coffee.png.json").read_text())["reference_files"] == {}
    # named on the command line, the style image is the user's: shown and linked
    again = run("run", "--from", image, "-i", "skimage:coffee", "-o", tmp_path / "out2", "--set",
                f"task.style={private}")
    assert again.exit_code == 0, again.output
    assert "(set with --set)" in again.stderr
    assert any("private.png" in url for url in Page((tmp_path / "out2" / "index.html").read_text()).hrefs)


def test_info_escapes_what_the_metadata_says_for_the_terminal(tmp_path):
    image = crafted(tmp_path / "made.png", RECONSTRUCT, tmp_path,
                    input={"name": "a\x1b[2J\x1b]0;pwned\x07.png", "sha256": "\u202eabc"})
    result = run("info", image)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\u202e" not in result.output
    assert "input:      a\\x1b[2J\\x1b]0;pwned\\x07.png (sha256 \\u202eabc)" in result.output


@pytest.mark.parametrize("changes,reason", [
    ({"recipe": {"source": "r.toml"}}, "recipe.resolved: missing"),
    ({"recipe": {"resolved": [1, 2]}}, "recipe.resolved: expected an object, got a list"),
    ({"text": "[" * 100_000 + "]" * 100_000}, "nested more than 32 levels deep"),
    ({"loss": {"final": "low"}}, "loss.final: expected a number, got the text \"low\""),
    ({"seconds": [1]}, "seconds: expected a number, got a list"),
])
def test_crafted_metadata_is_one_line_exit_2_from_info_and_from(tmp_path, changes, reason):
    image = crafted(tmp_path / "made.png", RECONSTRUCT, tmp_path, **changes)
    for args in (["info", image], ["run", "--from", image, "-i", "skimage:coffee", "-o", tmp_path / "out"]):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"Error: {image}: its rvgen metadata: {reason}; it cannot be used"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["task.seed", "backbone.seed"])
def test_a_seed_torch_cannot_take_is_exit_2_before_any_work(tmp_path, key):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    result = run("run", recipe, "-i", "skimage:coffee", "-o", tmp_path / "out", "--set", f"{key}=99999999999999999999999")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {key}: must be at most 18446744073709551615, got 99999999999999999999999"
    assert not (tmp_path / "out").exists()
    assert run("run", recipe, "-i", "skimage:coffee", "-o", tmp_path / "out", "--dry-run",
               "--set", f"{key}=18446744073709551615").exit_code == 0


def test_the_seed_bound_holds_for_the_last_variation(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT.replace('name = "reconstruct"\nlayer = "relu1_1"',
                                                                   'name = "texture"\nvariations = 3'))
    top = 2**64 - 1
    result = run("run", recipe, "-i", "skimage:coffee", "-o", tmp_path / "out", "--set", f"task.seed={top - 7919}")
    assert result.exit_code == 2, result.output
    assert f"Error: task.seed: {top - 7919} leaves no seed for 3 variations" in result.output
    assert run("run", recipe, "-i", "skimage:coffee", "-o", tmp_path / "out", "--dry-run",
               "--set", f"task.seed={top - 2 * 7919}").exit_code == 0


def test_a_style_image_too_small_for_the_pyramids_smallest_level_is_exit_2(tmp_path):
    write_sample(tmp_path / "private.png", "astronaut", 40)
    recipe = write_recipe(tmp_path / "r.toml", STYLE.replace('style_layers = ["relu1_1"]', 'style_layers = ["relu5_1"]\n'
                                                                                            'style_size = 24'))
    args = ("run", recipe, "-i", "skimage:coffee", "-o", tmp_path / "out", "--set", "output.size=64")
    assert run(*args, "--dry-run").exit_code == 0, "one scale: 24 px is enough for relu5_1"
    result = run(*args, "--set", "optimizer.scales=2", "--set", "optimizer.min_size=32")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("Error: task.style: image too small: 24x24 px, 12x12 px at the pyramid's smallest "
                                     "level (1/2), and the layers used need at least 16 px on each side; use a larger "
                                     "image or size, or fewer optimizer.scales")
    assert not (tmp_path / "out").exists()


def test_a_tile_size_off_the_networks_grid_is_refused_naming_the_sizes_that_fit(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT.replace('"relu1_1"', '"relu5_1"'))
    args = ("run", recipe, "-i", "skimage:coffee", "-o", tmp_path / "out", "--dry-run")
    result = run(*args, "--set", "optimizer.tile_size=20")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("Error: optimizer.tile_size: 20 is not a multiple of 16, the network's stride at "
                                     "relu5_1 (tiles start on that grid); use 16 or 32")
    assert run(*args, "--set", "optimizer.tile_size=32").exit_code == 0
    shallow = write_recipe(tmp_path / "s.toml", RECONSTRUCT.replace('"relu1_1"', '"relu3_1"'))
    assert run("run", shallow, "-i", "skimage:coffee", "-o", tmp_path / "out", "--dry-run",
               "--set", "optimizer.tile_size=20").exit_code == 0, "relu3_1's stride is 4"


def test_keep_steps_and_save_every_leave_the_digest_alone(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    digest = load_recipe(recipe).digest()
    assert load_recipe(recipe, ["output.keep_steps=false"]).digest() == digest
    assert load_recipe(recipe, ["output.save_every=1", "output.keep_steps=false"]).digest() == digest


def test_a_run_without_keep_steps_removes_the_step_images_a_killed_run_left_and_no_other_file(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    out = tmp_path / "out"
    parsed = load_recipe(recipe, ["output.save_every=1", "output.keep_steps=false"])
    (job,) = plan_jobs("skimage:coffee", out).jobs
    image = imageio.load_image("skimage:coffee", 32)
    left = [write_step(parsed, job, image, i, 300) for i in (1, 2, 3)]  # as a run killed at iteration 3 left them
    assert all(p.is_file() for p in left) and left[0].name == "coffee.iter001.png"
    mine = write_sample(out / "coffee.iter007.png", "brick", 16)  # the user's own, named like a step image
    assert write_step(parsed, job, image, 7, 300) is None, "a file rvgen did not make is never replaced"
    result = run("run", recipe, "-i", "skimage:coffee", "-o", out, "--set", "output.keep_steps=false")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("coffee.iter*")) == ["coffee.iter007.png"] and mine.is_file()
    assert (out / "coffee.png").is_file()


def test_a_step_image_that_could_overwrite_an_input_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    step_like = write_sample(out / "sub" / "a.iter1.png", "coffee", 32)  # where a step image of out/sub/a.png goes
    write_sample(out / "sub" / "sub" / "a.png", "chelsea", 32)  # input sub/a.png: its result is out/sub/a.png
    before = step_like.read_bytes()
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    result = run("run", recipe, "-i", out / "sub", "-o", out, "--set", "output.save_every=1")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"Error: the step images of sub/a.png (output.save_every, a.iterN.png) could "
                                     f"overwrite the input {step_like}; rvgen never overwrites an input: choose an "
                                     "--output apart from the inputs")
    assert step_like.read_bytes() == before and not (out / "sub" / "a.png").exists()
    assert plan_jobs(str(out / "sub"), out).jobs, "without steps the plan is fine"


def test_an_input_whose_sidecar_name_would_be_too_long_is_refused_before_any_work(tmp_path):
    name = "n" * 248 + ".png"  # 252 bytes: the result is a 252-byte name, its sidecar 257
    write_sample(tmp_path / "in" / name, "coffee", 32)
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    out = tmp_path / "out"
    result = run("run", recipe, "-i", tmp_path / "in", "-o", out)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"Error: input {name}: the name of its sidecar would be 257 bytes, more than the "
                                     f"255 the file system of --output {out} takes: rename the input")
    assert not out.exists()
    short = "n" * 246 + ".png"  # a 255-byte sidecar name fits; its step images (.iter + 7 digits) would not
    (tmp_path / "in" / name).rename(tmp_path / "in" / short)
    assert run("run", recipe, "-i", tmp_path / "in", "-o", out, "--dry-run").exit_code == 0
    steps = run("run", recipe, "-i", tmp_path / "in", "-o", out, "--set", "output.save_every=1")
    assert steps.exit_code == 2 and "the name of its step images would be 262 bytes" in steps.output


# -- a folder of style images costs about one ------------------------------------------------

STYLE_SAMPLES = ["brick", "gravel", "grass", "hubble_deep_field", "coffee", "chelsea", "rocket", "astronaut"]


def style_folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "styles"
    folder.mkdir(exist_ok=True)
    for k in range(count):  # different pictures: the samples at a few sizes and crops
        name = STYLE_SAMPLES[k % len(STYLE_SAMPLES)]
        image = imageio.load_image(f"skimage:{name}", 48 + 8 * (k // len(STYLE_SAMPLES)))
        imageio.to_pil(image[..., : 30 + k % 5, : 30 + k % 7]).save(folder / f"s{k:03d}.png")
    return folder


def folder_recipe(tmp_path: Path, style, registry=None, **task):
    data = {"task": {"name": "style", "style": style, "style_layers": ["relu1_1", "relu2_1", "relu3_1"],
                     "content_layers": ["relu2_1"], **task},
            "optimizer": {"iterations": 3}, "output": {"size": 48}}
    return parse_recipe(data, base_dir=tmp_path, registry=registry)


def test_a_style_folder_is_one_term_whose_target_is_the_mean_of_the_normalised_grams(tmp_path):
    folder = style_folder(tmp_path, 12)
    recipe = folder_recipe(tmp_path, "styles")
    pipe = Pipeline(recipe, "cpu")
    objective = pipe.synth.objective
    (i,) = [k for k, t in enumerate(objective.terms) if t.name == "style"]
    assert len(objective.terms[i].blend) == 12
    gram = GramLoss()
    images = [imageio.load_image(path, 48) for path in sorted(folder.iterdir())]
    for layer in objective.terms[i].layers:
        prepared = [gram.prepare(objective.features(image, [layer])[layer]) for image in images]
        mean = sum(p[0] for p in prepared) / 12
        scale_squared = sum(p[1] for p in prepared) / 12
        target = objective.targets[(i, layer)]
        assert torch.allclose(target[0], mean, rtol=1e-5, atol=1e-7) and torch.allclose(target[1], scale_squared)
        assert torch.allclose(target[2], mean.pow(2).mean())
    (out,) = pipe.run([imageio.load_image("skimage:coffee", 48)])
    assert set(out.parts) == {"content", "style"} and out.loss < out.initial_loss


def test_a_folder_of_one_picture_twice_is_that_picture_bit_for_bit(tmp_path):
    write_sample(tmp_path / "one" / "a.png", "brick", 48)
    write_sample(tmp_path / "twice" / "a.png", "brick", 48)
    write_sample(tmp_path / "twice" / "b.png", "brick", 48)
    photo = imageio.load_image("skimage:coffee", 48)
    (alone,) = Pipeline(folder_recipe(tmp_path, "one"), "cpu").run([photo])
    (twice,) = Pipeline(folder_recipe(tmp_path, "twice"), "cpu").run([photo])
    assert torch.equal(alone.tensor, twice.tensor) and alone.loss == twice.loss


def test_a_blend_changes_the_digest_and_one_style_keeps_it(tmp_path):
    style_folder(tmp_path, 2)
    one = folder_recipe(tmp_path, str(tmp_path / "styles" / "s000.png"))
    assert one.made_as == () and "made_as" not in json.dumps(one.to_dict())
    folder = folder_recipe(tmp_path, "styles")
    assert folder.made_as == (BLEND_MEAN,)
    assert folder.digest() != replace(folder, made_as=()).digest(), "results made before by a sum of terms are redone"
    listed = folder_recipe(tmp_path, sorted(str(p) for p in (tmp_path / "styles").iterdir()))
    assert listed.digest() == folder.digest()


def test_a_style_loss_that_cannot_blend_gets_a_term_per_image_up_to_a_bound(tmp_path):
    class Mean(Loss):  # the distance of the features' means: not blendable
        name = "meanstat"
        batched = True

        def prepare(self, features):
            return features.detach().mean((2, 3))

        def forward(self, features, target):
            return (features.mean((2, 3)) - target).pow(2).mean(1)

    class Plugin:
        @hookimpl
        def register_losses(self, register):
            register(Mean)

    registry = registry_with([Plugin()])
    style_folder(tmp_path, 17)
    names = sorted(p.name for p in (tmp_path / "styles").iterdir())
    three = folder_recipe(tmp_path, [f"styles/{n}" for n in names[:3]], registry, style_loss="meanstat")
    assert three.made_as == ()
    terms = [t for t in three.build("cpu", registry).objective.terms if t.name == "style"]
    assert [(t.target, round(t.weight, 4), t.blend) for t in terms] == [(n, 6.6667, ()) for n in
                                                                        ("style", "style2", "style3")]
    with pytest.raises(RecipeError, match="task: 17 reference images for loss 'meanstat', which cannot blend them "
                                          "into one target .* at most 16"):
        folder_recipe(tmp_path, "styles", registry, style_loss="meanstat")


@pytest.mark.slow
def test_a_style_folder_of_50_costs_about_one_image_in_time(tmp_path):
    import time

    style_folder(tmp_path, 50)
    photo = imageio.load_image("skimage:coffee", 48)
    seconds = []
    for style in (str(tmp_path / "styles" / "s000.png"), "styles"):
        start = time.perf_counter()
        Pipeline(folder_recipe(tmp_path, style), "cpu").run([photo])
        seconds.append(time.perf_counter() - start)
    assert seconds[1] < 3 * seconds[0] + 1.0, seconds
