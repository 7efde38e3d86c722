"""Reading and writing images and sidecars.

Every image enters rvgen here: files (EXIF orientation applied, any mode converted to RGB,
transparency composited onto white) and ``skimage:NAME`` sample images that scikit-image
ships, so demos run offline. An input's alpha channel is read separately
(:func:`load_alpha`) and put back when its result is written. Every file
rvgen writes leaves here too, through a temporary name and an atomic rename, so a killed run
never leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any, BinaryIO
from xml.sax.saxutils import escape, unescape

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

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


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
               alpha: Image.Image | None = None, metadata: Mapping[str, str] | None = None) -> None:
    """Write atomically: the file is either complete or absent. With ``alpha`` (mode ``L``,
    resized to the image if need be), PNG and WebP are written RGBA; JPEG has no alpha.
    ``metadata`` (name -> text) goes into the file: PNG text chunks (compressed iTXt), an XMP
    packet in JPEG and WebP (:func:`read_metadata` reads either back)."""
    pil = to_pil(image)
    if alpha is not None and fmt != "jpg":
        pil.putalpha(alpha if alpha.size == pil.size else alpha.resize(pil.size, Image.Resampling.LANCZOS))
    options: dict[str, Any] = {"quality": quality} if fmt in ("jpg", "webp") else {}
    if metadata:
        options.update(_metadata_options(fmt, metadata))
    try:
        _atomic_write(path, lambda f: pil.save(f, format=SAVE_FORMATS[fmt], **options))
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({exc.strerror or exc})") from None


XMP_NAMESPACE = "https://github.com/rvgen/rvgen/ns/1.0/"
XMP_LIMIT = 65000  # a JPEG segment holds at most 64 KiB; a larger XMP packet is left out


def _metadata_options(fmt: str, metadata: Mapping[str, str]) -> dict[str, Any]:
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        for name, text in metadata.items():
            info.add_itxt(name, text, zip=True)
        return {"pnginfo": info}
    fields = "".join(f"<rvgen:{name}>{escape(text)}</rvgen:{name}>" for name, text in metadata.items())
    packet = ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
              '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              f'<rdf:Description rdf:about="" xmlns:rvgen="{XMP_NAMESPACE}">{fields}</rdf:Description>'
              '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()
    return {"xmp": packet} if len(packet) <= XMP_LIMIT else {}


def read_metadata(path: Path) -> dict[str, str]:
    """The text :func:`save_image` put into an image (``{}`` when none, or not an image)."""
    try:
        with Image.open(path) as img:
            texts = dict(getattr(img, "text", {}) or {})
            xmp = img.info.get("xmp")
    except (OSError, SyntaxError, ValueError):
        return {}
    if isinstance(xmp, bytes):
        for name, text in re.findall(rb"<rvgen:(\w+)>(.*?)</rvgen:\1>", xmp, re.S):
            texts.setdefault(name.decode(), unescape(text.decode("utf-8", "replace")))
    return {k: v for k, v in texts.items() if isinstance(v, str)}


def write_json(data: Any, path: Path) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode()))
