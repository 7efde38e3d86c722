"""Writing a folder's page: read the folder, make the thumbnails it needs, write
``index.html`` atomically, and remove the thumbnails no longer shown.

The page is ``index.html`` unless the folder holds an ``index.html`` that is not rvgen's
(a user's own page): then it is ``rvgen.html`` (:func:`page_path`), and a user's file by that
name is never replaced either. rvgen's pages say they are its own
(``<meta name="generator" content="rvgen">``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rvgen import imageio
from rvgen.errors import UsageError
from rvgen.report.folder import Folder, read_folder
from rvgen.report.page import GENERATOR, LiveStatus, PageWriter
from rvgen.report.thumbs import Thumbnails

PAGE_NAME = "index.html"
OTHER_PAGE_NAME = "rvgen.html"  # the page's name where the folder's index.html is not rvgen's
# How pages began before they carried GENERATOR: such a page is rvgen's too.
EARLIER_PAGE = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
                'content="width=device-width, initial-scale=1"><title>rvgen: ')


def is_rvgen_page(path: Path) -> bool:
    """Whether ``path`` is absent or a page rvgen wrote (which it may replace)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return GENERATOR in head or head.startswith(EARLIER_PAGE)


def page_path(folder: Path) -> tuple[Path, str | None]:
    """Where ``folder``'s page goes, and a line to say when that is not ``index.html``;
    a :class:`~rvgen.errors.UsageError` when neither name is free of a user's file."""
    index = folder / PAGE_NAME
    if is_rvgen_page(index):
        return index, None
    other = folder / OTHER_PAGE_NAME
    if not is_rvgen_page(other):
        raise UsageError(f"{index} and {other} are not rvgen's pages; rvgen replaces neither, so the folder's "
                         "page is not written")
    return other, f"{index} is not rvgen's page, so the folder's page is {other}"


def save_page(folder: Path, html: str) -> tuple[Path, str | None]:
    """Write ``html`` as ``folder``'s page (:func:`page_path`); returns where, and the note."""
    path, note = page_path(folder)
    imageio._atomic_write(path, lambda f: f.write(html.encode("utf-8")))
    return path, note


def write_report(folder: Path, live: LiveStatus | None = None,
                 skipped: Sequence[str] = ()) -> tuple[Path, Folder, str | None]:
    """Write ``folder``'s page from its sidecars and record; returns its path, what it shows,
    and a line to say when the page is not ``index.html`` (:func:`page_path`). ``skipped``:
    lines about content left out before (a run's record, read when it started)."""
    folder = Path(folder)
    page_path(folder)  # before any thumbnail is made
    view = read_folder(folder)
    view.skipped[:0] = [line for line in skipped if line not in view.skipped]
    thumbs = Thumbnails(folder)
    html = PageWriter(view, thumbs, folder).page(live)
    path, note = save_page(folder, html)
    thumbs.prune()
    return path, view, note
