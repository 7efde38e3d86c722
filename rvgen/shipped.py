"""The recipes that ship with rvgen: find them by name, list them with their descriptions.

They live in the repository's top-level ``recipes/`` folder, which a wheel installs as the
package data ``rvgen.recipes`` (see setup.py). From a source checkout (an editable install
or ``PYTHONPATH``) the folder is found beside the ``rvgen`` package instead. Stdlib only,
so listing recipes imports no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rvgen.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def recipes_dir() -> Path | None:
    """The folder of the shipped recipes, or None when this installation has none."""
    package = Path(__file__).resolve().parent
    installed = package / "recipes"  # a wheel: rvgen/recipes/ (package data)
    if installed.is_dir():
        return installed
    checkout = package.parent  # a source checkout: recipes/ beside rvgen/
    if (checkout / "pyproject.toml").is_file() and (checkout / "recipes" / "styles").is_dir():
        return checkout / "recipes"
    return None


def shipped() -> dict[str, Path]:
    """Shipped recipe name (file stem) -> path, sorted by name."""
    folder = recipes_dir()
    if folder is None:
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def description(path: Path) -> str:
    """A recipe file's ``description``, or '' when it has none (or cannot be read)."""
    try:
        with open(path, "rb") as f:
            value = tomllib.load(f).get("description", "")
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    return value if isinstance(value, str) else ""


def resolve(name: str | Path) -> Path:
    """The recipe file for ``name``: an existing file wins; otherwise a shipped recipe's name
    (``monet`` or ``monet.toml``). Raises a one-line :class:`UsageError` naming the shipped
    recipes when it is neither."""
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise UsageError(f"recipe {name}: is a folder; give a recipe file (.toml) or a shipped recipe's name")
    recipes = shipped()
    stem = path.name[:-5] if path.name.endswith(".toml") else path.name
    if str(path.parent) == "." and stem in recipes:
        return recipes[stem]
    from rvgen.params import suggest

    names = ", ".join(recipes) or "none in this installation"
    hint = suggest(stem, recipes) if recipes else ""
    raise UsageError(f"recipe {name}: no such file and no shipped recipe of that name{hint}; shipped: {names}")
