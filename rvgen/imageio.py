"""Reading and writing images and sidecars.

Every image enters rvgen here, read as a colour-managed image viewer shows it: files (EXIF
orientation applied, the first frame of an animation, an embedded ICC profile converted to
sRGB, any mode converted to RGB, transparency composited onto white, 16-bit and float images
at full precision) and ``skimage:NAME`` sample images that scikit-image ships, so demos run
offline. An input's alpha channel is read separately
(:func:`load_alpha`) and put back when its result is written. Every file
rvgen writes leaves here too, through a temporary name and an atomic rename, so a killed run
never leaves a half-written output. Temporary names are rvgen's own
(``.rvgen-NAME.XXXXXXXX.tmp``, :func:`is_temporary`), so cleaning up never touches a user's file.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from xml.sax.saxutils import escape, unescape

import numpy as np
import torch
from PIL import ExifTags, Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError, features

from rvgen.errors import ImageError, RecipeError, RvgenError

# The formats a folder run picks up, by extension: those photos and pictures are kept in,
# each only where this Pillow has its decoder (WebP, JPEG 2000 and AVIF need optional
# libraries). :func:`load_image` itself reads any file Pillow can.
_FORMATS = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png", ".apng"),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
    "TGA": (".tga",),
    "PPM": (".ppm", ".pgm", ".pbm", ".pnm"),
    "JPEG2000": (".jp2", ".j2k"),
    "AVIF": (".avif",),
}
_DECODERS = {"JPEG": "jpg", "PNG": "zlib", "WEBP": "webp", "JPEG2000": "jpg_2000", "AVIF": "avif"}


def _readable_extensions() -> frozenset[str]:
    Image.init()
    registered = Image.registered_extensions()
    return frozenset(
        ext for fmt, exts in _FORMATS.items()
        if fmt in Image.OPEN and (fmt not in _DECODERS or features.check(_DECODERS[fmt]))
        for ext in exts if registered.get(ext) == fmt
    )


IMAGE_EXTENSIONS = _readable_extensions()
# The formats by their usual extension, for messages: "jpg, png, webp, ...".
FORMAT_NAMES = ", ".join(exts[0][1:] for exts in _FORMATS.values() if exts[0] in IMAGE_EXTENSIONS)
SAMPLE_PREFIX = "skimage:"
# scikit-image's bundled images that make sense as photos, styles or textures.
SAMPLES = (
    "astronaut", "brick", "camera", "cat", "chelsea", "coffee", "colorwheel", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
)
SAVE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
# Modes with more than 8 bits a level (16-bit and 32-bit integer, 32-bit float greys): read
# at full precision rather than through Pillow's 8-bit conversion, which clips them.
DEEP_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_sample(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(SAMPLE_PREFIX)


def check_sample(source: str, key: str, error: type[RvgenError] = RecipeError) -> None:
    """Raise ``error`` (one line, led by ``key``) unless ``source`` names one of :data:`SAMPLES`."""
    name = source[len(SAMPLE_PREFIX):]
    if name not in SAMPLES:
        from rvgen.params import suggest

        raise error(f"{key}: unknown sample image {name!r}{suggest(name, SAMPLES)}; samples: {', '.join(SAMPLES)}")


@contextmanager
def _reading(label: object) -> Iterator[None]:
    """Pillow's failures to open or decode ``label`` as one-line rvgen errors (:class:`ImageError`)."""
    try:
        with warnings.catch_warnings():
            # Over Pillow's warning size but under its hard limit: a big photo (cameras make
            # 100 MP), read like any other.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError:
        limit = f" (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels)" if Image.MAX_IMAGE_PIXELS else ""
        raise ImageError(f"{label}: too many pixels to read safely{limit}; it may be a decompression bomb") from None
    except MemoryError:
        raise ImageError(f"{label}: not enough memory to decode it") from None
    except Exception as exc:  # truncated or corrupt data: decoders raise all sorts
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip()
        reason = reason.splitlines()[0] if reason else "corrupt or truncated data"
        raise ImageError(f"{label}: cannot read image ({reason})") from None


def _open(source: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    label = name or source
    if isinstance(source, (str, Path)) and is_sample(source):
        from skimage import data

        check_sample(str(source), str(label), ImageError)
        name = str(source)[len(SAMPLE_PREFIX):]
        return Image.fromarray(np.asarray(getattr(data, name)()))
    with _reading(label), Image.open(source) as img:
        _first_frame(img)
        img.load()
        return _upright(img)


def _first_frame(img: Image.Image) -> None:
    """Seek to the frame a viewer shows first. That is frame 0 (of a GIF, WebP, multi-page
    TIFF), except in an animated PNG whose still image is not part of the animation: players
    start at the first animation frame, Pillow's frame 1."""
    if getattr(img, "is_animated", False) and img.info.get("default_image"):
        img.seek(1)


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (itself when there is nothing to turn)."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) in (0, 1):
        return img
    return ImageOps.exif_transpose(img)


def _deep_levels(img: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image (:data:`DEEP_MODES`) as float32 levels
    in [0, 1], at full precision, transparent levels made white.

    Integers are 16-bit: 0..65535 is 0..1 exactly. Floats are 0..1 as they are (the
    convention of float TIFFs). Data outside that range (negative, over 1 for floats or over
    65535 for integers: HDR highlights, 0..255 floats, measurements) is scaled into it
    without clipping: the range from min(0, lowest) to max(1, highest) becomes 0..1, so
    black stays 0 when nothing is negative. NaN is black, infinities the ends of the range.
    """
    raw = np.asarray(img)
    levels = raw.astype(np.float64) / (1.0 if img.mode == "F" else 65535.0)
    finite = levels[np.isfinite(levels)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    levels = (np.nan_to_num(levels, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    transparent = img.info.get("transparency")
    if isinstance(transparent, int):  # a greyscale PNG's tRNS level
        levels[raw == transparent] = 1.0
    return levels.astype(np.float32)


def _rgba(img: Image.Image) -> Image.Image:
    return (img.convert("LA") if img.mode == "La" else img).convert("RGBA")


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _colour_managed(img: Image.Image) -> Image.Image:
    """An RGB, RGBA or CMYK image with an embedded ICC profile (Display P3 and Adobe RGB
    photos, print CMYK) in sRGB through that profile, as a colour-managed viewer shows it;
    ``img`` itself without a profile, or with one that does not fit (viewers ignore those).
    Without a profile, CMYK is converted as viewers do: (1 - C)(1 - K) and so on."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        colours = img.convert("RGB") if img.mode == "RGBA" else img
        rgb = ImageCms.profileToProfile(colours, profile, _SRGB, renderingIntent=profile.profile.rendering_intent,
                                        outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img
    if img.mode == "RGBA":
        rgb.putalpha(img.getchannel("A"))
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows it: an embedded ICC profile applied, transparency
    composited onto white, 16-bit and float greys scaled as :func:`_deep_levels` says,
    CMYK and palettes converted by Pillow."""
    if img.mode in DEEP_MODES:
        return Image.fromarray(np.round(_deep_levels(img) * 255).astype(np.uint8)).convert("RGB")
    img = _colour_managed(_rgba(img) if has_alpha(img) else img)  # a transparent colour is in the file's colours
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    return img.convert("RGB")


def has_alpha(img: Image.Image) -> bool:
    """Whether an image (opened, not necessarily loaded) has transparency: an alpha channel,
    or a transparent palette entry, grey level or colour."""
    return img.mode in ALPHA_MODES or img.info.get("transparency") is not None


def alpha_of(img: Image.Image, size: tuple[int, int] | None = None) -> Image.Image | None:
    """An image's alpha channel (mode ``L``, turned by its EXIF orientation like its
    colours), resized to ``size`` (width, height) if given; ``None`` for an opaque image."""
    if not has_alpha(img):
        return None
    img = _upright(img)
    if img.mode in DEEP_MODES:
        opaque = np.asarray(img) != img.info["transparency"]
        alpha = Image.fromarray(opaque.astype(np.uint8) * 255)
    else:
        alpha = _rgba(img).getchannel("A")
    if size is not None and alpha.size != tuple(size):
        alpha = alpha.resize(tuple(size), Image.Resampling.LANCZOS)
    return alpha


def load_alpha(source: str | Path, size: tuple[int, int] | None = None) -> Image.Image | None:
    """The alpha channel of an input (as :func:`alpha_of`), or ``None`` when it has none or
    cannot be read. Only a file with transparency is decoded; samples have none."""
    if is_sample(source):
        return None
    try:
        with _reading(source), Image.open(source) as img:
            _first_frame(img)
            if not has_alpha(img):
                return None
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
    """A PIL image (any mode) as (1, 3, H, W) in [0, 1] as a viewer shows it (see
    :func:`to_rgb`; 16-bit and float greys keep their precision), resized to ``long_side``."""
    img = _upright(img)
    if img.mode in DEEP_MODES:
        grey = Image.fromarray(_deep_levels(img))
        if long_side is not None and max(grey.size) != long_side:
            grey = grey.resize(fit_long_side(grey.size, long_side), Image.Resampling.LANCZOS)
        levels = torch.from_numpy(np.asarray(grey, dtype=np.float32).clip(0, 1))
        return levels.expand(1, 3, *levels.shape).contiguous()
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
