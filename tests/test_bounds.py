"""Limits and the environment: every recipe limit has a bound checked before any work, bad
paths and odd values are one error line with exit 2, a log that cannot be written never
stops a run, and an image too small for the network fails alone, naming the minimum."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_recipe, write_sample
from PIL import Image

import rvgen.batch.reporters as reporters
from rvgen.batch.worker import failure
from rvgen.cli import cli
from rvgen.pipeline import Pipeline
from rvgen.recipe import parse_recipe

RECONSTRUCT = '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n[optimizer]\niterations = 2\n[output]\nsize = 32\n'
TEXTURE = '[task]\nname = "texture"\n[optimizer]\niterations = 2\n[output]\nsize = 32\n'
STYLE = '[task]\nname = "style"\nstyle = "skimage:coffee"\n[optimizer]\niterations = 2\n[output]\nsize = 32\n'


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result) -> str:
    """The output of a command that failed before any work: exactly one line, an error."""
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "internal error" not in lines[0], lines[0]
    return lines[0]


# -- defect 9: a bound on every limit, checked at recipe parse, named in the error ----------------

@pytest.mark.parametrize("recipe, setting, message", [
    (RECONSTRUCT, "output.size=100000", "output.size: must be at most 8192, got 100000"),
    (TEXTURE, "task.size=9223372036854775807", "task.size: each side must be from 8 to 8192 pixels"),
    (TEXTURE, "task.size=[64, 100000]", "task.size: each side must be from 8 to 8192 pixels, got 100000"),
    (TEXTURE, "task.variations=1000000000", "task.variations: must be at most 1000, got 1000000000"),
    (STYLE, "task.style_size=1000000000000000000", "task.style_size: must be at most 8192"),
    (STYLE, "task.style_scale=1e300", "task.style_scale: must be at most 16"),
    (RECONSTRUCT, "task.tv_weight=nan", "task.tv_weight: must be a finite number, got nan"),
    (RECONSTRUCT, "task.tv_weight=inf", "task.tv_weight: must be a finite number, got inf"),
    (STYLE, "task.style_weight=-inf", "task.style_weight: must be a finite number"),
    (STYLE, "task.style_weights=[inf]", "task.style_weights: expected finite numbers >= 0"),
    (TEXTURE, 'task.weighting={relu1_1=nan}', "task.weighting.relu1_1: expected a finite weight >= 0"),
    (RECONSTRUCT, "optimizer.iterations=1000000000", "optimizer.iterations: must be at most 100000"),
    (RECONSTRUCT, "optimizer.lr=nan", "optimizer.lr: must be a finite number"),
    (RECONSTRUCT, "optimizer.history=100000", "optimizer.history: must be at most 1000"),
    (RECONSTRUCT, "optimizer.batch_size=100000000", "optimizer.batch_size: must be at most 1024"),
    (RECONSTRUCT, "optimizer.scales=1000000", "optimizer.scales: must be at most 16"),
    (RECONSTRUCT, "output.quality=1000", "output.quality: must be at most 100"),
    (RECONSTRUCT, "backbone.std=inf", "backbone.std: must be a finite number"),
    (RECONSTRUCT, "backbone.stacked_candidates=100000", "backbone.stacked_candidates: must be at most 64"),
])
def test_every_recipe_limit_is_bounded_before_any_work(tmp_path, recipe, setting, message):
    path = write_recipe(tmp_path / "r.toml", recipe)
    result = run("run", path, "-i", "skimage:coffee", "-o", tmp_path / "out", "--dry-run", "--set", setting)
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result)


def test_a_style_scale_that_makes_the_style_image_too_large_is_a_recipe_error(tmp_path):
    path = write_recipe(tmp_path / "r.toml", STYLE)
    result = run("run", path, "-i", "skimage:coffee", "-o", tmp_path / "out", "--dry-run",
                 "--set", "output.size=4096", "--set", "task.style_scale=4")
    assert result.exit_code == 2, result.output
    assert "task.style: the image would be 16384 px on its long side, more than 8192" in one_error_line(result)


def test_the_largest_sizes_are_still_allowed(tmp_path):
    """Large-picture work needs 8192 px: the bound is not below it."""
    path = write_recipe(tmp_path / "r.toml", TEXTURE)
    result = run("run", path, "-i", "skimage:coffee", "-o", tmp_path / "out", "--dry-run",
                 "--set", "output.size=8192", "--set", "task.size=[8192, 8192]", "--set", "task.variations=1000")
    assert result.exit_code == 0, result.output
    assert "to make:      1000" in result.output


# -- defect 8: environment and recipe errors are one line, exit 2, before any work ----------------

def _deep_recipe(path: Path) -> Path:
    return write_recipe(path, RECONSTRUCT + "[task.x]\ny = " + "[" * 500 + "]" * 500 + "\n")


@pytest.mark.parametrize("case, message", [
    ("output under a file", "--output {tmp}/afile/out: {tmp}/afile is a file, not a folder"),
    ("log under a file", "--log-file {tmp}/afile/run.log: {tmp}/afile is a file, not a folder"),
    ("task.name array", "task.name: expected a name (a string), got array ['reconstruct']"),
    ("task.name table", "task.name: expected a name (a string), got table {'a': 1}"),
    ("style path 5000 characters", "task.style: file not found: "),
    ("style path with NUL", "task.style: a path cannot contain a NUL character: 'a\\x00b'"),
    ("style ~nouser", "task.style: ~rvgen-no-such-user: no such user's home folder"),
    ("TOML 500 levels deep", "nested more than 32 levels deep"),
    ("--set 500 levels deep", "--set task.x: tables and arrays nested more than 32 levels deep"),
    ("key with a line break", "output.a\\nb: unknown key"),
])
def test_environment_and_recipe_errors_are_one_line_and_exit_2(tmp_path, case, message):
    (tmp_path / "afile").write_text("a file, not a folder")
    recipe = write_recipe(tmp_path / "r.toml", STYLE if case.startswith("style") else RECONSTRUCT)
    out = tmp_path / "out"
    args = {
        "output under a file": ["-o", tmp_path / "afile" / "out"],
        "log under a file": ["--log-file", tmp_path / "afile" / "run.log"],
        "task.name array": ["--set", 'task.name=["reconstruct"]'],
        "task.name table": ["--set", "task.name={a=1}"],
        "style path 5000 characters": ["--set", f'task.style="{"a" * 5000}"'],
        "style path with NUL": ["--set", 'task.style="a\\u0000b"'],
        "style ~nouser": ["--set", 'task.style="~rvgen-no-such-user/x.png"'],
        "--set 500 levels deep": ["--set", "task.x=" + "[" * 500 + "]" * 500],
    }.get(case, [])
    if case == "TOML 500 levels deep":
        recipe = _deep_recipe(tmp_path / "deep.toml")
    if case == "key with a line break":
        recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT + '"a\\nb" = 1\n')  # a key of [output]
    result = run("run", recipe, "-i", "skimage:coffee", "-o", out, *args)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert message.replace("{tmp}", str(tmp_path)) in line, line
    assert len(line) < 400, "a long value is cut, not echoed whole"
    assert not out.exists(), "nothing was made"


def test_an_output_folder_that_cannot_be_written_is_exit_2_before_any_work(tmp_path):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out, reason = locked / "out", "is not writable (permission denied)"
    elif Path("/sys").is_dir() and os.statvfs("/sys").f_flag & os.ST_RDONLY:
        out, reason = Path("/sys/rvgen-test-out"), "cannot write in it"
    else:
        pytest.skip("running as root with no read-only file system to write to")
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    result = run("run", recipe, "-i", "skimage:coffee", "-o", out)
    assert result.exit_code == 2, result.output
    assert f"--output {out}: " in one_error_line(result) and reason in result.output


# -- defect 3: a log that cannot be written never stops the run -----------------------------------

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_the_log_file_does_not_stop_the_run(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    write_sample(tmp_path / "in" / "a.png", "coffee", 32)
    write_sample(tmp_path / "in" / "b.png", "chelsea", 32)
    result = run("run", recipe, "-i", tmp_path / "in", "-o", tmp_path / "out", "--log-file", "/dev/full")
    assert result.exit_code == 0, result.output
    assert "2 done, 0 failed" in result.output
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "b.png").is_file()
    said = "log file /dev/full could not be written (No space left on device)"
    lines = result.output.splitlines()
    assert sum(said in line for line in lines) == 2, result.output  # told once when it happened, once in the summary
    assert said in lines[-1], "the summary says so"
    assert "internal error" not in result.output and "Traceback" not in result.output


def test_a_log_line_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """The disk fills up in the middle of the third line: the log keeps two whole lines."""
    real_write, calls, log_fd = os.write, [], []

    def filling_up(fd, data):
        if not log_fd and bytes(data[:9]) == b'{"time": ':
            log_fd.append(fd)
        if fd not in log_fd:  # not the log (the lock's pid)
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 3:  # half the line reaches the disk ...
            return real_write(fd, bytes(data[: len(data) // 2]))
        if len(calls) == 4:  # ... and then it is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(reporters.os, "write", filling_up)  # os itself: the lock's pid goes through it too
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    write_sample(tmp_path / "in" / "a.png", "coffee", 32)
    log = tmp_path / "run.log"
    result = run("run", recipe, "-i", tmp_path / "in", "-o", tmp_path / "out", "--log-file", log)
    assert result.exit_code == 0, result.output
    assert "1 done, 0 failed" in result.output
    text = log.read_text()
    assert text.endswith("\n")
    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert events == ["run_start", "worker_ready"]
    assert len(calls) == 4, "nothing is written after the log failed"
    assert f"log file {log} could not be written (No space left on device); it ends after 2 whole line(s)" \
        in result.output


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_the_log_file_with_two_workers_leaves_no_traceback(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    for name in ("coffee", "chelsea"):
        write_sample(tmp_path / "in" / f"{name}.png", name, 32)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "RVGEN_LOAD_PLUGINS": ""}
    proc = subprocess.run([sys.executable, "-m", "rvgen", "run", str(recipe), "-i", str(tmp_path / "in"),
                           "-o", str(tmp_path / "out"), "--devices", "cpu", "--workers", "2",
                           "--log-file", "/dev/full"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 done, 0 failed" in proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def test_a_log_file_that_cannot_be_opened_is_exit_2(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    (tmp_path / "logs").mkdir()
    result = run("run", recipe, "-i", "skimage:coffee", "-o", tmp_path / "out", "--log-file", tmp_path / "logs" / ("x" * 300))
    assert result.exit_code == 2, result.output
    assert "--log-file" in one_error_line(result)


# -- too-small images, and no raw exception text ---------------------------------------------------

def test_an_image_too_small_for_the_layers_fails_alone_naming_the_minimum(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", TEXTURE)  # relu1_1 .. relu5_1: four poolings
    (tmp_path / "in").mkdir()
    Image.new("RGB", (48, 12), (200, 30, 30)).save(tmp_path / "in" / "sliver.png")
    write_sample(tmp_path / "in" / "photo.png", "coffee", 32)
    result = run("run", recipe, "-i", tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "1 done, 1 failed" in result.output
    assert ("failed: sliver.png: too small: the image is 32x8 px at output.size 32; the layers used need at least "
            "16 px on each side") in result.output
    assert "Calculated output size" not in result.output
    assert (tmp_path / "out" / "photo.png").is_file()


@pytest.mark.parametrize("layers, side", [(["relu1_1"], 1), (["relu2_1"], 2), (["relu3_1"], 4), (["relu5_1"], 16)])
def test_the_minimum_side_follows_the_deepest_layer(layers, side):
    recipe = parse_recipe({"task": {"name": "texture", "layers": layers}, "output": {"size": 32}})
    pipe = Pipeline(recipe)
    assert pipe.min_side == side
    pipe.check_size(torch.zeros(1, 3, side, 32))
    if side > 1:
        with pytest.raises(Exception, match=f"need at least {side} px on each side"):
            pipe.check_size(torch.zeros(1, 3, side - 1, 32))


@pytest.mark.parametrize("exc, reason", [
    (MemoryError(), "out of memory (the computer's RAM) at 64 px; try a smaller output.size or fewer workers"),
    (OverflowError("Python int too large to convert to C long"),
     "a number out of range for the computation; check the recipe's sizes and values"),
    (RuntimeError("shape mismatch\nException raised from check at aten/src/x.cpp:12\nframe #0: c10::Error"),
     "RuntimeError: shape mismatch"),
    (RuntimeError("bad thing Exception raised from check at aten/src/x.cpp:12 (most recent call first):"),
     "RuntimeError: bad thing"),
])
def test_a_failure_is_one_line_without_raw_exception_text(exc, reason):
    said, details = failure(exc, "cpu", 64)
    assert said == reason
    assert details is not None  # the traceback stays for -v
