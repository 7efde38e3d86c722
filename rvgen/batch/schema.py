"""The one schema for what rvgen reads back from files it did not just write: sidecars, the
folder's record and the provenance an image carries. Anyone can edit those files, so their
content is checked here before any of it is used, and content that does not fit is skipped
with one line saying why, never an internal error.

A spec is a Python type (``int``, ``float``, ``str``, ``bool``, ``dict``, ``list``; an int
is no bool, a float may be an int), :data:`ANY`, ``Opt(spec)`` (``None`` too), ``Map(spec)``
(an object whose values all fit ``spec``), ``List(spec, length)`` or a dict literal naming
an object's fields (a name ending in ``?`` is optional; fields not named are allowed and
ignored). :func:`check` raises :class:`Invalid` naming the first field that does not fit;
:func:`parse` reads JSON text no deeper than a recipe may nest (:data:`rvgen.recipe.MAX_DEPTH`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rvgen.recipe import MAX_DEPTH, depth

ANY = object()


class Invalid(ValueError):
    """Content that does not fit its schema; the message names the field and says why."""


@dataclass(frozen=True)
class Opt:
    spec: Any


@dataclass(frozen=True)
class Map:
    spec: Any


@dataclass(frozen=True)
class List:
    spec: Any
    length: int | None = None


def kind(value: Any) -> str:
    """What a JSON value is, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"the text {json.dumps(text)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


NAMES = {int: "an integer", float: "a number", str: "a text", bool: "true or false", dict: "an object",
         list: "a list"}


def check(value: Any, spec: Any, where: str = "") -> None:
    """Raise :class:`Invalid` unless ``value`` fits ``spec``; ``where`` names ``value`` in the message."""
    here = where or "the content"
    if spec is ANY:
        return
    if isinstance(spec, Opt):
        if value is not None:
            check(value, spec.spec, where)
        return
    if isinstance(spec, type):
        if spec is float:
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif spec is int:
            fits = isinstance(value, int) and not isinstance(value, bool)
        else:
            fits = isinstance(value, spec)
        if not fits:
            raise Invalid(f"{here}: expected {NAMES.get(spec, spec.__name__)}, got {kind(value)}")
        return
    if isinstance(spec, Map):
        check(value, dict, where)
        for key, item in value.items():
            check(item, spec.spec, f"{where}.{key}" if where else str(key))
        return
    if isinstance(spec, List):
        check(value, list, where)
        if spec.length is not None and len(value) != spec.length:
            raise Invalid(f"{here}: expected {spec.length} items, got {len(value)}")
        for i, item in enumerate(value):
            check(item, spec.spec, f"{where}[{i}]")
        return
    if isinstance(spec, dict):
        check(value, dict, where)
        for name, field in spec.items():
            optional = name.endswith("?")
            name = name.rstrip("?")
            path = f"{where}.{name}" if where else name
            if name not in value:
                if not optional:
                    raise Invalid(f"{path}: missing")
                continue
            check(value[name], field, path)
        return
    raise TypeError(f"not a schema: {spec!r}")


def parse(text: str | bytes, spec: Any = ANY) -> Any:
    """JSON ``text`` that fits ``spec``; :class:`Invalid` (one line) if it is not JSON, nests
    deeper than :data:`MAX_DEPTH` or does not fit."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise Invalid(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise Invalid(f"not valid JSON ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    if depth(value) > MAX_DEPTH:
        raise Invalid(f"nested more than {MAX_DEPTH} levels deep")
    check(value, spec)
    return value


# -- what rvgen's files hold, as far as a reader uses it -------------------------------------

NUMBER = float
RESOLVED = {  # a resolved recipe (Recipe.to_dict); parse_recipe checks every key when it is run again
    "description?": str,
    "task": {"name": str},
    "backbone?": dict,
    "optimizer?": dict,
    "output?": dict,
    "losses?": Map(dict),
    "terms?": List(dict),
    "video?": dict,
}
LOSS = {"initial?": NUMBER, "final?": NUMBER, "terms?": Map(NUMBER)}
HISTORY = List(List(NUMBER, 2))
SIDECAR = {
    "input": {"name": str, "source?": str, "sha256": str, "size?": int, "mtime_ns?": int},
    "variation": int,
    "recipe": {"source": str, "digest": str, "resolved": RESOLVED},
    "references?": Map(str),
    "reference_files?": Map(str),
    "masks?": Map(str),
    "mask_files?": Map(str),
    "size?": List(int, 2),
    "loss?": LOSS,
    "history?": HISTORY,
    "iterations?": int,
    "seconds?": NUMBER,
    "device?": str,
    "threads?": int,
    "precision?": str,
    "layout?": str,
    "versions?": Map(str),
    "plugins?": Map(str),
    "clip?": {  # a clip's (rvgen.batch.clip)
        "frames": int, "shots?": List(int), "passes?": int, "fps?": NUMBER, "duration?": NUMBER, "made?": int,
        "workers?": Map(int),
        "flicker?": {"result": NUMBER, "input": NUMBER, "ratio?": Opt(NUMBER), "frames?": List(List(NUMBER, 3))},
    },
}
PROVENANCE = {  # what an image carries (sidecar.provenance): a sidecar without the input's path
    **{name: spec for name, spec in SIDECAR.items() if name not in ("input", "variation", "recipe")},
    "input?": {"name?": str, "sha256?": str},
    "variation?": int,
    "recipe": {"source?": str, "digest?": str, "resolved": RESOLVED},
    "seeds?": Map(ANY),
}
