"""Reading and writing images and sidecars.

Every image enters rvgen here: files (EXIF orientation applied, any mode converted to RGB,
transparency composited onto white) and ``skimage:NAME`` sample images that scikit-image
ships, so demos run offline. An input's alpha channel is read separately
(:func:`load_alpha`) and put back when its result is written. Every file
rvgen writes leaves here too, through a temporary name and an atomic rename, so a killed run
never leaves a half-written output. Temporary names are rvgen's own
(``.rvgen-NAME.XXXXXXXX.tmp``, :func:`is_temporary`), so cleaning up never touches a user's file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from rvgen.errors import ImageError, RecipeError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
SAMPLE_PREFIX = "skimage:"
# scikit-image's bundled images that make sense as photos, styles or textures.
SAMPLES = (
    "astronaut", "brick", "camera", "cat", "chelsea", "coffee", "colorwheel", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
)
SAVE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_sample(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(SAMPLE_PREFIX)


def check_sample(source: str, key: str) -> None:
    name = source[len(SAMPLE_PREFIX):]
    if name not in SAMPLES:
        from rvgen.params import suggest

        raise RecipeError(
            f"{key}: unknown sample image {name!r}{suggest(name, SAMPLES)}; samples: {', '.join(SAMPLES)}"
        )


def _open(source: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    label = name or source
    if isinstance(source, (str, Path)) and is_sample(source):
        from skimage import data

        name = str(source)[len(SAMPLE_PREFIX):]
        return Image.fromarray(np.asarray(getattr(data, name)()))
    try:
        with Image.open(source) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return img
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image, or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageError(f"{label}: cannot read image ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, compositing transparency onto white and scaling 16-bit greys."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / max(arr.max(), 1) * 255
        img = Image.fromarray(arr.astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def has_alpha(img: Image.Image) -> bool:
    """Whether an image (opened, not necessarily loaded) has transparency."""
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def alpha_of(img: Image.Image, size: tuple[int, int] | None = None) -> Image.Image | None:
    """An image's alpha channel (mode ``L``), resized to ``size`` (width, height) if given;
    ``None`` for an opaque image."""
    if not has_alpha(img):
        return None
    alpha = img.convert("RGBA").getchannel("A")
    if size is not None and alpha.size != tuple(size):
        alpha = alpha.resize(tuple(size), Image.Resampling.LANCZOS)
    return alpha


def load_alpha(source: str | Path, size: tuple[int, int] | None = None) -> Image.Image | None:
    """The alpha channel of an input (as :func:`alpha_of`), or ``None`` when it has none or
    cannot be read. Only a file with transparency is decoded; samples have none."""
    if is_sample(source):
        return None
    try:
        with Image.open(source) as img:
            if not has_alpha(img):
                return None
    except (OSError, SyntaxError, ValueError):
        return None
    try:
        return alpha_of(_open(source), size)
    except ImageError:
        return None


def fit_long_side(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is ``long_side``."""
    w, h = size
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def load_image(source: str | Path | BinaryIO, long_side: int | None = None, name: str | None = None) -> torch.Tensor:
    """An image as a float tensor (1, 3, H, W) in [0, 1], resized to ``long_side`` if given.

    ``source`` is a path, ``skimage:NAME`` or an open binary file (then ``name`` labels errors).
    """
    return from_pil(_open(source, name), long_side)


def from_pil(img: Image.Image, long_side: int | None = None) -> torch.Tensor:
    """A PIL image (any mode) as (1, 3, H, W) in [0, 1], resized to ``long_side`` if given."""
    img = to_rgb(img)
    if long_side is not None and max(img.size) != long_side:
        img = img.resize(fit_long_side(img.size, long_side), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> an RGB PIL image."""
    if image.dim() == 4:
        image = image[0]
    arr = (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255.0).round()
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


TEMPORARY_PREFIX = ".rvgen-"
_TEMPORARY = re.compile(re.escape(TEMPORARY_PREFIX) + r".*\.[a-z0-9_]{8}\.tmp", re.DOTALL)


def temporary_prefix(name: str) -> str:
    """The start of the temporary name a file called ``name`` is written under: rvgen's
    prefix and at most 100 bytes of the name (long names must not make the temporary one too
    long); :func:`tempfile.mkstemp` adds 8 random characters and ``.tmp``."""
    return f"{TEMPORARY_PREFIX}{name.encode()[:100].decode(errors='ignore')}."


def is_temporary(name: str) -> bool:
    """Whether a file name is one of rvgen's temporary names (``.rvgen-NAME.XXXXXXXX.tmp``)."""
    return _TEMPORARY.fullmatch(name) is not None


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name), suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # not on Windows
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable across power loss (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_image(image: torch.Tensor, path: Path, fmt: str = "png", quality: int = 95,
               alpha: Image.Image | None = None) -> None:
    """Write atomically: the file is either complete or absent. With ``alpha`` (mode ``L``,
    resized to the image if need be), PNG and WebP are written RGBA; JPEG has no alpha."""
    pil = to_pil(image)
    if alpha is not None and fmt != "jpg":
        pil.putalpha(alpha if alpha.size == pil.size else alpha.resize(pil.size, Image.Resampling.LANCZOS))
    options = {"quality": quality} if fmt in ("jpg", "webp") else {}
    try:
        _atomic_write(path, lambda f: pil.save(f, format=SAVE_FORMATS[fmt], **options))
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_json(data: Any, path: Path) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode()))
