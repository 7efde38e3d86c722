"""Image input and output: formats, orientation, modes, atomic writes, job planning."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvgen import imageio
from rvgen.batch.jobs import plan_jobs
from rvgen.errors import ImageError


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "JPG"])
def test_every_supported_format_is_found_and_read(tmp_path, ext):
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, :15] = (200, 40, 10)
    Image.fromarray(arr).save(tmp_path / f"a.{ext}")
    plan = plan_jobs(str(tmp_path), tmp_path / "out")
    assert [j.rel for j in plan.jobs] == [f"a.{ext}"]
    image = imageio.load_image(tmp_path / f"a.{ext}")
    assert image.shape == (1, 3, 20, 30) and image.is_contiguous()
    assert float(image[0, 0, 10, 5]) == pytest.approx(200 / 255, abs=0.05)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert imageio.load_image(tmp_path / "rotated.jpg").shape[-2:] == (40, 20)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "I;16", "CMYK"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    img = Image.new("RGBA", (8, 6), (10, 20, 30, 0)).convert(mode) if mode != "I;16" else Image.new("I;16", (8, 6), 300)
    img.save(tmp_path / ("x.tiff" if mode in ("I;16", "CMYK") else "x.png"))
    path = next(tmp_path.glob("x.*"))
    image = imageio.load_image(path)
    assert image.shape == (1, 3, 6, 8)
    if mode in ("RGBA", "LA"):  # fully transparent pixels composite onto white
        assert torch.allclose(image, torch.ones_like(image))


def test_resizing_keeps_the_aspect_ratio():
    image = imageio.load_image("skimage:astronaut", 64)  # 512 x 512
    assert image.shape[-2:] == (64, 64)
    assert imageio.load_image("skimage:rocket", 60).shape[-2:] == (40, 60)  # 427 x 640


def test_unreadable_files_raise_image_errors_naming_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageError, match=r"bad\.png: not an image"):
        imageio.load_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match=r"gone\.png: file not found"):
        imageio.load_image(tmp_path / "gone.png")


def test_saving_is_atomic_and_round_trips(tmp_path, monkeypatch):
    image = torch.rand(1, 3, 12, 16)
    imageio.save_image(image, tmp_path / "deep" / "x.png")
    back = imageio.load_image(tmp_path / "deep" / "x.png")
    assert torch.allclose(back, image, atol=1 / 255)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(ImageError, match="No space left on device"):
        imageio.save_image(image, tmp_path / "y.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"], "no partial file is left"


def test_jobs_keep_relative_paths_and_skip_hidden_files(tmp_path):
    for rel in ["b.png", "sub/a.jpg", ".hidden/c.png", "sub/.d.png", "notes.md"]:
        path = tmp_path / "in" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path) if not rel.endswith(".md") else path.write_text("x")
    plan = plan_jobs(str(tmp_path / "in"), tmp_path / "out", variations=2, fmt="jpg")
    assert [(j.rel, j.output.relative_to(tmp_path / "out").as_posix(), j.variation) for j in plan.jobs] == [
        ("b.png", "b.v0.jpg", 0), ("b.png", "b.v1.jpg", 1),
        ("sub/a.jpg", "sub/a.v0.jpg", 0), ("sub/a.jpg", "sub/a.v1.jpg", 1),
    ]
    assert plan.ignored == ["notes.md (not an image format)"]
    assert plan.jobs[0].sidecar == tmp_path / "out" / "b.v0.jpg.json"
    single = plan_jobs(str(tmp_path / "in" / "b.png"), Path("o"))
    assert [j.rel for j in single.jobs] == ["b.png"]
