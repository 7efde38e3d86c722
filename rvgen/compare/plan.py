"""Planning a comparison: the columns (backbone spec x seed x layer), each its own recipe.

Backbone specs are ``NAME[:VARIANT|:KEY=VALUE ...]``: ``random-vgg19:stacked`` takes the
options the backbone declares for the variant ``stacked``, ``random-vgg19:seed=3`` sets one
option (value parsed as TOML). A layer the backbone does not have is mapped to its
declared equivalent (``relu3_1`` is ``layer2.0`` on a ResNet); the column label says so.
``--layers`` sets the option the task declares as its ``layer_option`` (``layer`` for
reconstruct); the layer names in the task's other ``layer``/``layers`` options are mapped
for each backbone the same way.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvgen.errors import RecipeError, UsageError
from rvgen.params import suggest
from rvgen.plugins import Registry
from rvgen.recipe import Recipe, parse_recipe, parse_value

LAYER_KINDS = ("layer", "layers")


@dataclass(frozen=True)
class Column:
    spec: str  # the backbone as typed: random-vgg19:stacked
    backbone: str  # its registry name
    options: dict[str, Any]
    seed: int | None
    layer: str | None  # as asked for (relu3_1)
    actual_layer: str | None  # the backbone's own name for it (layer2.0)

    @property
    def label(self) -> str:
        parts = [self.spec]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.layer is not None:
            same = self.actual_layer in (None, self.layer)
            parts.append(self.layer if same else f"{self.layer}={self.actual_layer}")
        return " ".join(parts)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label.replace(" ", "_"))


def split_list(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def parse_backbone_spec(spec: str, registry: Registry) -> tuple[str, dict[str, Any]]:
    """``NAME[:VARIANT|:KEY=VALUE ...]`` -> (backbone name, options it sets)."""
    name, *mods = [part.strip() for part in spec.split(":")]
    entry = registry.get("backbone", name, f"--backbones {spec}")
    params = {p.name for p in entry.params}
    options: dict[str, Any] = {}
    for mod in mods:
        key, sep, value = mod.partition("=")
        if sep:
            if key not in params:
                raise UsageError(f"--backbones {spec}: {name} has no option {key!r}{suggest(key, params)}; "
                                 f"options: {', '.join(sorted(params)) or '(none)'}")
            options[key] = parse_value(value)
            continue
        variants = getattr(entry.cls, "variants", {})
        if mod not in variants:
            known = ", ".join(sorted(variants)) or "(none)"
            raise UsageError(f"--backbones {spec}: {name} has no variant {mod!r}{suggest(mod, variants)}; "
                             f"variants: {known}; or give KEY=VALUE")
        options.update(variants[mod])
    return name, options


def _map_layer(layer: str, cls: Any, options: dict[str, Any], spec: str, strict: bool = True) -> str:
    """The backbone's name for ``layer``: itself, or its declared equivalent. Unknown layers are
    an error when ``strict`` (``--layers``), else left for the recipe's validation to report."""
    names = cls.layer_names({p.name: p.default for p in cls.params} | options)
    if layer in names or layer == "pixels":
        return layer
    alias = getattr(cls, "layer_aliases", {}).get(layer)
    if alias is not None and alias in names:
        return alias
    if not strict:
        return layer
    raise UsageError(f"--layers {layer}: backbone {spec} has no such layer and no equivalent"
                     f"{suggest(layer, names)}; its layers: {', '.join(names)}")


def plan_columns(
    data: dict[str, Any],
    backbones: Sequence[str],
    layers: Sequence[str],
    seeds: Sequence[int],
    registry: Registry,
    base_dir: Path,
    cwd_keys: frozenset[str] = frozenset(),
    source: str = "<recipe>",
) -> tuple[list[Column], list[Recipe]]:
    """One validated recipe per backbone x seed x layer, built from the recipe's data."""
    task = data.get("task", {}) if isinstance(data.get("task"), dict) else {}
    task_cls = registry.get("task", task.get("name"), "task.name").cls if isinstance(task.get("name"), str) else None
    params = {p.name: p for p in getattr(task_cls, "params", ())}
    option = getattr(task_cls, "layer_option", None)
    if layers and option is None:
        takers = [name for name in registry.names("task") if registry.get("task", name, "").cls.layer_option]
        raise UsageError(f"--layers: the task {task.get('name')!r} declares no layer_option, the option it would "
                         f"set (tasks that do: {', '.join(takers) or 'none'}); set its layers in the recipe or "
                         "with --set")
    layer_keys = [name for name, p in params.items() if p.kind in LAYER_KINDS]
    base_backbone = data.get("backbone", {}) if isinstance(data.get("backbone"), dict) else {}
    base_name = base_backbone.get("name", "random-vgg19")
    specs = list(backbones) or [base_name]
    columns, recipes = [], []
    for spec in specs:
        name, options = parse_backbone_spec(spec, registry)
        cls = registry.get("backbone", name, "--backbones").cls
        has_seed = any(p.name == "seed" for p in cls.params)
        table = {k: v for k, v in base_backbone.items() if k != "name"} if name == base_name else {}
        table.update(options)
        for seed in (seeds if (seeds and has_seed) else [None]):
            backbone = {"name": name, **table, **({"seed": seed} if seed is not None else {})}
            for layer in (layers or [None]):
                recipe_data = copy.deepcopy(data)
                recipe_data["backbone"] = backbone
                task_data = recipe_data.setdefault("task", {})
                actual = None
                if layer is not None:
                    actual = _map_layer(layer, cls, backbone, spec)
                    task_data[option] = [actual] if params[option].kind == "layers" else actual
                for key in layer_keys:  # VGG layer names in the recipe, mapped for other backbones
                    value = task_data.get(key)
                    if layer is not None and key == option:
                        continue
                    if isinstance(value, str):
                        task_data[key] = _map_layer(value, cls, backbone, spec, strict=False)
                    elif isinstance(value, list):
                        task_data[key] = [_map_layer(v, cls, backbone, spec, strict=False) if isinstance(v, str)
                                          else v for v in value]
                try:
                    recipe = parse_recipe(recipe_data, base_dir=base_dir, registry=registry, cwd_keys=cwd_keys,
                                          source=source)
                except RecipeError as exc:
                    raise RecipeError(f"--backbones {spec}: {exc}") from None
                columns.append(Column(spec, name, options, seed, layer, actual))
                recipes.append(recipe)
    labels = [c.label for c in columns]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise UsageError(f"compare: the column {twice[0]!r} is asked for twice; list each backbone, layer and seed once")
    return columns, recipes


def input_names(found: Sequence[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(source, short unique name) per input: the relative path without extension, '/' as '_'."""
    names: list[tuple[str, str]] = []
    seen: set[str] = set()
    for source, rel in found:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(str(rel)).with_suffix("")))
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        names.append((source, name))
    return names
