"""Writing a folder's page: read the folder, make the thumbnails it needs, write
``index.html`` atomically, and remove the thumbnails no longer shown."""

from __future__ import annotations

from pathlib import Path

from rvgen import imageio
from rvgen.report.folder import Folder, read_folder
from rvgen.report.page import LiveStatus, PageWriter
from rvgen.report.thumbs import Thumbnails

PAGE_NAME = "index.html"


def write_report(folder: Path, live: LiveStatus | None = None) -> tuple[Path, Folder]:
    """Write ``folder/index.html`` from the folder's sidecars and record; returns its path
    and what it shows."""
    folder = Path(folder)
    view = read_folder(folder)
    thumbs = Thumbnails(folder)
    html = PageWriter(view, thumbs, folder).page(live)
    path = folder / PAGE_NAME
    imageio._atomic_write(path, lambda f: f.write(html.encode("utf-8")))
    thumbs.prune()
    return path, view
