"""``rvgen run`` end to end through click's runner: each task, the folder rules, bad input."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import png_size, write_recipe, write_sample

from rvgen import imageio
from rvgen.cli import cli

SHALLOW = '''
[optimizer]
iterations = {iterations}

[output]
size = {size}
'''


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def recipe(tmp_path: Path, task: str, iterations: int = 5, size: int = 32) -> Path:
    return write_recipe(tmp_path / "recipe.toml", task + SHALLOW.format(iterations=iterations, size=size))


def test_reconstruct_over_a_folder_keeps_relative_paths_and_writes_sidecars(tmp_path, photos):
    path = recipe(tmp_path, '[task]\nname = "reconstruct"\nlayer = "relu2_1"\n')
    out = tmp_path / "out"
    result = run("run", path, "--input", photos, "--output", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["cat.png", "trip/coffee.png"]
    assert "skipping 1 file(s) that are not images: notes.txt" in result.output
    assert "2 done, 0 failed" in result.output
    side = json.loads((out / "trip" / "coffee.png.json").read_text())
    assert side["input"]["name"] == "trip/coffee.png"
    assert side["recipe"]["resolved"]["task"]["layer"] == "relu2_1"
    assert side["loss"]["final"] < side["loss"]["initial"]
    assert side["iterations"] == 5 and side["versions"]["torch"] == torch.__version__
    assert png_size(out / "cat.png") == (32, 22)  # the 40x27 input scaled to output.size = 32
    assert not list(out.rglob("*.tmp")), "no temporary files are left behind"


def test_texture_writes_variations_at_the_requested_size(tmp_path):
    path = recipe(tmp_path, '[task]\nname = "texture"\nlayers = ["relu1_1", "relu2_1"]\nvariations = 2\n'
                            'size = [40, 24]\n')
    out = tmp_path / "out"
    result = run("run", path, "--input", "skimage:brick", "--output", out)
    assert result.exit_code == 0, result.output
    a, b = out / "brick.v0.png", out / "brick.v1.png"
    assert png_size(a) == png_size(b) == (40, 24)
    assert not torch.equal(imageio.load_image(a), imageio.load_image(b)), "variations differ"


def test_style_with_a_style_image_relative_to_the_recipe(tmp_path, photos, style_image):
    task = ('[task]\nname = "style"\nstyle = "styles/style.png"\nstyle_layers = ["relu1_1", "relu2_1"]\n'
            'content_layers = ["relu2_1"]\n')
    out = tmp_path / "out"
    result = run("run", recipe(tmp_path, task), "-i", photos / "cat.jpg", "-o", out)
    assert result.exit_code == 0, result.output
    side = json.loads((out / "cat.png.json").read_text())
    assert set(side["loss"]["terms"]) == {"content", "style"}
    noisy = run("run", recipe(tmp_path, task), "-i", photos / "cat.jpg", "-o", tmp_path / "noisy",
                "--set", "task.init=noise", "--set", "task.tv_weight=0.1")
    assert noisy.exit_code == 0, noisy.output
    side = json.loads((tmp_path / "noisy" / "cat.png.json").read_text())
    assert set(side["loss"]["terms"]) == {"content", "style", "tv"}
    assert side["loss"]["final"] < side["loss"]["initial"]


def test_a_corrupt_image_fails_alone_with_one_line_and_no_traceback(tmp_path, photos):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    write_sample(photos / "truncated.png", "rocket", 40)
    data = (photos / "truncated.png").read_bytes()
    (photos / "truncated.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    result = run("run", recipe(tmp_path, '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n'), "-i", photos, "-o", out)
    assert result.exit_code == 1
    assert (out / "cat.png").is_file() and (out / "trip" / "coffee.png").is_file()
    assert not (out / "broken.png").exists() and not (out / "truncated.png").exists()
    assert "2 done, 2 failed" in result.output
    assert "broken.jpg: " in result.output and "truncated.png: " in result.output
    assert "Traceback" not in result.output


def test_recipe_typo_is_exit_2_with_one_line(tmp_path, photos):
    path = write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\n[optimizer]\niteratons = 5\n')
    result = run("run", path, "-i", photos, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: optimizer.iteratons: unknown key (did you mean 'iterations'?); "
        "allowed: batch_size, history, iterations, layout, line_search, lr, min_size, name, parametrization, "
        "precision, scale_iterations, scale_step, scales, tile_size, tolerance, upsample_detail"
    ]
    assert not (tmp_path / "out").exists(), "nothing is done before the recipe is valid"


def test_missing_style_file_is_exit_2(tmp_path, photos):
    path = write_recipe(tmp_path / "r.toml", '[task]\nname = "style"\nstyle = "monet.jpg"\n')
    result = run("run", path, "-i", photos, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: task.style: file not found: {tmp_path / 'monet.jpg'}"


def test_unreadable_style_image_is_exit_2(tmp_path, photos):
    (tmp_path / "monet.jpg").write_bytes(b"garbage")
    path = write_recipe(tmp_path / "r.toml", '[task]\nname = "style"\nstyle = "monet.jpg"\n'
                        + SHALLOW.format(iterations=1, size=16))
    result = run("run", path, "-i", photos, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.strip().endswith("monet.jpg: not an image, or a format Pillow cannot read")
    assert "Error: task.style:" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "no/such/folder"], "Error: --input: no such file or folder: no/such/folder"),
        (["-i", "skimage:kitten"], "Error: --input: unknown sample image 'kitten'"),
        (["--devices", "tpu"], "Error: --devices tpu: not a device"),
        (["--gpus", "0", "--devices", "cpu"], "Error: --gpus and --devices: give one or the other"),
        (["--shard", "4/3"], "Error: --shard 4/3: K must be between 1 and N"),
        (["--shard", "x"], "Error: --shard x: expected K/N"),
    ],
)
def test_usage_errors_are_exit_2(tmp_path, args, message):
    path = recipe(tmp_path, '[task]\nname = "reconstruct"\n')
    result = run("run", path, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_gpu_that_is_not_there_is_exit_2(tmp_path, photos):
    path = recipe(tmp_path, '[task]\nname = "reconstruct"\n')
    result = run("run", path, "-i", photos, "--devices", "cuda:1")
    assert result.exit_code == 2
    assert result.output.startswith("Error: --devices cuda:1: CUDA is not available on this machine")
    result = run("run", path, "-i", photos, "--gpus", "0,1")
    assert result.exit_code == 2
    assert result.output.startswith("Error: --gpus cuda:0: CUDA is not available on this machine")


def test_empty_input_folder_is_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("run", recipe(tmp_path, '[task]\nname = "reconstruct"\n'), "-i", tmp_path / "empty")
    assert result.exit_code == 2 and "no images or clips found" in result.output


def test_inputs_differing_only_in_extension_keep_it_in_the_name(tmp_path):
    write_sample(tmp_path / "in" / "a.jpg", "coffee", 24)
    write_sample(tmp_path / "in" / "a.png", "chelsea", 24)
    out = tmp_path / "out"
    result = run("run", recipe(tmp_path, '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n', 2, 16),
                 "-i", tmp_path / "in", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["a.jpg.png", "a.png.png"]


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path, photos):
    path = recipe(tmp_path, '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n', 2, 16)
    for args in ((), ("--force",)):
        result = run("run", path, "-i", photos, "-o", photos / "out", *args)
        assert result.exit_code == 0 and "2 done, 0 failed in" in result.output


def test_plain_log_lines_when_not_a_terminal(tmp_path, photos):
    result = run("run", recipe(tmp_path, '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n', 2, 16),
                 "-i", photos, "-o", tmp_path / "out")
    lines = result.output.strip().splitlines()
    assert all(line[:4].isdigit() and line[10] == " " for line in lines[:-1]), lines  # timestamped
    assert any("cat.jpg -> " in line for line in lines)
    quiet = run("run", recipe(tmp_path, '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n', 2, 16),
                "-i", photos, "-o", tmp_path / "out2", "-q")
    assert quiet.output.strip().splitlines()[0].startswith("2 done, 0 failed")


def test_internal_errors_show_a_traceback_only_with_verbose(tmp_path, photos, monkeypatch):
    import rvgen.batch.worker as worker

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(worker, "Pipeline", boom)
    path = recipe(tmp_path, '[task]\nname = "reconstruct"\n')
    quiet = run("run", path, "-i", photos, "-o", tmp_path / "out", "--workers", "1")  # in this process
    assert quiet.exit_code == 1, quiet.output
    assert "worker cpu did not start: RuntimeError: kaboom" in quiet.output
    assert "0 done, 0 failed, 2 not started" in quiet.output
    assert "Traceback" not in quiet.output
    loud = run("-v", "run", path, "-i", photos, "-o", tmp_path / "out", "--workers", "1")
    assert "Traceback" in loud.output


def test_rich_display_on_a_terminal_shows_batch_and_image_progress(tmp_path, photos):
    import io

    from rich.console import Console

    from rvgen.batch.jobs import plan_jobs
    from rvgen.batch.reporters import RichReporter
    from rvgen.batch.runner import run_jobs
    from rvgen.batch.summary import RunInfo, WorkerSpec
    from rvgen.recipe import load_recipe

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    parsed = load_recipe(recipe(tmp_path, '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n', 3, 16))
    plan = plan_jobs(str(photos), tmp_path / "out")
    info = RunInfo(plan.jobs, 0, plan.ignored, [WorkerSpec("cpu", "cpu")], "out")
    summary = run_jobs(parsed, info, RichReporter(console))
    text = buffer.getvalue()
    assert summary.exit_code == 0 and len(summary.done) == 2
    assert "batch" in text and "2/2" in text, text  # the batch bar, done / total
    assert "done cat.jpg -> " in text and "loss " in text  # each image as it finishes
    assert "2 done, 0 failed" in text


def test_interrupting_a_batch_keeps_finished_outputs_and_exits_130(tmp_path, photos, monkeypatch):
    from rvgen.engine.synth import Synthesizer

    original, calls = Synthesizer.run, []

    def run_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "run", run_then_interrupt)
    out = tmp_path / "out"
    result = run("run", recipe(tmp_path, '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n', 2, 16),
                 "-i", photos, "-o", out, "--workers", "1")  # one worker, in this process
    assert result.exit_code == 130
    assert "interrupted (SIGINT): 1 done, 0 failed, 1 abandoned in" in result.output
    assert "abandoned: trip/coffee.png" in result.output
    assert (out / "cat.png").is_file() and (out / "cat.png.json").is_file()
    assert not (out / "trip").exists() and not list(out.rglob("*.tmp"))
