"""Masks of an input: where a task's style goes, read per input from files or made by a rule.

A mask is a grey image, white where the style goes and black where the photo is kept, soft
in between. It is found per input by a pattern (:func:`mask_path`): ``masks/{stem}.png``
names, for the input ``photos/2024/beach.jpg`` run with ``--input photos``, the file
``masks/beach.png``; ``masks/{relpath}/{stem}.png`` the file ``masks/2024/beach.png``.
Several regions can come from one label image instead, each a colour of it
(:func:`label_mask`), or from a simple rule on the photo's pixels (:func:`parse_rule`):
thresholds on luminance, saturation, value and a hue range, such as
``luminance > 0.6 and hue in 180..260``. Rules are thresholds, not segmentation: they pick
pixels by their colour, not objects by their shape.

Masks are returned as (1, 1, H, W) tensors in [0, 1] at the size they are read at; the
engine resamples them to every level and layer (:mod:`rvgen.engine.guides`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import torch

from rvgen import imageio
from rvgen.engine.guides import resize_guide
from rvgen.errors import ImageError, RecipeError
from rvgen.params import shown

LUMA = (0.299, 0.587, 0.114)  # Rec. 601, on the sRGB values: a grey mask reads as its own grey
COLOUR_TOLERANCE = 12  # of 255: a label colour matches pixels this close on every channel


def mask_path(pattern: str, rel: str) -> Path:
    """The file ``pattern`` names for the input at ``rel`` (its name relative to ``--input``,
    a POSIX path): ``{stem}`` is its name without the extension, ``{relpath}`` its folder
    (empty at the top; the doubled separator that leaves is dropped)."""
    path = PurePosixPath(rel)
    folder = "" if str(path.parent) == "." else str(path.parent)
    filled = pattern.replace("{stem}", path.stem).replace("{relpath}", folder)
    return Path(os.path.normpath(filled))


def grey(image: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 1, H, W): the luma, so a grey image reads as its own grey."""
    weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True).clamp(0, 1)


def read(path: Path, what: str) -> torch.Tensor:
    """The image at ``path`` (1, 3, H, W); an :class:`ImageError` naming it and ``what`` it is
    for when it is missing or cannot be read."""
    if not path.is_file():
        raise ImageError(f"{what} not found: {path}")
    try:
        return imageio.load_image(str(path))
    except ImageError as exc:
        raise ImageError(f"{what} {path}: {exc}") from None


def parse_colour(value: str, key: str) -> tuple[int, int, int]:
    """``#rrggbb`` (or ``#rgb``) as three 0-255 values; a recipe error naming ``key`` otherwise."""
    text = value.strip().lower()
    if re.fullmatch(r"#[0-9a-f]{3}", text):
        text = "#" + "".join(c * 2 for c in text[1:])
    if not re.fullmatch(r"#[0-9a-f]{6}", text):
        raise RecipeError(f"{key}: expected a colour as \"#rrggbb\", got {shown(value)}")
    return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)


def label_mask(labels: torch.Tensor, colour: tuple[int, int, int]) -> torch.Tensor:
    """Where the label image (1, 3, H, W) has ``colour`` (within :data:`COLOUR_TOLERANCE`): (1, 1, H, W)."""
    target = torch.tensor(colour, dtype=torch.float32, device=labels.device).view(1, 3, 1, 1)
    close = ((labels.float() * 255 - target).abs() <= COLOUR_TOLERANCE).all(1, keepdim=True)
    return close.float()


# -- rules --------------------------------------------------------------------------------

CHANNELS = {
    "luminance": "Rec. 601 luma of the sRGB values, 0 to 1",
    "saturation": "HSV saturation, 0 to 1",
    "value": "HSV value (the largest of R, G, B), 0 to 1",
    "hue": "HSV hue in degrees, 0 to 360 (red 0, green 120, blue 240)",
}
COMPARISONS = ("<=", ">=", "<", ">")
MAX_RULE = 500  # characters
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|(<=|>=|<|>|\.\.|\(|\))|([a-z_]+))", re.IGNORECASE)

Rule = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def _tokens(text: str, key: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise RecipeError(f"{key}: cannot read the rule at {shown(text[pos:pos + 20])!r}; "
                              "expected e.g. \"luminance > 0.6 and hue in 180..260\"")
        number, symbol, word = match.groups()
        out.append(("number", number) if number else ("symbol", symbol) if symbol else ("word", word.lower()))
        pos = match.end()
    return out


class _Parser:
    """A recursive-descent parser of rules; builds closures, never evaluates text."""

    def __init__(self, text: str, key: str):
        self.key, self.text = key, text
        self.tokens = _tokens(text, key)
        self.pos = 0

    def fail(self, what: str) -> RecipeError:
        return RecipeError(f"{self.key}: {what} in the rule {shown(self.text)}; rules are comparisons such as "
                           f"\"luminance > 0.6\" or \"hue in 90..150\" joined by and, or, not and parentheses; "
                           f"channels: {', '.join(CHANNELS)}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            found = "the end" if token is None else repr(token[1])
            raise self.fail(f"expected {value or kind}, found {found}")
        self.pos += 1
        return token[1]

    def number(self, low: float, high: float, channel: str) -> float:
        value = float(self.take("number"))
        if not low <= value <= high:
            raise self.fail(f"{channel} thresholds go from {low:g} to {high:g}, got {value:g}")
        return value

    def rule(self) -> Rule:
        """Conjunctions joined by ``or`` (the largest of them)."""
        return self.joined("or", self.conjunction, torch.amax)

    def conjunction(self) -> Rule:
        """Conditions joined by ``and`` (the smallest of them): ``and`` binds before ``or``."""
        return self.joined("and", self.condition, torch.amin)

    def joined(self, word: str, part: Callable[[], Rule], combine: Callable) -> Rule:
        parts = [part()]
        while self.peek() == ("word", word):
            self.pos += 1
            parts.append(part())
        if len(parts) == 1:
            return parts[0]
        return lambda c: combine(torch.stack([p(c) for p in parts]), 0)

    def condition(self) -> Rule:
        token = self.peek()
        if token == ("word", "not"):
            self.pos += 1
            inner = self.condition()
            return lambda c: 1 - inner(c)
        if token == ("symbol", "("):
            self.pos += 1
            inner = self.rule()
            self.take("symbol", ")")
            return inner
        channel = self.take("word")
        if channel not in CHANNELS:
            raise self.fail(f"unknown channel {channel!r}")
        high = 360.0 if channel == "hue" else 1.0
        if self.peek() == ("word", "in"):
            self.pos += 1
            low_end = self.number(0, high, channel)
            self.take("symbol", "..")
            high_end = self.number(0, high, channel)
            if low_end <= high_end:
                return lambda c: ((c[channel] >= low_end) & (c[channel] <= high_end)).float()
            return lambda c: ((c[channel] >= low_end) | (c[channel] <= high_end)).float()  # wraps past 360
        op = self.take("symbol")
        if op not in COMPARISONS:
            raise self.fail(f"expected a comparison ({', '.join(COMPARISONS)}) or in, found {op!r}")
        threshold = self.number(0, high, channel)
        compare = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge}[op]
        return lambda c: compare(c[channel], threshold).float()


def parse_rule(text: str, key: str) -> Rule:
    """A rule as a function of the photo's channels; a one-line recipe error naming ``key``
    when it does not parse. Nothing of the text is evaluated as code."""
    if not text.strip():
        raise RecipeError(f"{key}: the rule is empty")
    if len(text) > MAX_RULE:
        raise RecipeError(f"{key}: a rule of at most {MAX_RULE} characters, got {len(text)}")
    parser = _Parser(text, key)
    rule = parser.rule()
    if parser.peek() is not None:
        raise parser.fail(f"unexpected {parser.peek()[1]!r}")
    return rule


def channels(photo: torch.Tensor) -> dict[str, torch.Tensor]:
    """The channels a rule reads, each (1, 1, H, W), from a photo (1, 3, H, W) in [0, 1]."""
    rgb = photo.float().clamp(0, 1)
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    high, low = rgb.amax(1, keepdim=True), rgb.amin(1, keepdim=True)
    spread = high - low
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(spread > 0, hue * 60, torch.zeros_like(hue))
    return {
        "luminance": grey(rgb),
        "saturation": torch.where(high > 0, spread / torch.where(high > 0, high, torch.ones_like(high)),
                                  torch.zeros_like(high)),
        "value": high,
        "hue": hue,
    }


def rule_mask(rule: Rule, photo: torch.Tensor) -> torch.Tensor:
    """The mask (1, 1, H, W) of 0 and 1 a parsed rule gives on ``photo``."""
    return rule(channels(photo)).float()


def check_not_black(mask: torch.Tensor, key: str) -> None:
    """A recipe error naming ``key`` when a painting's mask selects nothing."""
    if not math.isfinite(float(mask.sum())) or float(mask.amax()) <= 0:
        raise RecipeError(f"{key}: the mask is all black, so it selects nothing of the painting")


def input_mask(pattern: str | None, rule: Rule | None, rel: str, photo: torch.Tensor, key: str,
               missing: str = "fail") -> torch.Tensor | None:
    """One input's mask (1, 1, H, W) at the photo's size, from the file ``pattern`` names for
    it or from ``rule``. A missing file is an :class:`ImageError` (the image fails, with one
    line), or ``None`` with ``missing = "whole"`` (the caller styles it whole)."""
    if rule is not None:
        return rule_mask(rule, photo)
    path = mask_path(pattern, rel)
    if not path.is_file() and missing == "whole":
        return None
    if not path.is_file():
        raise ImageError(f"mask not found: {path} ({key}; mask_missing = \"whole\" styles such an input whole)")
    return resize_to(grey(read(path, "mask")), tuple(photo.shape[-2:]))


def resize_to(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A mask (1, 1, h, w) at the photo's ``shape``: masks of another size than the photo are
    stretched to it."""
    return resize_guide(mask.float(), shape)
