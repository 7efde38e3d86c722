"""GPU-only checks (``pytest -m gpu``): what only a CUDA device can show.

Each test is marked ``gpu`` and skipped where CUDA is not available, so on a CPU machine
they are collected and reported as skipped. ``benchmarks/gpu_check.py`` runs them first;
with ``RVGEN_GPU_ARTIFACTS=DIR`` set, the bf16/fp32 comparison is also written there as a
PNG to look at. Sizes and iterations are kept small: the whole file takes about a minute
on an H100.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import sample, write_sample

from rvgen import imageio
from rvgen.cli import cli
from rvgen.engine import Result, iter_with_fallback
from rvgen.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
STYLE = "skimage:hubble_deep_field"
NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def style_synth(size: int, iterations: int = 3, **optimizer):
    """A style synthesizer on ``cuda`` with its style targets computed (single scale)."""
    recipe = parse_recipe({
        "task": {"name": "style", "style": STYLE},
        "optimizer": {"iterations": iterations, **optimizer},
        "output": {"size": size},
    })
    synth = recipe.build("cuda")
    synth.set_references({name: imageio.load_image(src, side) for name, (src, side) in recipe.references().items()})
    return synth


def square(name: str, size: int) -> torch.Tensor:
    """A sample photo resized to ``size`` x ``size`` (every case has one shape)."""
    image = sample(name, size)
    return torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)


def release() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def results_of(outcomes) -> list[Result]:
    for outcome in outcomes:
        assert isinstance(outcome, Result), f"an image failed: {outcome}"
    return list(outcomes)


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), RVGEN_LOAD_PLUGINS="", PYTHONWARNINGS="ignore")
    e.pop("COLUMNS", None)
    return e


# --- numerics --------------------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_bf16_reaches_the_loss_and_picture_of_fp32():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    content = square("astronaut", 256)
    out = {}
    for precision in ("fp32", "bf16"):
        synth = style_synth(256, iterations=100, precision=precision)
        assert synth.numerics.precision == precision
        (out[precision],) = results_of(synth.run_batch([content]))
        del synth
        release()
    fp32, bf16 = out["fp32"], out["bf16"]
    assert fp32.loss < fp32.initial_loss and bf16.loss < bf16.initial_loss
    assert abs(bf16.loss - fp32.loss) <= 0.05 * fp32.loss, (bf16.loss, fp32.loss)
    difference = float((bf16.image.float().cpu() - fp32.image.float().cpu()).abs().mean())
    folder = os.environ.get("RVGEN_GPU_ARTIFACTS")
    if folder:  # to look at: content, fp32, bf16 side by side
        Path(folder).mkdir(parents=True, exist_ok=True)
        row = torch.cat([content, fp32.image.float().cpu(), bf16.image.float().cpu()], dim=-1)
        imageio.to_pil(row).save(Path(folder) / "bf16_vs_fp32.png")
    assert difference <= 0.05, f"mean absolute pixel difference {difference:.4f}"


@pytest.mark.gpu
@needs_cuda
def test_channels_last_gives_the_loss_of_contiguous():
    content = square("chelsea", 256)
    out = {}
    for layout in ("channels_last", "contiguous"):
        synth = style_synth(256, iterations=20)
        assert synth.objective.channels_last, "on CUDA the backbone runs channels-last"
        if layout == "contiguous":
            synth.objective.channels_last = False
            synth.objective.backbone.to(memory_format=torch.contiguous_format)
        (out[layout],) = results_of(synth.run_batch([content]))
        del synth
        release()
    a, b = out["channels_last"], out["contiguous"]
    assert abs(a.initial_loss - b.initial_loss) <= 1e-2 * b.initial_loss, (a.initial_loss, b.initial_loss)
    assert abs(a.loss - b.loss) <= 0.03 * b.loss, (a.loss, b.loss)


# --- memory ---------------------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("size", [256, 512, 1024])
@pytest.mark.parametrize("batch", [1, 8])
def test_memory_estimate_is_within_20_percent_of_the_real_peak(size, batch):
    release()
    base = torch.cuda.memory_allocated()
    synth = style_synth(size, iterations=2)
    contents = [square(NAMES[i % len(NAMES)], size) for i in range(batch)]
    results_of(synth.run_batch(contents[:1]))  # warm-up: cuDNN's autotuning tries workspaces once per shape
    release()
    torch.cuda.reset_peak_memory_stats()
    results_of(synth.run_batch(contents))
    peak = torch.cuda.max_memory_allocated() - base
    estimate = synth.memory_estimate((size, size)).total(batch)
    del synth
    release()
    assert abs(estimate - peak) <= 0.2 * peak, (
        f"{size} px, batch {batch}: estimate {estimate / 2**30:.3f} GiB, peak {peak / 2**30:.3f} GiB "
        f"({estimate / peak:.2f}x)")


def reserved_peak(synth, contents, tile: int | None = None) -> int:
    """The allocator's peak reserved bytes (what a memory fraction limits) of one batch."""
    release()
    torch.cuda.reset_peak_memory_stats()
    synth.forced_tile = tile
    results_of(synth.run_batch(contents))
    synth.forced_tile = None
    peak = torch.cuda.max_memory_reserved()
    release()
    return peak


def limit_memory(limit: int) -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    release()
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), 0)


@pytest.mark.gpu
@needs_cuda
def test_out_of_memory_halves_the_batch_for_real():
    synth = style_synth(512, iterations=2)
    contents = [square(NAMES[i % len(NAMES)], 512) for i in range(8)]
    two = reserved_peak(synth, contents[:2])  # calibrated here, so the test does not rest on the estimate
    chunks: list[int] = []
    try:
        limit_memory(int(two * 1.2))  # a batch of 2 fits, 8 does not
        outcomes = dict(iter_with_fallback(synth, contents, batch_size=8, on_batch=lambda c: chunks.append(len(c))))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        release()
    assert sorted(outcomes) == list(range(8))
    results_of(outcomes.values())
    assert chunks[0] == 8 and min(chunks) < 8, chunks


@pytest.mark.gpu
@needs_cuda
def test_out_of_memory_tiles_an_image_too_big_alone_and_the_others_finish():
    big, small = 2048, 256
    synth = style_synth(big, iterations=2)
    large = square("astronaut", big)
    whole = reserved_peak(synth, [large])
    tiled = reserved_peak(synth, [large], tile=512)
    assert tiled < 0.9 * whole, f"tiles of 512 px need {tiled / 2**30:.2f} GiB, the whole image {whole / 2**30:.2f}"
    contents = [square("chelsea", small), large, square("coffee", small)]
    tiles: list[tuple[int, int | None]] = []

    def on_batch(chunk):
        tiles.append((len(chunk), synth.forced_tile))

    try:
        limit_memory(int(min(tiled * 1.15, (tiled + whole) / 2)))  # tiles of 512 fit, the whole image does not
        outcomes = dict(iter_with_fallback(synth, contents, on_batch=on_batch))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        release()
    assert sorted(outcomes) == [0, 1, 2]
    results = results_of(outcomes.values())
    assert all(torch.isfinite(r.image).all() for r in results)
    assert tuple(outcomes[1].image.shape[-2:]) == (big, big)
    assert tuple(outcomes[0].image.shape[-2:]) == tuple(outcomes[2].image.shape[-2:]) == (small, small)
    assert synth.forced_tile is not None and synth.forced_tile < big, tiles  # the big image ran in tiles
    assert tiles[-1] == (1, synth.forced_tile), tiles


# --- the command line on a GPU ---------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_two_workers_on_one_gpu_both_make_images(tmp_path):
    inputs, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "log.jsonl"
    for i in range(12):
        write_sample(inputs / f"{i:02d}.png", NAMES[i % len(NAMES)], 128)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[task]\nname = "style"\nstyle = "{STYLE}"\n\n[optimizer]\niterations = 60\nbatch_size = 1\n\n'
                      '[output]\nsize = 128\n')
    proc = subprocess.run([sys.executable, "-m", "rvgen", "run", str(recipe), "-i", str(inputs), "-o", str(out),
                           "--gpus", "0", "--workers", "2", "--log-file", str(log)],
                          env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, proc.stdout
    events = [json.loads(line) for line in log.read_text().splitlines()]
    done = [e for e in events if e["event"] == "image_done"]
    assert sorted(e["input"] for e in done) == [f"{i:02d}.png" for i in range(12)]  # each image once
    assert {e["worker"] for e in done} == {"cuda:0#1", "cuda:0#2"}, [e["worker"] for e in done]
    sidecars = [json.loads(p.read_text()) for p in out.glob("*.png.json")]
    assert len(sidecars) == 12 and {s["device"] for s in sidecars} == {"cuda:0"}


@pytest.mark.gpu
@needs_cuda
def test_the_readme_job_on_a_gpu(tmp_path):
    out = tmp_path / "styled"
    result = CliRunner().invoke(cli, ["run", str(ROOT / "recipes" / "starry_night.toml"), "--gpus", "0",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    images = sorted(p.name for p in out.glob("*.png"))
    assert images == ["astronaut.png", "chelsea.png", "coffee.png"], images
    sidecars = [json.loads(p.read_text()) for p in out.glob("*.png.json")]
    assert {s["device"] for s in sidecars} == {"cuda:0"}
