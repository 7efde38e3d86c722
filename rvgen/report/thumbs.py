"""Thumbnails for the page, made once and kept in ``OUTPUT/.rvgen-thumbs/``.

A thumbnail's name is a hash of its image's path, size and modification time (a sample
image's name for ``skimage:NAME``), so an image made again gets a new one and a page
rewritten while a run goes only makes those of the new images. :meth:`Thumbnails.prune`
removes the ones no page uses any more.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rvgen import imageio
from rvgen.errors import ImageError

THUMBS_NAME = ".rvgen-thumbs"
THUMB_SIZE = 256  # long side in pixels: sharp at the page's 160 CSS px on a high-density screen


class Thumbnails:
    def __init__(self, folder: Path, size: int = THUMB_SIZE):
        self.folder = folder / THUMBS_NAME
        self.size = size
        self.used: set[Path] = set()

    def _key(self, source: str) -> str | None:
        if imageio.is_sample(source):
            ident = source
        else:
            try:
                st = os.stat(source)
            except OSError:
                return None
            ident = f"{Path(source).resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return hashlib.sha256(f"{ident}|{self.size}".encode()).hexdigest()[:20]

    def of(self, source: str) -> Path | None:
        """The thumbnail of an image file or sample (made now if it is not there yet);
        ``None`` when the image cannot be read."""
        key = self._key(source)
        if key is None:
            return None
        path = self.folder / f"{key}.jpg"
        if not path.is_file():
            try:
                image = imageio.to_pil(imageio.load_image(source, self.size))
            except (ImageError, OSError):
                return None
            imageio._atomic_write(path, lambda f: image.save(f, format="JPEG", quality=85, optimize=True))
        self.used.add(path)
        return path

    def prune(self) -> int:
        """Delete the thumbnails not asked for since this object was made."""
        count = 0
        if self.folder.is_dir():
            for path in self.folder.glob("*.jpg"):
                if path not in self.used:
                    path.unlink(missing_ok=True)
                    count += 1
        return count
