"""Every format and mode Pillow reads comes in as an image viewer shows it: each test writes a
file with Pillow (or by hand), reads it with rvgen and compares with the viewer's pixels,
worked out independently (exact maths, or Pillow's own decoding where a codec is lossy)."""

import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import psnr, sample, write_recipe
from PIL import Image, ImageCms

from rvgen import imageio
from rvgen.batch.jobs import plan_jobs
from rvgen.cli import cli
from rvgen.errors import ImageError

LOSSLESS = {".webp": {"lossless": True}, ".jp2": {"irreversible": False}, ".j2k": {"irreversible": False}}
LOSSY = {".jpg", ".jpeg", ".jpe", ".jfif", ".avif", ".gif"}  # GIF: 256 colours
TOLERANCE = 1 / 255 + 1e-6


def photo(size: int = 40) -> np.ndarray:
    """A small photo as uint8 (H, W, 3)."""
    return np.asarray(imageio.to_pil(sample("chelsea", size)))


def loaded(path, long_side=None) -> np.ndarray:
    """rvgen's reading of ``path`` as float (H, W, 3)."""
    image = imageio.load_image(path, long_side)
    assert image.dtype == torch.float32 and image.shape[:2] == (1, 3) and image.is_contiguous()
    return image[0].permute(1, 2, 0).numpy().astype(np.float64)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colours (uint8 or [0, 1]) with alpha in [0, 1] composited onto white, in [0, 1]."""
    rgb = rgb / 255.0 if rgb.dtype == np.uint8 else rgb
    alpha = alpha[..., None] if alpha.ndim == rgb.ndim - 1 else alpha
    return rgb * alpha + (1 - alpha)


def grey3(levels: np.ndarray) -> np.ndarray:
    return np.repeat(levels[..., None], 3, axis=-1)


def max_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def one_line_message(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert not re.search(r"\w+(Error|Exception|Warning)\b", msg), f"a Python class name in {msg!r}"
    return msg


# --- every listed extension is found by a folder run and read -------------------------------


@pytest.mark.parametrize("ext", sorted(imageio.IMAGE_EXTENSIONS))
def test_every_listed_extension_is_planned_and_read_as_pillow_decodes_it(tmp_path, ext):
    arr = photo(32)
    path = tmp_path / f"a{ext}"
    Image.fromarray(arr).save(path, **LOSSLESS.get(ext, {}))
    assert imageio.is_image_file(path)
    assert [j.rel for j in plan_jobs(str(tmp_path), tmp_path / "out").jobs] == [f"a{ext}"]
    got = loaded(path)
    with Image.open(path) as im:
        assert max_error(got, np.asarray(im.convert("RGB")) / 255) <= TOLERANCE
    if ext not in LOSSY:
        assert max_error(got, arr / 255) <= TOLERANCE


def test_the_list_covers_the_common_formats_and_nothing_unreadable(tmp_path):
    for ext in [".jpg", ".jpeg", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".tga", ".ppm"]:
        assert imageio.is_image_file(tmp_path / f"x{ext.upper()}"), ext
    for name in ["x.txt", "x.psd", "x.heic", "x.svg", "x.pdf", "x"]:
        assert not imageio.is_image_file(tmp_path / name), name
    assert imageio.FORMAT_NAMES.startswith("jpg, png, webp, bmp, tif, gif")


# --- defect 5: float images -------------------------------------------------------------------


RAMP = np.linspace(0, 1, 32, dtype=np.float32).reshape(4, 8)


@pytest.mark.parametrize("values, expected", [
    (RAMP, RAMP),  # 0..1: as they are
    (RAMP * 255, RAMP),  # 0..255 floats: the range fits into 0..1
    (RAMP * 2, RAMP),  # HDR highlights up to 2: scaled, not clipped
    (RAMP * 2 - 1, RAMP),  # -1..1
    (RAMP * 0.5 + 0.25, RAMP * 0.5 + 0.25),  # inside 0..1: as they are, not stretched
    (np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32), np.array([[0, 1, 0, 0.5]], np.float32)),
], ids=["0..1", "0..255", "0..2", "-1..1", "0.25..0.75", "nan-inf"])
def test_a_float_tiff_is_read_by_its_value_range(tmp_path, values, expected):
    Image.fromarray(values).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F"
    assert max_error(loaded(tmp_path / "f.tif"), grey3(expected)) <= 1e-6


# --- defect 6: 16-bit greys -------------------------------------------------------------------


LEVELS16 = np.array([[0, 1, 1000, 1001], [32768, 64700, 65534, 65535]], np.uint16)


def write_pgm16(path, levels):
    h, w = levels.shape
    path.write_bytes(f"P5\n{w} {h}\n65535\n".encode() + levels.astype(">u2").tobytes())


@pytest.mark.parametrize("name", ["g.png", "g.tif", "g.pgm"])
def test_16_bit_greys_map_0_to_65535_exactly(tmp_path, name):
    path = tmp_path / name
    write_pgm16(path, LEVELS16) if name.endswith(".pgm") else Image.fromarray(LEVELS16).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    got = loaded(path)
    assert max_error(got, grey3(LEVELS16 / 65535)) <= 1e-6
    assert got[0, 3, 0] - got[0, 2, 0] == pytest.approx(1 / 65535, rel=1e-3), "no 8-bit step in between"


def test_16_bit_precision_survives_resizing(tmp_path):
    ramp = np.tile(30000 + np.arange(256, dtype=np.uint16), (64, 1))  # 256 levels within one 8-bit step
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = loaded(tmp_path / "ramp.png", 128)
    assert got.shape == (32, 128, 3)
    assert len(np.unique(got[16, :, 0])) > 100
    assert max_error(got, grey3(np.tile(30000 + np.arange(1, 256, 2) + 0.5, (32, 1)) / 65535)) <= 2e-5


def write_png16_rgb(path, rgb16: np.ndarray) -> None:
    """A 16-bit RGB PNG, which Pillow cannot write."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_16_bit_rgb_png_is_within_one_8_bit_step(tmp_path):
    rgb16 = np.random.default_rng(0).integers(0, 65536, (6, 10, 3), dtype=np.uint16)
    rgb16[0, 0] = (0, 32768, 65535)
    write_png16_rgb(tmp_path / "c.png", rgb16)
    assert max_error(loaded(tmp_path / "c.png"), rgb16 / 65535) <= TOLERANCE


# --- defect 7: animations ---------------------------------------------------------------------


FRAMES = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def frames(size=(12, 8)):
    return [Image.new("RGB", size, c) for c in FRAMES]


@pytest.mark.parametrize("name, options, first", [
    ("a.gif", {}, 0),
    ("a.webp", {"lossless": True}, 0),
    ("a.png", {}, 0),
    ("a.apng", {}, 0),
    # an APNG whose still image is not part of the animation: players show the animation's first frame
    ("still.png", {"default_image": True}, 1),
])
def test_an_animation_is_read_at_the_frame_a_viewer_shows_first(tmp_path, name, options, first):
    head, *rest = frames()
    head.save(tmp_path / name, save_all=True, append_images=rest, duration=100, **options)
    with Image.open(tmp_path / name) as im:
        assert im.n_frames == 3
    assert [j.rel for j in plan_jobs(str(tmp_path), tmp_path / "out").jobs] == [name]
    got = loaded(tmp_path / name)
    assert got.shape == (8, 12, 3)
    assert max_error(got, np.broadcast_to(np.array(FRAMES[first]) / 255, got.shape)) <= TOLERANCE


def test_a_gif_with_a_transparent_colour_is_composited_and_keeps_its_alpha(tmp_path):
    img = Image.new("P", (6, 4), 1)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.paste(0, (0, 0, 3, 4))
    img.save(tmp_path / "t.gif", transparency=0)
    got = loaded(tmp_path / "t.gif")
    expected = np.zeros((4, 6, 3))
    expected[:, :3] = 1.0
    expected[:, 3:] = np.array([200, 30, 30]) / 255
    assert max_error(got, expected) <= TOLERANCE
    alpha = np.asarray(imageio.load_alpha(tmp_path / "t.gif"))
    assert (alpha[:, :3] == 0).all() and (alpha[:, 3:] == 255).all()


# --- the general rule: modes, transparency, orientation, CMYK --------------------------------


def modes_case(mode: str):
    """(image of ``mode`` to save as PNG, viewer's pixels in [0, 1], alpha in [0, 1])."""
    rng = np.random.default_rng(1)
    rgb = photo(24)
    h, w, _ = rgb.shape
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    a[0, 0], a[0, 1] = 0, 255
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, a])), on_white(rgb, a / 255), a / 255
    if mode == "LA":
        return Image.fromarray(np.dstack([grey, a])), on_white(grey3(grey / 255), a / 255), a / 255
    if mode in ("L", "L+tRNS"):
        level = int(grey[0, 0])
        alpha = (grey != level) * 1.0 if mode == "L+tRNS" else np.ones_like(grey, float)
        return Image.fromarray(grey), on_white(grey3(grey / 255), alpha), alpha
    if mode == "RGB+tRNS":
        alpha = (rgb != rgb[0, 0]).any(-1) * 1.0
        return Image.fromarray(rgb), on_white(rgb, alpha), alpha
    if mode == "1":
        bits = grey > 128
        return Image.fromarray(bits), grey3(bits * 1.0), np.ones_like(bits, float)
    if mode in ("P", "P+tRNS", "P+alpha"):
        img = Image.fromarray(rgb).quantize(16)
        palette = np.array(img.getpalette()[:48]).reshape(16, 3)
        index = np.asarray(img)
        alpha = np.ones(16)
        if mode == "P+tRNS":
            alpha[index[0, 0]] = 0
        elif mode == "P+alpha":
            alpha = np.linspace(0, 1, 16).round(4)
            alpha = np.round(alpha * 255) / 255
        if mode != "P":
            img.info["transparency"] = bytes(np.round(alpha * 255).astype(np.uint8))
        return img, on_white(palette[index] / 255, alpha[index]), alpha[index]
    if mode == "I;16+tRNS":
        levels = (grey.astype(np.uint16) * 257 + 3).astype(np.uint16)
        alpha = (levels != levels[0, 0]) * 1.0
        return Image.fromarray(levels), on_white(grey3(levels / 65535), alpha), alpha
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "L+tRNS", "RGB+tRNS", "1", "P", "P+tRNS", "P+alpha", "I;16+tRNS"])
def test_every_mode_is_composited_onto_white_as_a_viewer_shows_it(tmp_path, mode):
    img, expected, alpha = modes_case(mode)
    options = {}
    if mode in ("L+tRNS", "I;16+tRNS"):
        options["transparency"] = int(np.asarray(img)[0, 0])
    elif mode == "RGB+tRNS":
        options["transparency"] = tuple(int(v) for v in np.asarray(img)[0, 0])
    img.save(tmp_path / "m.png", **options)
    assert max_error(loaded(tmp_path / "m.png"), expected) <= TOLERANCE
    back = imageio.load_alpha(tmp_path / "m.png")
    if (alpha == 1).all():
        assert back is None
    else:
        assert max_error(np.asarray(back) / 255, alpha) <= TOLERANCE


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows of pixels stored with EXIF ``orientation`` (1..8)."""
    return {
        1: arr, 2: arr[:, ::-1], 3: arr[::-1, ::-1], 4: arr[::-1],
        5: arr.swapaxes(0, 1), 6: np.rot90(arr, -1), 7: np.rot90(arr, -1)[::-1], 8: np.rot90(arr, 1),
    }[orientation]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_colours_and_alpha_alike(tmp_path, orientation):
    rgb = photo(20)
    a = np.random.default_rng(2).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.dstack([rgb, a])).save(tmp_path / "o.png", exif=exif)
    expected = on_white(orient(rgb, orientation), orient(a, orientation) / 255)
    assert max_error(loaded(tmp_path / "o.png"), expected) <= TOLERANCE
    assert max_error(np.asarray(imageio.load_alpha(tmp_path / "o.png")) / 255, orient(a, orientation) / 255) == 0
    with Image.open(tmp_path / "o.png") as im:  # an opened PIL image given to the API: the same
        got = imageio.from_pil(im)[0].permute(1, 2, 0).numpy()
        assert max_error(got, expected) <= TOLERANCE
        assert imageio.alpha_of(im).size == (expected.shape[1], expected.shape[0])


@pytest.mark.parametrize("name", ["c.tif", "c.jpg"])
def test_cmyk_is_converted_as_a_viewer_without_a_profile_does(tmp_path, name):
    cmyk = np.random.default_rng(3).integers(0, 256, (8, 12, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / name, quality=100)
    with Image.open(tmp_path / name) as im:
        stored = np.asarray(im).astype(np.float64) / 255  # after the JPEG codec
    expected = (1 - stored[..., :3]) * (1 - stored[..., 3:])
    assert max_error(loaded(tmp_path / name), expected) <= TOLERANCE


# --- unreadable files: one clear line --------------------------------------------------------


@pytest.mark.parametrize("name", ["t.png", "t.jpg", "t.gif", "t.tif", "t.webp"])
def test_a_truncated_file_is_a_one_line_error(tmp_path, name):
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        imageio.load_image(tmp_path / name)
    assert re.fullmatch(rf".*{re.escape(name)}: cannot read image \(.+\)", one_line_message(exc))


def test_a_decompression_bomb_is_a_one_line_error_and_a_big_photo_is_read(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "bomb.png")  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # errors over 2000
    with pytest.raises(ImageError) as exc:
        imageio.load_image(tmp_path / "bomb.png")
    assert one_line_message(exc).endswith(
        "bomb.png: too many pixels to read safely (over 2,000 pixels); it may be a decompression bomb")
    assert imageio.load_alpha(tmp_path / "bomb.png") is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # Pillow warns over 3000, errors over 6000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loaded(tmp_path / "bomb.png").shape == (64, 64, 3)
    assert caught == []


# --- reconstructed at relu1_1 through a folder run -------------------------------------------


@pytest.mark.slow
def test_each_format_is_reconstructed_as_the_viewer_shows_it(tmp_path):
    """A folder of a float TIFF, a 16-bit PNG, an animated GIF, a CMYK TIFF, a grey PNG with
    a transparent level and a truncated file, run by ``rvgen run`` at relu1_1: each result is
    the viewer's picture (PSNR >= 30 dB); the truncated file is one line in the summary."""
    rgb = photo(48)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    folder = tmp_path / "in"
    folder.mkdir()
    viewer = {}
    Image.fromarray(grey.astype(np.float32) / 255).save(folder / "float.tif")
    viewer["float"] = grey3(grey)
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "deep.png")
    viewer["deep"] = grey3(grey)
    first = Image.fromarray(rgb).quantize(256)
    first.save(folder / "anim.gif", save_all=True, append_images=[Image.new("P", first.size, 0)], duration=100)
    viewer["anim"] = np.asarray(first.convert("RGB"))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(folder / "cmyk.tif")
    viewer["cmyk"] = np.round((255 - np.asarray(cmyk)[..., :3].astype(float)) * (255 - np.asarray(cmyk)[..., 3:])
                              / 255).astype(np.uint8)
    Image.fromarray(grey).save(folder / "trns.png", transparency=int(grey[0, 0]))
    viewer["trns"] = np.where(grey3(grey) == grey[0, 0], 255, grey3(grey)).astype(np.uint8)
    (folder / "cut.png").write_bytes((folder / "deep.png").read_bytes()[:300])
    recipe = write_recipe(tmp_path / "r.toml", '[task]\nname = "reconstruct"\nlayer = "relu1_1"\n'
                                               '[optimizer]\niterations = 20\n[output]\nsize = 32\n')
    result = CliRunner().invoke(cli, ["run", str(recipe), "-i", str(folder), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1, result.output
    assert re.search(r"failed: cut\.png: \S*cut\.png: cannot read image \(", result.output), result.output
    assert "Traceback" not in result.output and "Error" not in result.output
    for stem, pixels in viewer.items():
        target = imageio.from_pil(Image.fromarray(pixels.astype(np.uint8)), 32)
        out = imageio.load_image(tmp_path / "out" / f"{stem}.png")
        assert out.shape == target.shape
        assert psnr(out, target) >= 30, stem


def linear_light_profile() -> bytes:
    """An ICC profile with sRGB's primaries but linear tone curves (gamma 1.0): Pillow's
    built-in sRGB profile with its three TRC tags pointed at a new ``curv`` tag."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    offset = len(data)
    data += b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0100) + bytes(2)  # one entry: gamma 1.0 (u8.8)
    for i in range(struct.unpack(">I", data[128:132])[0]):
        entry = 132 + 12 * i
        if data[entry:entry + 4] in (b"rTRC", b"gTRC", b"bTRC"):
            data[entry + 4:entry + 12] = struct.pack(">II", offset, 14)
    data[:4] = struct.pack(">I", len(data))
    data[84:100] = bytes(16)  # no profile ID
    return bytes(data)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_an_embedded_icc_profile_is_applied_as_a_colour_managed_viewer_does(tmp_path, mode):
    rgb = photo(24)
    a = np.random.default_rng(5).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    img = Image.fromarray(np.dstack([rgb, a]) if mode == "RGBA" else rgb)
    img.save(tmp_path / "p.png", icc_profile=linear_light_profile())
    alpha = a / 255 if mode == "RGBA" else np.ones(a.shape)
    expected = on_white(srgb_encode(rgb / 255), alpha)
    assert max_error(loaded(tmp_path / "p.png"), expected) <= 1.5 / 255
    if mode == "RGBA":
        assert max_error(np.asarray(imageio.load_alpha(tmp_path / "p.png")) / 255, alpha) == 0
    img.save(tmp_path / "srgb.png", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert max_error(loaded(tmp_path / "srgb.png"), on_white(rgb / 255, alpha)) <= TOLERANCE
    img.save(tmp_path / "junk.png", icc_profile=b"not a profile")  # viewers ignore a broken profile
    assert max_error(loaded(tmp_path / "junk.png"), on_white(rgb / 255, alpha)) <= TOLERANCE
