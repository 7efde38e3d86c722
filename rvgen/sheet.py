"""Contact sheets: a labelled grid of images, one row per input, one column per setting."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from rvgen import imageio

LINE = 12  # pixel height of one text line in PIL's built-in font
PAD = 4


def _fit(image: torch.Tensor, cell: int) -> Image.Image:
    pil = imageio.to_pil(image)
    pil.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    return pil


def _text_lines(text: str, width_px: int) -> list[str]:
    chars = max(4, width_px // 6)
    lines: list[str] = []
    for part in text.split("\n"):
        lines += textwrap.wrap(part, chars) or [""]
    return lines


def contact_sheet(
    rows: Sequence[str],
    columns: Sequence[str],
    images: Sequence[Sequence[torch.Tensor | None]],
    captions: Sequence[Sequence[str]] | None = None,
    cell: int = 128,
) -> Image.Image:
    """A grid: ``images[r][c]`` at row ``rows[r]`` and column ``columns[c]``, each fitted into a
    ``cell`` x ``cell`` square, with the column labels on top, the row labels on the left and
    an optional caption under each image (a missing image leaves its cell blank)."""
    font = ImageFont.load_default()
    header = max(len(_text_lines(c, cell)) for c in columns) * LINE + PAD
    row_label = max(len(_text_lines(r, cell)) for r in rows) * LINE
    caption_h = LINE + PAD if captions else 0
    left = cell // 2 + PAD * 2
    width = left + len(columns) * (cell + PAD)
    row_h = max(cell, row_label) + caption_h + PAD
    sheet = Image.new("RGB", (width, header + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(columns):
        x = left + c * (cell + PAD)
        for i, line in enumerate(_text_lines(label, cell)):
            draw.text((x + 2, 2 + i * LINE), line, fill="black", font=font)
    for r, label in enumerate(rows):
        y = header + r * row_h
        for i, line in enumerate(_text_lines(label, left - PAD)):
            draw.text((2, y + 2 + i * LINE), line, fill="black", font=font)
        for c in range(len(columns)):
            image = images[r][c]
            x = left + c * (cell + PAD)
            if image is not None:
                tile = _fit(image, cell)
                sheet.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
            if captions and captions[r][c]:
                draw.text((x + 2, y + cell + 1), captions[r][c], fill="black", font=font)
    return sheet


def save_sheet(sheet: Image.Image, path: Path) -> None:
    """Write the sheet as PNG through an atomic rename, like every file rvgen writes."""
    imageio._atomic_write(path, lambda f: sheet.save(f, format="PNG"))
