"""A comparison's page (``OUTPUT/index.html``): the page of ``rvgen run``'s kind for columns.

One row per input, one column per setting: the input, then each column's result (a
thumbnail linking to the full image, the task's headline score, the loss curve from the
result's sidecar, the time); above them the per-column summary (each metric's mean ± std,
the paired difference from the baseline, the time), the contact sheet, and the failures
with their reasons; below, the recipes (the first column's resolved TOML, the others'
folded). No scripts, no network; thumbnails in ``OUTPUT/.rvgen-thumbs/`` as for a run.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from rvgen.batch.sidecar import read_sidecar
from rvgen.compare.outputs import mean_std, result_path
from rvgen.compare.results import Comparison
from rvgen.report.page import GENERATOR, STYLE, curve, link, thumbnail
from rvgen.report.thumbs import Thumbnails
from rvgen.report.write import save_page

COMPARE_STYLE = """
table.matrix td, table.matrix th { padding: 8px 14px 8px 0; }
table.matrix th.col { max-width: 180px; overflow-wrap: anywhere; }
.score { font-weight: 600; }
details summary { cursor: default; margin: 6px 0; }
p.reason { color: var(--bad); font-size: 12px; max-width: 160px; overflow-wrap: anywhere; }
"""


def comparison_page(comparison: Comparison, output: Path, meta: dict[str, Any], thumbs: Thumbnails) -> str:
    """The HTML of a comparison's page in ``output``."""
    from rvgen.recipe import recipe_toml

    metrics = comparison.metrics
    headline = metrics[0] if metrics else None
    summary = comparison.summary()
    by_cell = {(o.input, o.column): o for o in comparison.outcomes}
    failed = {(name, c): reason for c, name, reason in comparison.failures}

    head = "".join(f'<th class="num">{escape(m.label)} {"&uarr;" if m.higher_is_better else "&darr;"}</th>'
                   for m in metrics)
    delta_head = f'<th class="num">&Delta;{escape(headline.label.split()[0])} vs baseline &plusmn; s.e.</th>' \
        if headline else ""
    rows = []
    for row in summary:
        cells = "".join(f'<td class="num">{escape(mean_std(row[m.name], m.digits))}</td>' for m in metrics)
        if headline:
            d = row["delta"]
            cells += ('<td class="num">-</td>' if d["n"] == 0 else
                      f'<td class="num">{d["mean"]:+.{headline.digits}f} &plusmn; {d["se"]:.{headline.digits}f}</td>')
        rows.append(f'<tr><td>{escape(row["column"])}</td><td class="num">{row["n"]}</td>{cells}'
                    f'<td class="num">{row["seconds"]:.1f}</td></tr>')
    table = (f'<table class="summary"><tr><th>column</th><th class="num">n</th>{head}{delta_head}'
             f'<th class="num">seconds</th></tr>{"".join(rows)}</table>')

    matrix_head = "<th>input</th>" + "".join(f'<th class="col">{escape(c.label)}</th>' for c in comparison.columns)
    matrix_rows = []
    for source, name in comparison.inputs:
        cells = [f"<td><figure>{thumbnail(thumbs, output, source, name)}<figcaption>{escape(name)}</figcaption>"
                 f"</figure></td>"]
        for c, column in enumerate(comparison.columns):
            outcome = by_cell.get((name, c))
            path = result_path(output, column, name)
            if outcome is None or not path.is_file():
                reason = failed.get((name, c), "not made")
                cells.append(f'<td><div class="missing">failed</div><p class="reason">{escape(reason)}</p></td>')
                continue
            side = read_sidecar(path.with_name(path.name + ".json")) or {}
            history = [(int(i), float(v)) for i, v in side.get("history") or []]
            score = (f'<div class="score">{escape(headline.label)} {outcome.scores[headline.name]:.{headline.digits}f}'
                     f"</div>" if headline else "")
            cells.append(f'<td><figure>{thumbnail(thumbs, output, str(path), column.label)}<figcaption>{score}'
                         f"{curve(history)}loss {outcome.loss:.4g} &middot; {outcome.seconds:.1f} s"
                         f"</figcaption></figure></td>")
        matrix_rows.append(f"<tr>{''.join(cells)}</tr>")
    matrix = f'<table class="matrix"><tr>{matrix_head}</tr>{"".join(matrix_rows)}</table>'

    failures = ""
    if comparison.failures:
        items = "".join(f'<tr><td>{escape(comparison.columns[c].label)}</td><td>{escape(name)}</td>'
                        f'<td class="reason">{escape(reason)}</td></tr>' for c, name, reason in comparison.failures)
        failures = (f'<section id="failures"><h2>Failed ({len(comparison.failures)})</h2><table class="failures">'
                    f"<tr><th>column</th><th>input</th><th>reason</th></tr>{items}</table></section>")

    recipes = []
    for i, (column, recipe) in enumerate(zip(comparison.columns, comparison.recipes)):
        pre = f'<pre class="toml">{escape(recipe_toml(recipe.to_dict()))}</pre>'
        recipes.append(f"<h3>{escape(column.label)} <code class=\"muted\">{escape(recipe.digest())}</code></h3>{pre}"
                       if i == 0 else f"<details><summary>{escape(column.label)} <code class=\"muted\">"
                       f"{escape(recipe.digest())}</code></summary>{pre}</details>")
    sheet = output / "sheet.png"
    sheet_link = f'<p><a href="{link(output, sheet)}">the contact sheet</a></p>' if sheet.is_file() else ""
    title = f"rvgen compare: {comparison.task}"
    wall = f", {meta['wall_seconds']:.0f} s" if isinstance(meta.get("wall_seconds"), (int, float)) else ""
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">{GENERATOR}<meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{STYLE}{COMPARE_STYLE}</style></head><body>"
            f"<header><h1>{escape(title)}</h1><p class=\"muted\">{escape(str(meta.get('recipe', '')))}: "
            f"{len(comparison.columns)} column(s) x {len(comparison.inputs)} input(s) on "
            f"{escape(', '.join(map(str, meta.get('devices', []))))}{wall}</p>{sheet_link}</header>"
            f"<h2>Summary (mean &plusmn; std over the inputs)</h2>{table}{failures}"
            f"<h2>Results</h2>{matrix}<h2>Recipes</h2>{''.join(recipes)}</body></html>\n")


def write_page(comparison: Comparison, output: Path, meta: dict[str, Any]) -> Path:
    """Write ``output/index.html`` atomically (``rvgen.html`` where a user's ``index.html`` is
    there: :func:`rvgen.report.write.page_path`); thumbnails it no longer shows are removed."""
    thumbs = Thumbnails(output)
    html = comparison_page(comparison, output, meta, thumbs)
    path, _ = save_page(output, html)
    thumbs.prune()
    return path
