"""What a comparison writes: the result PNGs, the contact sheet, metrics.csv (one row per
result), summary.csv, metrics.json, and the rich tables printed at the end."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from rvgen import imageio, metrics
from rvgen.compare.plan import Column
from rvgen.compare.results import Comparison, Scored


def result_path(output: Path, column: Column, name: str) -> Path:
    """Where a column's result for the input ``name`` is written."""
    return output / "results" / column.slug / f"{name}.png"


def _short(label: str) -> str:
    return label.split()[0]


def write_outputs(comparison: Comparison, output: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """The contact sheet, metrics.csv, summary.csv and metrics.json (the result PNGs were
    written as they were made)."""
    from rvgen.sheet import contact_sheet, save_sheet

    output.mkdir(parents=True, exist_ok=True)
    names = [short for _, short in comparison.inputs]
    by_cell = {(o.input, o.column): o for o in comparison.outcomes}
    headline = comparison.metrics[0] if comparison.metrics else None
    size = comparison.recipes[0].output["size"]
    grid, captions = [], []
    for source, short in comparison.inputs:
        row, caps = [imageio.load_image(source, size)], [""]
        for c in range(len(comparison.columns)):
            o = by_cell.get((short, c))
            row.append(o.image if o else None)
            caps.append(f"{_short(headline.label)} {o.scores[headline.name]:.3g}" if o and headline else "")
        grid.append(row)
        captions.append(caps)
    cell = min(160, max(64, max(size, 64)))
    sheet = contact_sheet(names, ["input"] + [c.label for c in comparison.columns], grid, captions, cell=cell)
    paths = {"sheet": output / "sheet.png", "csv": output / "metrics.csv", "summary": output / "summary.csv",
             "json": output / "metrics.json"}
    save_sheet(sheet, paths["sheet"])
    metric_names = comparison.metric_names

    per_result = io.StringIO()
    writer = csv.writer(per_result)
    writer.writerow(["column", "backbone", "seed", "layer", "backbone_layer", "input", *metric_names, "seconds", "loss"])
    for o in comparison.outcomes:
        col = comparison.columns[o.column]
        writer.writerow([col.label, col.spec, col.seed, col.layer, col.actual_layer, o.input,
                         *(f"{o.scores[m]:.6g}" for m in metric_names), f"{o.seconds:.2f}", f"{o.loss:.6g}"])
    imageio._atomic_write(paths["csv"], lambda f: f.write(per_result.getvalue().encode()))

    summary = comparison.summary()
    table = io.StringIO()
    writer = csv.writer(table)
    delta = [f"delta_{headline.name}_mean", f"delta_{headline.name}_se"] if headline else []
    writer.writerow(["column", "n", *(f"{m}_{s}" for m in metric_names for s in ("mean", "std")), *delta, "seconds"])
    for row in summary:
        deltas = [f"{row['delta']['mean']:.6g}", f"{row['delta']['se']:.6g}"] if headline else []
        writer.writerow([row["column"], row["n"], *(f"{row[m][s]:.6g}" for m in metric_names for s in ("mean", "std")),
                         *deltas, f"{row['seconds']:.1f}"])
    imageio._atomic_write(paths["summary"], lambda f: f.write(table.getvalue().encode()))

    imageio.write_json({
        **meta,
        "task": comparison.task,
        "metrics": list(metric_names),
        "psnr_cap": metrics.PSNR_CAP,
        "evaluator": {"backbone": "random-vgg19", "seed": metrics.EVALUATOR_SEED,
                      "layers": list(metrics.EVALUATOR_LAYERS)} if "gram" in metric_names else None,
        "columns": [{"label": c.label, "backbone": c.spec, "name": c.backbone, "options": c.options, "seed": c.seed,
                     "layer": c.layer, "backbone_layer": c.actual_layer, "recipe": r.to_dict()}
                    for c, r in zip(comparison.columns, comparison.recipes)],
        "results": [{"column": comparison.columns[o.column].label, "input": o.input, **o.scores,
                     "seconds": o.seconds, "loss": o.loss} for o in comparison.outcomes],
        "failures": [{"column": comparison.columns[c].label, "input": name, "reason": reason}
                     for c, name, reason in comparison.failures],
        "summary": summary,
    }, paths["json"])
    return paths


def mean_std(stat: dict[str, Any], digits: int) -> str:
    """A statistic of :meth:`Comparison.summary` as ``mean ± std`` (``-`` without values)."""
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def summary_table(comparison: Comparison, summary: list[dict[str, Any]]) -> Any:
    """A rich table: one row per column, each metric as mean ± standard deviation over the inputs,
    and the headline metric's paired difference from the first backbone at the same layer and
    seed (± standard error of the paired differences)."""
    from rich.table import Table

    n = len(comparison.inputs)
    table = Table(title=f"{comparison.task}: mean ± std over {n} input(s)", title_justify="left")
    table.add_column("column", overflow="fold")
    for m in comparison.metrics:
        table.add_column(f"{m.label} {'↑' if m.higher_is_better else '↓'}", justify="right")
    headline = comparison.metrics[0] if comparison.metrics else None
    if headline:
        table.add_column(f"Δ{_short(headline.label)} vs 1st backbone ± s.e.", justify="right")
    table.add_column("seconds", justify="right")
    for row in summary:
        cells = [mean_std(row[m.name], m.digits) for m in comparison.metrics]
        if headline:
            delta, d = row["delta"], headline.digits
            cells.append("-" if delta["n"] == 0 else f"{delta['mean']:+.{d}f} ± {delta['se']:.{d}f}")
        table.add_row(row["column"], *cells, f"{row['seconds']:.0f}")
    return table


def layer_table(comparison: Comparison, summary: list[dict[str, Any]]) -> Any | None:
    """For reconstructions over several layers: backbones as rows, layers as columns, headline metric."""
    from rich.table import Table

    layers = list(dict.fromkeys(c.layer for c in comparison.columns if c.layer is not None))
    if len(layers) < 2 or not comparison.metrics:
        return None
    headline = comparison.metrics[0]
    rows: dict[str, dict[str, str]] = {}
    for column, row in zip(comparison.columns, summary):
        key = column.spec + (f" seed {column.seed}" if column.seed is not None else "")
        rows.setdefault(key, {})[column.layer] = mean_std(row[headline.name], headline.digits)
    table = Table(title=f"{headline.label} by layer (mean ± std)", title_justify="left")
    table.add_column("backbone", overflow="fold")
    for layer in layers:
        table.add_column(layer, justify="right")
    for key, cells in rows.items():
        table.add_row(key, *(cells.get(layer, "-") for layer in layers))
    return table


def describe(comparison: Comparison, outcome: Scored) -> str:
    """One line for a result as it arrives."""
    scores = ", ".join(f"{k} {v:.4g}" for k, v in outcome.scores.items())
    return (f"{comparison.columns[outcome.column].label} | {outcome.input}: "
            f"{scores + ' ' if scores else ''}({outcome.seconds:.1f} s)")
