"""The levers of a picture's CPU time: where the iterations go (per-level budgets, the level
step), the backbone's precision on a CPU (``auto`` picks bf16 only where the CPU has it, and
the sidecar says what it ran in), reflect padding, and progress that names the level."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import psnr, sample, write_recipe, write_sample

from rvgen import imageio
from rvgen.batch.events import Step
from rvgen.batch.jobs import Job, plan_jobs
from rvgen.batch.runner import prepare
from rvgen.batch.sidecar import split_finished
from rvgen.cli import cli
from rvgen.engine import precision
from rvgen.engine.optimize import Level
from rvgen.engine.pyramid import PyramidConfig
from rvgen.errors import RecipeError
from rvgen.recipe import load_recipe

STYLE = '''
[task]
name = "style"
style = "{style}"
style_weight = 20.0

[optimizer]
scales = 3
min_size = 16
iterations = {iterations}
{extra}

[output]
size = 64
'''


def style_recipe(tmp_path: Path, iterations: int = 3, extra: str = "") -> Path:
    style = write_sample(tmp_path / "style.png", "hubble_deep_field", 96)
    return write_recipe(tmp_path / "style.toml", STYLE.format(style=style, iterations=iterations, extra=extra))


def test_scale_iterations_as_a_list_is_aligned_to_the_output_end():
    config = PyramidConfig(scales=3, scale_iterations=(200, 60))
    assert config.budgets(3, 10) == [200, 60, 10]
    assert config.budgets(2, 10) == [60, 10]  # a small image without its coarsest level
    assert config.budgets(4, 10) == [200, 200, 60, 10]  # more levels than entries: the first repeats
    assert config.budgets(1, 10) == [10]
    assert PyramidConfig(scales=3, scale_iterations=50).budgets(3, 10) == [50, 50, 10]
    assert PyramidConfig(scales=3).budgets(3, 100) == [100, 100, 100]  # default: iterations everywhere


def test_scale_step_makes_more_and_closer_levels():
    assert PyramidConfig(scales=3).levels((256, 384)) == [0.25, 0.5, 1.0]  # the default halves
    factors = PyramidConfig(scales=5, scale_step=2 ** 0.5).levels((256, 384))
    assert len(factors) == 5 and factors[-1] == 1.0
    assert [round(b / a, 4) for a, b in zip(factors, factors[1:])] == [1.4142] * 4
    assert PyramidConfig(scales=9, scale_step=2 ** 0.5, min_size=64).levels((256, 384))[0] >= 64 / 384


def test_recipes_take_a_list_of_scale_iterations_and_refuse_bad_ones(tmp_path):
    path = style_recipe(tmp_path)
    recipe = load_recipe(path, ["optimizer.scale_iterations=[20, 10]"])
    assert recipe.pyramid.scale_iterations == (20, 10)
    assert recipe.digest() != load_recipe(path, ["optimizer.scale_iterations=20"]).digest()
    assert load_recipe(path, ["optimizer.scale_step=2.0"]).digest() == load_recipe(path).digest()  # neutral default
    for bad, words in (("[]", "non-empty list"), ("[10, 0]", "from 1 to"), ("['x']", "whole number"),
                       ("1.5", "whole number")):
        with pytest.raises(RecipeError, match=words):
            load_recipe(path, [f"optimizer.scale_iterations={bad}"])


def reconstruct_recipe(tmp_path: Path, extra: str = "") -> Path:
    return write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\nlayer = "relu2_1"\n'
                        f'[optimizer]\niterations = 40\n{extra}\n[output]\nsize = 32\n')


def test_each_level_runs_its_own_budget_and_progress_names_the_level(tmp_path):
    recipe = load_recipe(reconstruct_recipe(tmp_path, "scales = 3\nmin_size = 16\nscale_iterations = [4, 3]"),
                         ["optimizer.iterations=2", "output.size=64"])
    synth = recipe.build("cpu")
    seen: list[Level] = []
    result = synth.run(sample("astronaut", 64), callback=lambda p: seen.append(p.level))  # square: 16 px fits
    sides = {level.index: level.side for level in seen}
    budgets = {level.index: level.iterations for level in seen}
    assert sides == {1: 16, 2: 32, 3: 64} and budgets == {1: 4, 2: 3, 3: 2}
    assert result.iterations <= 4 + 3 + 2  # L-BFGS may stop a level early, never run past it


def test_step_events_say_the_level_and_the_iteration_there():
    job = Job("a.jpg", "a.jpg", Path("a.png"))
    assert Step("cpu", job, 40, 300, 1.0).stage == "iteration 40/300"
    step = Step("cpu", job, 140, 300, 1.0, Level(2, 3, 192, 40, 100))
    assert step.stage == "level 2/3, 192 px: iteration 40/100"


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU does or does not have native bf16 (``set(True)``)."""
    def pretend(flag: bool):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": flag, "amx_bf16": False})
        precision.cpu_native_bf16.cache_clear()
    yield pretend
    precision.cpu_native_bf16.cache_clear()


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(native_bf16, monkeypatch, tmp_path):
    native_bf16(False)
    assert precision.resolve("auto", "cpu").precision == "fp32"
    native_bf16(True)
    assert precision.resolve("auto", "cpu").precision == "bf16"
    assert precision.resolve("fp32", "cpu").precision == "fp32"  # asked for, it is what runs
    # Without torch's reader, the flags of /proc/cpuinfo decide.
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "Path", lambda _: cpuinfo)
    for flags, expected in (("fpu avx2 fma", "fp32"), ("fpu avx2 avx512f avx512_bf16", "bf16"),
                            ("fpu amx_bf16 amx_tile", "bf16")):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        precision.cpu_native_bf16.cache_clear()
        assert precision.resolve("auto", "cpu").precision == expected, flags


@pytest.mark.slow
def test_lbfgs_converges_with_a_bf16_backbone_on_the_cpu(tmp_path):
    """bf16 autocast (emulated on a CPU without it, so a small image) keeps L-BFGS's line search
    and its stopping rule working: the loss falls about as far as in float32, the picture is
    the same to the eye, and the plateau rule still stops the run early."""
    path = reconstruct_recipe(tmp_path)
    content = sample("chelsea", 32)
    results = {}
    for name in ("fp32", "bf16"):
        synth = load_recipe(path, [f"optimizer.precision='{name}'"]).build("cpu")
        results[name] = synth.run(content)
        assert results[name].loss < results[name].initial_loss / 20, name
    # bf16's 8-bit mantissa leaves a noise floor (about 40 dB here against 43 in float32): far past the eye
    assert psnr(results["bf16"].image, content) > 35
    stopping = load_recipe(path, ["optimizer.precision='bf16'", "optimizer.iterations=400",
                                  "optimizer.tolerance=0.05"]).build("cpu").run(content)
    assert stopping.iterations < 400


def test_the_sidecar_records_the_precision_and_a_new_resolution_redoes_the_image(tmp_path, native_bf16):
    native_bf16(False)
    path = reconstruct_recipe(tmp_path, "scales = 2\nmin_size = 16")
    photos = tmp_path / "in"
    write_sample(photos / "cat.png", "chelsea", 40)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(path), "-i", str(photos), "-o", str(out), "-q", "--no-report"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / "cat.png.json").read_text())
    assert (sidecar["precision"], sidecar["layout"]) == ("fp32", "channels_last") and sidecar["threads"] >= 1
    recipe = load_recipe(path)
    jobs = plan_jobs(str(photos), out).jobs
    todo, finished = split_finished(jobs, prepare(recipe))
    assert (len(todo), len(finished)) == (0, 1)
    native_bf16(True)  # the same folder on a CPU where auto means bf16: made again
    todo, finished = split_finished(jobs, prepare(recipe))
    assert (len(todo), len(finished)) == (1, 0)
    native_bf16(False)  # a sidecar from before precision and layout were recorded: float32, contiguous
    for key in ("precision", "layout"):
        del sidecar[key]
    (out / "cat.png.json").write_text(json.dumps(sidecar))
    assert len(split_finished(jobs, prepare(recipe))[0]) == 1  # auto is channels-last now: made again


def test_reflect_padding_sees_no_dark_frame_around_the_image(tmp_path):
    """A flat grey image: with zero padding the first layer's features at the border differ from
    the middle (the frame the style fringe comes from); mirrored, they are the same everywhere."""
    grey = torch.full((1, 3, 24, 24), 0.5)
    spread = {}
    for padding in ("zeros", "reflect"):
        recipe = load_recipe(style_recipe(tmp_path), [f"backbone.padding='{padding}'"])
        backbone = recipe.build("cpu").objective.backbone
        features = backbone.features(grey, ["relu1_1", "relu2_1"])
        spread[padding] = max(float((f - f[..., f.shape[-2] // 2:f.shape[-2] // 2 + 1,
                                              f.shape[-1] // 2:f.shape[-1] // 2 + 1]).abs().max())
                              for f in features.values())
    assert spread["zeros"] > 0.05
    assert spread["reflect"] < 1e-5


def test_from_an_image_pins_the_precision_and_threads_it_was_made_with(tmp_path, native_bf16):
    """``rvgen run --from`` remakes a CPU result bit for bit although this machine's default
    threads differ, and although ``precision = "auto"`` means bf16 here now: it runs on the
    threads and in the precision the image records, changing the recipe (and its digest) only
    where "auto" would resolve otherwise."""
    native_bf16(False)
    path = reconstruct_recipe(tmp_path)
    photos = tmp_path / "in"
    write_sample(photos / "cat.png", "chelsea", 40)
    first, again, bf16_cpu = tmp_path / "first", tmp_path / "again", tmp_path / "bf16_cpu"
    made = CliRunner().invoke(cli, ["run", str(path), "-i", str(photos), "-o", str(first), "-q", "--no-report",
                                    "--threads", "2", "--set", "optimizer.iterations=6"])
    assert made.exit_code == 0, made.output
    old = json.loads((first / "cat.png.json").read_text())

    def remake(out: Path) -> dict:
        result = CliRunner().invoke(cli, ["run", "--from", str(first / "cat.png"), "-i", str(photos), "-o", str(out),
                                          "-q", "--no-report"])
        assert result.exit_code == 0, result.output
        assert torch.equal(imageio.load_image(first / "cat.png"), imageio.load_image(out / "cat.png"))
        return json.loads((out / "cat.png.json").read_text())

    new = remake(again)
    assert (new["threads"], new["precision"], new["layout"]) == (2, "fp32", "channels_last") == \
        (old["threads"], old["precision"], old["layout"])
    assert new["recipe"]["digest"] == old["recipe"]["digest"]  # nothing to pin: the same recipe
    native_bf16(True)  # a CPU where auto would mean bf16: the recorded fp32 is pinned
    pinned = remake(bf16_cpu)
    assert pinned["precision"] == "fp32" and pinned["recipe"]["resolved"]["optimizer"]["precision"] == "fp32"


def test_reflect_padding_runs_where_a_deep_layer_is_one_position_wide(tmp_path):
    """A small pyramid level (or a wide style image) leaves relu5_1's input one position high,
    too short to mirror: that side is repeated instead of failing."""
    recipe = load_recipe(style_recipe(tmp_path), ["backbone.padding='reflect'"])
    backbone = recipe.build("cpu").objective.backbone
    features = backbone.features(sample("chelsea", 96)[..., :20, :], ["relu5_1"])  # 96x20 px: 1 row at relu5_1
    assert features["relu5_1"].shape[-2:] == (1, 6) and torch.isfinite(features["relu5_1"]).all()


def test_upsample_detail_starts_the_fine_level_with_the_photos_edges(tmp_path):
    """With ``upsample_detail`` the fine level starts from the coarse result plus the photo's
    detail that upsampling loses, so after as little work the result keeps the photo's edges."""
    from rvgen import metrics

    content = sample("astronaut", 64)
    ssim = {}
    for detail in ("false", "true"):
        recipe = load_recipe(style_recipe(tmp_path), ["optimizer.scales=2", "optimizer.scale_iterations=2",
                                                      "optimizer.iterations=1", f"optimizer.upsample_detail={detail}"])
        synth = recipe.build("cpu")
        synth.set_references({"style": sample("hubble_deep_field", 96)})
        ssim[detail] = metrics.ssim(synth.run(content).image, content)
    assert ssim["true"] > ssim["false"] + 0.1, ssim
    assert load_recipe(style_recipe(tmp_path), ["optimizer.upsample_detail=false"]).digest() == \
        load_recipe(style_recipe(tmp_path)).digest()


def test_a_result_made_on_other_threads_is_made_again(tmp_path):
    """An image's pixels depend on its torch threads: a folder made with --threads 2 is made
    again by a run on 1 thread (as one made with the earlier default is by today's)."""
    path = reconstruct_recipe(tmp_path)
    photos = tmp_path / "in"
    write_sample(photos / "cat.png", "chelsea", 40)
    out = tmp_path / "out"

    def run(threads: str):
        result = CliRunner().invoke(cli, ["run", str(path), "-i", str(photos), "-o", str(out), "--no-report",
                                          "--threads", threads, "--set", "optimizer.iterations=4"])
        assert result.exit_code == 0, result.output
        return result.output

    run("2")
    made = (out / "cat.png.json").stat().st_mtime_ns
    run("2")  # the same threads: finished, left alone
    assert (out / "cat.png.json").stat().st_mtime_ns == made
    run("1")
    assert json.loads((out / "cat.png.json").read_text())["threads"] == 1
