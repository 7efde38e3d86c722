"""Shared fixtures. External plugins never load in tests: the suite sees only the built-ins
(and plugins a test registers itself), whatever happens to be installed."""

import os

os.environ["RVGEN_LOAD_PLUGINS"] = ""

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rvgen import imageio  # noqa: E402


TINY_RECONSTRUCT = '''
[task]
name = "reconstruct"
layer = "relu1_1"

[optimizer]
iterations = 2

[output]
size = 32
'''
"""A recipe that makes a 32 px result in a fraction of a second: for tests of files and folders."""


def sample(name: str, size: int) -> torch.Tensor:
    """A scikit-image sample photo at ``size`` px long side, (1, 3, H, W) in [0, 1]."""
    return imageio.load_image(f"skimage:{name}", size)


def write_sample(path: Path, name: str, size: int, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.to_pil(sample(name, size)).save(path, format=fmt)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder with two small photos (one in a subfolder) and a file that is not an image."""
    root = tmp_path / "photos"
    write_sample(root / "cat.jpg", "chelsea", 40)
    write_sample(root / "trip" / "coffee.png", "coffee", 40)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def style_image(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "styles" / "style.png", "hubble_deep_field", 48)


def write_recipe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.fixture(autouse=True)
def one_cpu_worker(monkeypatch):
    """``rvgen run`` in this process sees one core, so its default is one worker in this process
    (a worker process per core costs seconds to start in every CLI test); tests of several
    workers ask for them (``--workers``), and the default split itself is tested with explicit
    core counts (``worker_specs(..., cpu_count=N)``)."""
    import rvgen.batch.runner

    monkeypatch.setattr(rvgen.batch.runner, "cores", lambda: 1)
