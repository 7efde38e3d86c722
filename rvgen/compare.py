"""``rvgen compare``: one task over the same inputs with several backbones, seeds and layers.

A *column* is one (backbone spec, seed, layer) setting, turned into its own validated
recipe; every input goes through every column. Results are scored against the images they
should resemble (:mod:`rvgen.metrics`), summarised per column (mean, spread, and the paired
difference from the first backbone at the same layer over the same inputs), and drawn as a
contact sheet.

Backbone specs are ``NAME[:VARIANT|:KEY=VALUE ...]``: ``random-vgg19:stacked`` takes the
options the backbone declares for the variant ``stacked``, ``random-vgg19:seed=3`` sets one
option (value parsed as TOML). A layer the backbone does not have is mapped to its
declared equivalent (``relu3_1`` is ``layer2.0`` on a ResNet); the column label says so.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rvgen import imageio, metrics
from rvgen.errors import RecipeError, UsageError
from rvgen.params import suggest
from rvgen.plugins import Registry, get_registry
from rvgen.recipe import Recipe, parse_recipe, parse_value

LAYER_KEYS = ("layer", "layers", "content_layers", "style_layers")
# The metrics each task gets, in table order; the first is the column's headline score.
TASK_METRICS = {
    "reconstruct": ("psnr", "ssim"),
    "texture": ("gram", "structure", "colour"),
    "style": ("gram", "structure", "colour", "content_ssim"),
}
METRIC_INFO = {  # name -> (label, True when higher is better)
    "psnr": ("PSNR dB", True),
    "ssim": ("SSIM", True),
    "gram": ("Gram dist", False),
    "structure": ("structure dist", False),
    "colour": ("colour dist", False),
    "content_ssim": ("content SSIM", True),
}


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


@dataclass
class Outcome:
    """One result: the column, the input, its scores."""

    column: int
    input: str
    image: torch.Tensor
    scores: dict[str, float]
    seconds: float
    loss: float


@dataclass
class Comparison:
    task: str
    columns: list[Column]
    recipes: list[Recipe]
    inputs: list[tuple[str, str]]  # (source, short name)
    metric_names: tuple[str, ...]
    outcomes: list[Outcome] = field(default_factory=list)

    def scores(self, column: int, metric: str) -> list[float]:
        return [o.scores[metric] for o in self.outcomes if o.column == column]

    def baseline(self, column: int) -> int:
        """The column a column is compared with: the first backbone's at the same layer and seed."""
        col = self.columns[column]
        for b, other in enumerate(self.columns):
            if other.layer == col.layer and other.seed == col.seed:
                return b
        for b, other in enumerate(self.columns):
            if other.layer == col.layer:
                return b
        return 0

    def summary(self) -> list[dict[str, Any]]:
        """Per column: mean, standard deviation and count of every metric, and the headline
        metric's mean paired difference (same inputs) from its :meth:`baseline` column, with
        the standard error of that difference."""
        headline = self.metric_names[0]
        rows = []
        for c, column in enumerate(self.columns):
            b = self.baseline(c)
            base = {o.input: o.scores[headline] for o in self.outcomes if o.column == b}
            row: dict[str, Any] = {"column": column.label, "backbone": column.spec, "seed": column.seed,
                                   "layer": column.layer, "backbone_layer": column.actual_layer}
            for name in self.metric_names:
                mean, std, n = spread(self.scores(c, name))
                row[name] = {"mean": mean, "std": std, "n": n}
            diffs = [o.scores[headline] - base[o.input] for o in self.outcomes if o.column == c and o.input in base]
            mean, std, n = spread(diffs)
            row["delta"] = {"metric": headline, "baseline": self.columns[b].label, "mean": mean, "se": std / math.sqrt(n) if n else float("nan"), "n": n}
            row["seconds"] = sum(o.seconds for o in self.outcomes if o.column == c)
            rows.append(row)
        return rows


def spread(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count; NaN mean for none."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


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
    if layers and task.get("name") != "reconstruct":
        raise UsageError(f"--layers applies to the reconstruct task; this recipe's task is {task.get('name')!r} "
                         "(set its layers in the recipe or with --set)")
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
                    task_data["layer"] = actual
                for key in LAYER_KEYS:  # VGG layer names in the recipe, mapped for other backbones
                    value = task_data.get(key)
                    if isinstance(value, str) and not (layer is not None and key == "layer"):
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


def score(task: str, result: torch.Tensor, content: torch.Tensor, reference: torch.Tensor | None,
          evaluator: metrics.GramEvaluator | None) -> dict[str, float]:
    """The task's metrics for one result. ``reference`` is the style image (style task)."""
    if task == "reconstruct":
        return {"psnr": metrics.psnr(result, content), "ssim": metrics.ssim(result, content)}
    target = reference if task == "style" else content
    out = {
        "gram": evaluator.distance(result, target),
        "structure": metrics.structure_distance(result, target),
        "colour": metrics.colour_distance(result, target),
    }
    if task == "style":
        out["content_ssim"] = metrics.ssim(result, content)
    return out


def run_comparison(
    columns: Sequence[Column],
    recipes: Sequence[Recipe],
    inputs: Sequence[tuple[str, str]],
    device: str = "cpu",
    registry: Registry | None = None,
    on_result: Callable[[Comparison, Outcome], None] | None = None,
    on_column: Callable[[int, Column], None] | None = None,
) -> Comparison:
    """Run every recipe on every input (inputs loaded once per size) and score the results.
    ``on_column`` hears of each column before its backbone is built (a stacked one can take
    minutes the first time), ``on_result`` of each result."""
    from rvgen.pipeline import Pipeline

    registry = registry or get_registry()
    task = recipes[0].task["name"]
    if any(r.task["name"] != task for r in recipes):
        raise UsageError("compare runs one task; the columns' recipes name different tasks")
    comparison = Comparison(task, list(columns), list(recipes), list(inputs), TASK_METRICS.get(task, ()))
    if not comparison.metric_names:
        raise UsageError(f"compare knows how to score reconstruct, texture and style, not {task!r}")
    evaluator = metrics.GramEvaluator(device="cpu") if task in ("texture", "style") else None
    images: dict[tuple[str, int], torch.Tensor] = {}

    def image(source: str, size: int) -> torch.Tensor:
        if (source, size) not in images:
            images[(source, size)] = imageio.load_image(source, size)
        return images[(source, size)]

    for c, recipe in enumerate(recipes):
        if on_column is not None:
            on_column(c, comparison.columns[c])
        refs = {name: image(src, side) for name, (src, side) in recipe.references(registry).items()}
        synth = Pipeline(recipe, device, registry, references=refs).synth
        size = recipe.output["size"]
        for source, short in inputs:
            content = image(source, size)
            start = time.perf_counter()
            result = synth.run(content)
            seconds = time.perf_counter() - start
            out = result.image.detach().float().cpu()
            scores = score(task, out, content, refs.get("style"), evaluator)
            outcome = Outcome(c, short, out, scores, seconds, result.loss)
            comparison.outcomes.append(outcome)
            if on_result is not None:
                on_result(comparison, outcome)
    return comparison


def result_path(comparison: Comparison, outcome: Outcome, output: Path) -> Path:
    return output / "results" / comparison.columns[outcome.column].slug / f"{outcome.input}.png"


def write_result(comparison: Comparison, outcome: Outcome, output: Path) -> None:
    """One result PNG, written as soon as it is made so a long comparison can be watched."""
    imageio.save_image(outcome.image, result_path(comparison, outcome, output))


def write_outputs(comparison: Comparison, output: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """Every result PNG (again, if :func:`write_result` already did), the contact sheet,
    metrics.csv (one row per result), summary.csv and metrics.json."""
    import csv
    import io

    from rvgen.sheet import contact_sheet, save_sheet

    output.mkdir(parents=True, exist_ok=True)
    for o in comparison.outcomes:
        write_result(comparison, o, output)
    names = [short for _, short in comparison.inputs]
    by_cell = {(o.input, o.column): o for o in comparison.outcomes}
    headline = comparison.metric_names[0]
    grid, captions = [], []
    for source, short in comparison.inputs:
        size = comparison.recipes[0].output["size"]
        row = [imageio.load_image(source, size)]
        caps = [""]
        for c in range(len(comparison.columns)):
            o = by_cell.get((short, c))
            row.append(o.image if o else None)
            caps.append(f"{METRIC_INFO[headline][0].split()[0]} {o.scores[headline]:.3g}" if o else "")
        grid.append(row)
        captions.append(caps)
    cell = min(160, max(64, max(comparison.recipes[0].output["size"], 64)))
    sheet = contact_sheet(names, ["input"] + [c.label for c in comparison.columns], grid, captions, cell=cell)
    paths = {"sheet": output / "sheet.png", "csv": output / "metrics.csv", "summary": output / "summary.csv",
             "json": output / "metrics.json"}
    save_sheet(sheet, paths["sheet"])

    per_result = io.StringIO()
    writer = csv.writer(per_result)
    writer.writerow(["column", "backbone", "seed", "layer", "backbone_layer", "input", *comparison.metric_names,
                     "seconds", "loss"])
    for o in comparison.outcomes:
        col = comparison.columns[o.column]
        writer.writerow([col.label, col.spec, col.seed, col.layer, col.actual_layer, o.input,
                         *(f"{o.scores[m]:.6g}" for m in comparison.metric_names), f"{o.seconds:.2f}", f"{o.loss:.6g}"])
    imageio._atomic_write(paths["csv"], lambda f: f.write(per_result.getvalue().encode()))

    summary = comparison.summary()
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["column", "n", *(f"{m}_{s}" for m in comparison.metric_names for s in ("mean", "std")),
                     f"delta_{headline}_mean", f"delta_{headline}_se", "seconds"])
    for row in summary:
        writer.writerow([row["column"], row[headline]["n"],
                         *(f"{row[m][s]:.6g}" for m in comparison.metric_names for s in ("mean", "std")),
                         f"{row['delta']['mean']:.6g}", f"{row['delta']['se']:.6g}", f"{row['seconds']:.1f}"])
    imageio._atomic_write(paths["summary"], lambda f: f.write(table.getvalue().encode()))

    imageio.write_json({
        **meta,
        "task": comparison.task,
        "metrics": list(comparison.metric_names),
        "psnr_cap": metrics.PSNR_CAP,
        "evaluator": {"backbone": "random-vgg19", "seed": metrics.EVALUATOR_SEED,
                      "layers": list(metrics.EVALUATOR_LAYERS)} if comparison.task != "reconstruct" else None,
        "columns": [{"label": c.label, "backbone": c.spec, "name": c.backbone, "options": c.options, "seed": c.seed,
                     "layer": c.layer, "backbone_layer": c.actual_layer, "recipe": r.to_dict()}
                    for c, r in zip(comparison.columns, comparison.recipes)],
        "results": [{"column": comparison.columns[o.column].label, "input": o.input, **o.scores,
                     "seconds": o.seconds, "loss": o.loss} for o in comparison.outcomes],
        "summary": summary,
    }, paths["json"])
    return paths


def _cell(stat: dict[str, Any], digits: int) -> str:
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


DIGITS = {"psnr": 2, "ssim": 3, "gram": 3, "structure": 3, "colour": 3, "content_ssim": 3}


def summary_table(comparison: Comparison, summary: list[dict[str, Any]]) -> Any:
    """A rich table: one row per column, each metric as mean ± standard deviation over the inputs,
    and the headline metric's paired difference from the first backbone at the same layer and
    seed (± standard error of the paired differences)."""
    from rich.table import Table

    headline = comparison.metric_names[0]
    n = len(comparison.inputs)
    table = Table(title=f"{comparison.task}: mean ± std over {n} input(s)", title_justify="left")
    table.add_column("column", overflow="fold")
    for m in comparison.metric_names:
        label, higher = METRIC_INFO[m]
        table.add_column(f"{label} {'↑' if higher else '↓'}", justify="right")
    table.add_column(f"Δ{METRIC_INFO[headline][0].split()[0]} vs 1st backbone ± s.e.", justify="right")
    table.add_column("seconds", justify="right")
    for row in summary:
        delta = row["delta"]
        d = DIGITS[headline]
        table.add_row(row["column"], *(_cell(row[m], DIGITS[m]) for m in comparison.metric_names),
                      "-" if delta["n"] == 0 else f"{delta['mean']:+.{d}f} ± {delta['se']:.{d}f}",
                      f"{row['seconds']:.0f}")
    return table


def layer_table(comparison: Comparison, summary: list[dict[str, Any]]) -> Any | None:
    """For reconstructions over several layers: backbones as rows, layers as columns, headline metric."""
    from rich.table import Table

    layers = list(dict.fromkeys(c.layer for c in comparison.columns if c.layer is not None))
    if len(layers) < 2:
        return None
    headline = comparison.metric_names[0]
    rows: dict[str, dict[str, str]] = {}
    for column, row in zip(comparison.columns, summary):
        key = column.spec + (f" seed {column.seed}" if column.seed is not None else "")
        rows.setdefault(key, {})[column.layer] = _cell(row[headline], DIGITS[headline])
    table = Table(title=f"{METRIC_INFO[headline][0]} by layer (mean ± std)", title_justify="left")
    table.add_column("backbone", overflow="fold")
    for layer in layers:
        table.add_column(layer, justify="right")
    for key, cells in rows.items():
        table.add_row(key, *(cells.get(layer, "-") for layer in layers))
    return table


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
