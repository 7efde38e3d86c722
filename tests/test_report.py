"""The folder's page (OUTPUT/index.html), read as a browser would; the provenance each image
carries (``rvgen info``) and ``rvgen run --from`` making the same image again."""

import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_recipe, write_sample
from PIL import Image

from rvgen import imageio
from rvgen.batch.events import ImageDone, ImageFailed
from rvgen.batch.jobs import plan_jobs
from rvgen.batch.summary import RunInfo, Summary, WorkerSpec
from rvgen.cli import cli
from rvgen.recipe import load_recipe, parse_recipe
from rvgen.report import PageReporter
from rvgen.report.page import curve
from rvgen.report.record import RECORD_NAME
from rvgen.report.thumbs import THUMBS_NAME

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TEXTURE = '''
[task]
name = "texture"
layers = ["relu1_1", "relu2_1"]
variations = 2

[optimizer]
iterations = 4

[output]
size = 32
'''

STYLE = '''
[task]
name = "style"
style = "styles/style.png"
style_layers = ["relu1_1", "relu2_1"]
content_layers = ["relu2_1"]

[optimizer]
iterations = 4

[output]
size = 32
'''


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


class Page(HTMLParser):
    """What a reader of the page meets: links, images, text, and the cards (one per input)."""

    def __init__(self, text: str):
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.scripts = 0
        self.polylines = 0
        self.cards: list[list[str]] = []  # the links of each card
        self.text: list[str] = []
        self._in_card = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "article":
            self.cards.append([])
            self._in_card = True
        if tag == "a":
            self.hrefs.append(attrs["href"])
            if self._in_card:
                self.cards[-1].append(attrs["href"])
        if tag == "img":
            self.srcs.append(attrs["src"])
        if tag == "script":
            self.scripts += 1
        if tag == "polyline":
            self.polylines += 1
        if tag == "link" and attrs.get("rel") == "stylesheet":
            raise AssertionError("the page loads nothing")

    def handle_endtag(self, tag):
        if tag == "article":
            self._in_card = False

    def handle_data(self, data):
        self.text.append(data)

    @property
    def plain(self) -> str:
        return " ".join(self.text)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One texture run (two variations per input) over a folder with a broken image."""
    root = tmp_path_factory.mktemp("report")
    photos = root / "photos"
    write_sample(photos / "cat.jpg", "chelsea", 40)
    (photos / "broken.png").write_bytes(b"not a png at all")
    out = root / "out"
    result = run("run", write_recipe(root / "texture.toml", TEXTURE), "--input", photos, "--output", out)
    assert result.exit_code == 1, result.output  # the broken input failed; the others were made
    return out


def resolve(folder: Path, url: str) -> Path:
    return (folder / unquote(url)).resolve()


@pytest.mark.slow
def test_the_page_shows_each_result_once_beside_its_input_with_the_failures(made):
    page = Page((made / "index.html").read_text())
    results = sorted(p.relative_to(made).as_posix() for p in made.rglob("*.png") if THUMBS_NAME not in p.parts)
    assert results == ["cat.v0.png", "cat.v1.png"]
    for name in results:
        assert page.hrefs.count(name) == 2, name  # the thumbnail and the name link to it, in one card
    assert len(page.cards) == 1 and {"cat.v0.png", "cat.v1.png"} <= set(page.cards[0]), "variations together"
    assert any(resolve(made, h).name == "cat.jpg" for h in page.cards[0]), "the input beside its results"
    assert page.polylines == 2, "a loss curve per result"
    for url in page.hrefs + page.srcs:
        assert resolve(made, url).is_file(), url
    thumbs = sorted((made / THUMBS_NAME).glob("*.jpg"))
    assert len(thumbs) == 3 and {resolve(made, s) for s in page.srcs} == {t.resolve() for t in thumbs}
    assert all(max(Image.open(t).size) == 256 for t in thumbs)
    assert page.scripts == 0
    text = page.plain
    record = json.loads((made / RECORD_NAME).read_text())
    assert sorted(record["failures"]) == ["broken.v0.png", "broken.v1.png"]
    assert text.count("not an image, or a format Pillow cannot read") == 2
    assert "Failed (2)" in text and "broken.png (variation 1)" in text
    assert "2 done" in " ".join(text.split()) and "images per hour" in text
    assert 'layers = ["relu1_1", "relu2_1"]' in text, "the resolved recipe, as TOML"
    assert record["runs"][-1]["done"] == 2 and record["runs"][-1]["failed"] == 2
    assert record["runs"][-1]["devices"] == {"cpu": 2}
    assert "@media print" in (made / "index.html").read_text()


@pytest.mark.slow
def test_rvgen_report_rebuilds_the_same_page_reusing_the_thumbnails(made):
    original = (made / "index.html").read_text()
    (made / "index.html").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (made / THUMBS_NAME).iterdir()}
    result = run("report", made)
    assert result.exit_code == 0, result.output
    assert "2 done, 2 failed, 0 not yet made" in result.output
    assert (made / "index.html").read_text() == original
    assert {p: p.stat().st_mtime_ns for p in (made / THUMBS_NAME).iterdir()} == stamps, "thumbnails reused"


def test_rvgen_report_on_a_missing_folder_is_one_line(tmp_path):
    result = run("report", tmp_path / "nowhere")
    assert result.exit_code == 2 and result.output.strip().endswith("nowhere: no such folder")


def test_a_page_written_while_a_run_goes_lists_the_images_not_yet_made(tmp_path, photos):
    out = tmp_path / "out"
    jobs = plan_jobs(str(photos), out).jobs
    clock = [0.0]
    reporter = PageReporter(out, "d1", "r.toml", interval=30.0, clock=lambda: clock[0])
    reporter.start(RunInfo(jobs, 0, [], [WorkerSpec("cpu", "cpu")], str(out)))
    page = Page((out / "index.html").read_text()).plain
    assert "Not yet made (2)" in page and "A run is going" in page and "0 of 2 done" in page
    written = (out / "index.html").stat().st_mtime_ns
    reporter.handle(ImageFailed("cpu", jobs[0], "boom: one line"))
    assert (out / "index.html").stat().st_mtime_ns == written, "not rewritten within the interval"
    clock[0] = 31.0
    reporter.handle(ImageFailed("cpu", jobs[1], "bang"))
    page = Page((out / "index.html").read_text()).plain
    assert "Failed (2)" in page and "boom: one line" in page and "Not yet made" not in page
    summary = Summary(total=2, failed=[(jobs[0], "boom: one line"), (jobs[1], "bang")], seconds=3.0)
    reporter.finish(summary)
    page = Page((out / "index.html").read_text()).plain
    assert "A run is going" not in page
    assert json.loads((out / RECORD_NAME).read_text())["runs"][0]["failed"] == 2


def test_an_image_made_later_is_no_longer_failed(tmp_path, photos):
    out = tmp_path / "out"
    jobs = plan_jobs(str(photos), out).jobs
    first = PageReporter(out, "d1", "r.toml")
    first.start(RunInfo(jobs, 0, [], [WorkerSpec("cpu", "cpu")], str(out)))
    first.handle(ImageFailed("cpu", jobs[0], "boom"))
    first.finish(Summary(total=2, failed=[(jobs[0], "boom")]))
    assert "boom" in Page((out / "index.html").read_text()).plain
    second = PageReporter(out, "d1", "r.toml")
    second.start(RunInfo(jobs[:1], 0, [], [WorkerSpec("cpu", "cpu")], str(out)))
    second.handle(ImageDone("cpu", jobs[0], 1.0, 3, 0.5))
    second.finish(Summary(total=1, done=[jobs[0]], seconds=1.0))
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["failures"] == {} and list(record["pending"]) == ["trip/coffee.png"]


def test_no_report_writes_no_page(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", TEXTURE.replace("variations = 2", "variations = 1"))
    out = tmp_path / "out"
    result = run("run", recipe, "--input", "skimage:brick", "--output", out, "--no-report", "--set", "output.size=16")
    assert result.exit_code == 0, result.output
    assert (out / "brick.png").is_file()
    assert not (out / "index.html").exists() and not (out / THUMBS_NAME).exists() and not (out / RECORD_NAME).exists()


@pytest.mark.slow
def test_info_gives_the_recipe_that_from_makes_again_bit_for_bit(tmp_path, style_image):
    recipe = write_recipe(tmp_path / "style.toml", STYLE)
    photo = write_sample(tmp_path / "in" / "cat.png", "chelsea", 40)
    first = tmp_path / "first"
    assert run("run", recipe, "--input", photo, "--output", first).exit_code == 0
    image = first / "cat.png"
    info = run("info", image, "--json")
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    sidecar = json.loads((first / "cat.png.json").read_text())
    assert data["recipe"] == sidecar["recipe"] and data["loss"] == sidecar["loss"]
    assert data["input"] == {"name": "cat.png", "sha256": sidecar["input"]["sha256"]}
    assert data["seeds"] == {"task.seed": 0, "backbone.seed": 0} and data["versions"]["rvgen"]
    assert parse_recipe(data["recipe"]["resolved"]).digest() == load_recipe(recipe).digest()

    copied = tmp_path / "album" / "found.png"  # away from its sidecar: the file alone says how it was made
    copied.parent.mkdir()
    shutil.copy(image, copied)
    second = tmp_path / "second"
    again = run("run", "--from", copied, "--input", photo, "--output", second)
    assert again.exit_code == 0, again.output
    a, b = (np.asarray(Image.open(p)) for p in (image, second / "cat.png"))
    assert a.shape == b.shape and np.array_equal(a, b), "the same pixels, bit for bit"
    assert json.loads((second / "cat.png.json").read_text())["recipe"]["digest"] == sidecar["recipe"]["digest"]

    text = run("info", copied)
    assert text.exit_code == 0
    assert "seeds:      backbone.seed = 0, task.seed = 0" in text.output
    assert f"digest {sidecar['recipe']['digest']}" in text.output
    toml = text.output.split("# the resolved recipe (rvgen run --from IMAGE runs it again)\n", 1)[1]
    assert parse_recipe(tomllib.loads(toml)).digest() == sidecar["recipe"]["digest"]

    page = Page((second / "index.html").read_text())  # a style image only the metadata names is not shown
    assert page.hrefs and all(resolve(second, h) != style_image.resolve() for h in page.hrefs)
    first_page = Page((first / "index.html").read_text())  # the recipe file's is
    assert any(resolve(first, h) == style_image.resolve() for h in first_page.hrefs)
    for url in page.hrefs + page.srcs:
        assert resolve(second, url).is_file(), url


def test_info_on_an_image_without_provenance_is_one_line(tmp_path):
    plain = write_sample(tmp_path / "plain.png", "coffee", 16)
    result = run("info", plain)
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {plain}: says nothing of how it was made (no rvgen metadata in it, " \
                                    "no sidecar beside it)"


def test_run_wants_a_recipe_or_from(tmp_path):
    result = run("run", "--input", "skimage:brick")
    assert result.exit_code == 2 and "give a RECIPE or --from IMAGE" in result.output


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_every_format_carries_its_text(tmp_path, fmt):
    path = tmp_path / f"x.{fmt}"
    text = json.dumps({"recipe": {"style": "<Monet & Manet>"}, "é": 1})
    imageio.save_image(torch.rand(1, 3, 8, 8), path, fmt, metadata={"rvgen": text})
    assert imageio.read_metadata(path) == {"rvgen": text}
    assert imageio.read_metadata(tmp_path / "missing.png") == {}


@pytest.mark.parametrize("name", ["starry_night", "texture", "reconstruct"])
def test_a_shipped_recipe_as_toml_loads_to_the_same_digest(name):
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / f"{name}.toml")
    assert parse_recipe(tomllib.loads(recipe.to_toml())).digest() == recipe.digest()


def test_the_loss_curve_is_a_polyline_falling_left_to_right():
    svg = curve([(0, 100.0), (5, 10.0), (10, 1.0)])
    points = [tuple(map(float, p.split(","))) for p in svg.split('points="')[1].split('"')[0].split()]
    assert [round(x) for x, _ in points] == [2, 80, 158]
    assert points[0][1] < points[1][1] < points[2][1], "a falling loss goes down the picture"
    assert curve([(0, 1.0)]) == ""


@pytest.mark.slow
def test_compare_writes_a_page_of_its_columns(tmp_path):
    photos = tmp_path / "photos"
    write_sample(photos / "cat.png", "chelsea", 32)
    recipe = write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n'
                                               '[optimizer]\niterations = 3\n[output]\nsize = 32\n')
    out = tmp_path / "cmp"
    result = run("compare", recipe, "--input", photos, "--output", out, "--seeds", "0,1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (out / "sheet.png").is_file(), "the contact sheet stays"
    page = Page((out / "index.html").read_text())
    results = sorted(p.relative_to(out).as_posix() for p in (out / "results").rglob("*.png"))
    assert len(results) == 2
    for name in results:
        assert page.hrefs.count(name) == 1, name
    for url in page.hrefs + page.srcs:
        assert resolve(out, url).is_file(), url
    assert page.polylines == 2 and page.scripts == 0
    text = page.plain
    assert "Failed" not in text and "random-vgg19 seed 1" in text and 'layer = "relu1_1"' in text
    psnr = {row["column"]: row["psnr"]["mean"] for row in json.loads((out / "metrics.json").read_text())["summary"]}
    for column, value in psnr.items():
        assert column in text and f"{value:.2f}" in text
