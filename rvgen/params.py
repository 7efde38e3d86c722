"""Declared parameters: how plugins and the core say which recipe keys they take.

A plugin lists its parameters as :class:`Param` objects. The recipe loader validates a
recipe table against them (unknown keys, types, choices, ranges, files and layer names) and
``rvgen plugins`` renders them as documentation, so the two can never disagree.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rvgen.errors import RecipeError


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()
"""Default of a parameter that a recipe must set."""

# The kinds a parameter value can have beyond its Python type. The validator resolves
# them using the context: ``path`` against the recipe's folder, ``layer``/``layers``
# against the backbone's layer names, ``weighting`` against the layers of its term;
# ``images`` is one image (a path, kept a string), a folder (its images) or a list of paths.
# ``counts`` is one whole number or a non-empty list of them, each within the bounds.
# ``pattern`` is a file name per input, with ``{stem}`` (the input's name without extension)
# and ``{relpath}`` (its folder under ``--input``) filled in for each; relative to where rvgen
# runs, made absolute. ``tables`` is an array of tables, each checked against ``fields``.
VALUE_KINDS = ("path", "images", "layer", "layers", "weighting", "size", "loss", "counts", "pattern", "tables")
PLACEHOLDERS = ("stem", "relpath")
"""What a ``pattern`` value may name in braces."""

MAX_SIZE = 8192
"""The largest side in pixels a recipe may ask for (an output, a texture, a style image);
images that do not fit in memory whole are evaluated in tiles."""
MIN_SIZE = 8
"""The smallest side in pixels of a ``size`` value."""
SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds torch's random generators take (a 64-bit integer, signed or not): the bounds of
every seed key, so a seed out of range is a recipe error before any work."""
SHOWN = 80
"""Characters of a value an error message shows; longer ones are cut with '...'."""


@dataclass(frozen=True)
class Param:
    """One recipe key a plugin accepts.

    ``type`` is the Python type of the value (``int``, ``float``, ``bool``, ``str``,
    ``list``), ``kind`` adds meaning the validator checks (see :data:`VALUE_KINDS`).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    minimum: float | None = None
    kind: str | None = None
    maximum: float | None = None
    nullable: bool = False
    digest_neutral: bool = False
    """True for a key added after results were made whose default reproduces them: while it
    holds its default it is left out of the recipe digest, so nothing made before is redone."""
    result_neutral: bool = False
    """True for a key that never changes a result (which intermediate images are written and
    kept): left out of the recipe digest whatever its value."""
    fields: tuple[Param, ...] = ()
    """The keys of each table of a ``tables`` value."""

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in VALUE_KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")

    @property
    def type_name(self) -> str:
        if self.kind == "layers":
            return "list of layers"
        if self.kind == "weighting":
            return "auto|equal|table"
        if self.kind == "size":
            return "int | [width, height]"
        if self.kind == "images":
            return "path | folder | list of paths"
        if self.kind == "counts":
            return "int | [int, ...]"
        if self.kind == "pattern":
            return "path pattern"
        if self.kind == "tables":
            return "array of tables"
        if self.kind in ("path", "layer", "loss"):
            return self.kind
        return self.type.__name__


@dataclass
class Context:
    """What validation needs to know besides the values: where paths are relative to and
    which layers exist. ``cwd_keys`` are key paths set with ``--set``, whose paths are
    relative to the working folder rather than the recipe."""

    base_dir: Path = field(default_factory=Path.cwd)
    layers: Sequence[str] | None = None
    backbone: str = ""
    cwd_keys: frozenset[str] = frozenset()
    losses: Sequence[str] | None = None
    find_loss: Callable[[str, str], Any] | None = None
    """Looks up a ``loss`` value (name, dotted key), raising a one-line error for an unknown
    name (the registry's, which names a plugin left out); without it, ``losses`` is checked."""


def edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and
    transpositions of neighbours each cost 1 (so 'vgg91' is one edit from 'vgg19')."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def suggest(name: str, allowed: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest allowed name, or ''.

    Fewest edits wins, then the most similar; remaining ties go to the name listed first,
    so 'relu3_l' suggests 'relu3_1' rather than 'relu3_4'.
    """
    name = str(name).lower()
    if len(name) > SHOWN:  # nothing declared is this long, and comparing would be slow
        return ""
    best, best_key = None, None
    for candidate in allowed:
        other = str(candidate).lower()
        distance = edit_distance(name, other)
        ratio = difflib.SequenceMatcher(None, name, other).ratio()
        if distance > max(2, len(name) // 3) and ratio < 0.6:
            continue
        key = (distance, -ratio)
        if best_key is None or key < best_key:
            best, best_key = candidate, key
    return f" (did you mean {best!r}?)" if best is not None else ""


def unknown(what: str, key: str, name: str, allowed: Iterable[str]) -> RecipeError:
    allowed = sorted(allowed)
    return RecipeError(
        f"{key}: unknown {what} {clip(repr(name))}{suggest(name, allowed)}; allowed: {', '.join(allowed)}"
    )


def _type_ok(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def clip(text: str, limit: int = SHOWN) -> str:
    """``text`` cut to ``limit`` characters, ending in '...' when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(text: str, limit: int = SHOWN) -> str:
    """A string from a recipe as an error line shows it: as it is when printable, else quoted with
    its control characters escaped (so the line stays one line); cut to ``limit`` characters."""
    return clip(text if text.isprintable() else repr(text), limit)


def describe(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return f"{names.get(type(value), type(value).__name__)} {clip(repr(value))}"


def number(value: float) -> str:
    """A bound as an error message or the docs show it: 8192, 0.01, 1e-06."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def finite(value: float, key: str) -> float:
    """``value`` if it is a finite number; a recipe error naming ``key`` for NaN and infinity."""
    if not math.isfinite(value):
        raise RecipeError(f"{key}: must be a finite number, got {value}")
    return value


def file_path(value: str, key: str, base: Path) -> Path:
    """``value`` (``~`` expanded) made absolute against ``base``; a recipe error naming ``key``
    for a path no file can have: a NUL character, an unknown user's ``~``, a name too long."""
    if "\x00" in value:
        raise RecipeError(f"{key}: a path cannot contain a NUL character: {shown(value)}")
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~nouser
        raise RecipeError(f"{key}: {shown(value.split('/')[0])}: no such user's home folder") from None
    try:
        return (base / path).resolve()
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{key}: not a usable path ({getattr(exc, 'strerror', None) or exc}): "
                          f"{shown(value)}") from None


def resolve_path(value: str, key: str, ctx: Context) -> str:
    """An existing file, absolute; ``skimage:NAME`` sample images pass through unchanged."""
    from rvgen import imageio  # local: params is imported by plugins before imageio's deps matter

    if imageio.is_sample(value):
        imageio.check_sample(value, key)
        return value
    base = Path.cwd() if key in ctx.cwd_keys else ctx.base_dir
    path = file_path(value, key, base)
    try:
        found = path.is_file()
    except OSError:  # a name too long for the file system
        found = False
    if not found:
        raise RecipeError(f"{key}: file not found: {shown(str(path), 2 * SHOWN)}")
    return str(path)


def resolve_images(value: Any, key: str, ctx: Context) -> str | list[str]:
    """One image (a path or ``skimage:NAME``, kept a string), a folder (the sorted list of its
    images) or a list of images, resolved as :func:`resolve_path` does."""
    from rvgen import imageio

    if key in ctx.cwd_keys:  # set with --set: the list's paths are relative to the working folder too
        ctx = replace(ctx, base_dir=Path.cwd(), cwd_keys=frozenset())
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{key}: expected a non-empty list of image paths, got {describe(value)}")
        return [resolve_path(v, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if not isinstance(value, str):
        raise RecipeError(f"{key}: expected a path, a folder or a list of paths, got {describe(value)}")
    if not imageio.is_sample(value):
        folder = file_path(value, key, ctx.base_dir)
        try:
            is_folder = folder.is_dir()
        except OSError:
            is_folder = False
        if is_folder:
            images = sorted(str(p) for p in folder.iterdir()
                            if p.is_file() and imageio.is_image_file(p) and not p.name.startswith("."))
            if not images:
                raise RecipeError(f"{key}: no images in folder {folder}")
            return images
    return resolve_path(value, key, ctx)


def resolve_pattern(value: str, key: str) -> str:
    """A per-input file pattern made absolute against the working folder; a recipe error naming
    ``key`` for braces other than ``{stem}`` and ``{relpath}``."""
    import re

    names = re.findall(r"\{([^{}]*)\}", value)
    bad = [n for n in names if n not in PLACEHOLDERS]
    if bad or value.count("{") != len(names) or value.count("}") != len(names):
        raise RecipeError(f"{key}: a pattern may name only {{stem}} and {{relpath}} in braces, got {shown(value)}")
    return str(file_path(value, key, Path.cwd()))


def _check_tables(p: Param, value: Any, key: str, ctx: Context) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
        raise RecipeError(f"{key}: expected an array of tables ([[{key}]]), got {describe(value)}")
    if key in ctx.cwd_keys:  # set with --set: the tables' paths are relative to the working folder too
        ctx = replace(ctx, base_dir=Path.cwd(), cwd_keys=frozenset())
    return [validate(f"{key}[{i}]", item, p.fields, ctx) for i, item in enumerate(value)]


def _check_layer(value: Any, key: str, ctx: Context) -> str:
    if not isinstance(value, str):
        raise RecipeError(f"{key}: expected a layer name, got {describe(value)}")
    if ctx.layers is not None and value not in ctx.layers and value != "pixels":
        close = suggest(value, ctx.layers)
        raise RecipeError(
            f"{key}: unknown layer {value!r} for backbone {ctx.backbone}{close}; "
            f"layers: {', '.join(ctx.layers)}, pixels"
        )
    return value


def _check_kind(p: Param, value: Any, key: str, ctx: Context) -> Any:
    if p.kind == "path":
        if p.choices is None:
            return resolve_path(value, key, ctx)
        if value in p.choices:  # a keyword, not a file
            return value
        try:
            return resolve_path(value, key, ctx)
        except RecipeError as exc:
            words = [str(c) for c in p.choices]
            raise RecipeError(f"{exc}{suggest(value, words)}; or one of {', '.join(words)}") from None
    if p.kind == "images":
        return resolve_images(value, key, ctx)
    if p.kind == "pattern":
        return resolve_pattern(value, key)
    if p.kind == "tables":
        return _check_tables(p, value, key, ctx)
    if p.kind == "loss":
        if ctx.find_loss is not None:
            ctx.find_loss(value, key)
        elif ctx.losses is not None and value not in ctx.losses:
            raise unknown("loss", key, value, ctx.losses)
        return value
    if p.kind == "layer":
        return _check_layer(value, key, ctx)
    if p.kind == "layers":
        if not value:
            raise RecipeError(f"{key}: give at least one layer")
        return [_check_layer(v, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if p.kind == "weighting":
        if isinstance(value, str):
            if value not in ("auto", "equal"):
                raise unknown("weighting", key, value, ["auto", "equal"])
            return value
        if isinstance(value, dict):
            out = {}
            for layer, w in value.items():
                _check_layer(layer, f"{key}.{layer}", ctx)
                if not _type_ok(w, float) or not math.isfinite(w) or w < 0:
                    raise RecipeError(f"{key}.{layer}: expected a finite weight >= 0, got {describe(w)}")
                out[layer] = float(w)
            return out
        raise RecipeError(f"{key}: expected \"auto\", \"equal\" or a table of layer weights, got {describe(value)}")
    if p.kind == "size":
        low = MIN_SIZE if p.minimum is None else p.minimum
        high = MAX_SIZE if p.maximum is None else p.maximum
        sides = [value] if _type_ok(value, int) else value if isinstance(value, list) and len(value) == 2 else None
        if sides is None or not all(_type_ok(v, int) for v in sides):
            raise RecipeError(f"{key}: expected a size in pixels or [width, height], got {describe(value)}")
        for side in sides:
            if not low <= side <= high:
                raise RecipeError(f"{key}: each side must be from {number(low)} to {number(high)} pixels, got {side}")
        return value if isinstance(value, int) else list(value)
    if p.kind == "counts":
        counts = [value] if _type_ok(value, int) else value if isinstance(value, list) and value else None
        if counts is None or not all(_type_ok(v, int) for v in counts):
            raise RecipeError(f"{key}: expected a whole number or a non-empty list of them, got {describe(value)}")
        for v in counts:
            if (p.minimum is not None and v < p.minimum) or (p.maximum is not None and v > p.maximum):
                raise RecipeError(f"{key}: each value must be from {number(p.minimum)} to {number(p.maximum)}, got {v}")
        return value if isinstance(value, int) else list(value)
    return value


def check_value(p: Param, value: Any, key: str, ctx: Context) -> Any:
    """Validate one value against its declaration; returns the normalised value."""
    if value is None and p.nullable:
        return None
    if p.kind not in ("weighting", "size", "images", "counts", "tables") and not _type_ok(value, p.type):
        raise RecipeError(f"{key}: expected {p.type_name}, got {describe(value)}")
    if p.type is float and p.kind is None:
        value = finite(float(value), key)
    if p.choices is not None and value not in p.choices and p.kind != "path":  # a path's choices are keywords
        raise unknown("value", key, value, [str(c) for c in p.choices])
    if p.kind not in ("size", "counts") and _type_ok(value, float):  # their bounds hold for each value
        if p.minimum is not None and value < p.minimum:
            raise RecipeError(f"{key}: must be at least {number(p.minimum)}, got {value}")
        if p.maximum is not None and value > p.maximum:
            raise RecipeError(f"{key}: must be at most {number(p.maximum)}, got {value}")
    return _check_kind(p, value, key, ctx)


def validate(
    section: str,
    values: Mapping[str, Any],
    params: Sequence[Param],
    ctx: Context,
    extra: Callable[[str], bool] = lambda name: False,
) -> dict[str, Any]:
    """Check a recipe table against declared parameters and fill in defaults.

    ``extra`` names keys handled elsewhere (such as ``name``) that are not errors.
    """
    by_name = {p.name: p for p in params}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if extra(name):
            continue
        if name not in by_name:
            allowed = sorted(by_name) or ["(none)"]
            raise RecipeError(
                f"{section}.{name}: unknown key{suggest(name, by_name)}; allowed: {', '.join(allowed)}"
            )
        out[name] = check_value(by_name[name], value, f"{section}.{name}", ctx)
    for p in params:
        if p.name not in out:
            if p.default is REQUIRED:
                raise RecipeError(f"{section}.{p.name}: required ({p.help})")
            out[p.name] = p.default
    return out
