"""The page of an output folder as HTML: one self-contained file, no scripts, no network.

It shows the summary figures, the failures with their reasons, the images not yet made, and
per recipe its resolved TOML, its reference images and a grid of cards, one per input: the
input (and the mask files it was styled by) beside its results (the variations together),
each with its loss curve (an inline SVG polyline of the sidecar's history), iterations,
time, device and recipe digest. Images are
thumbnails (:mod:`rvgen.report.thumbs`) linking to the full files by relative paths, so the
page opens from the disk, and the print style lays the cards out on paper. A clip plays
(HTML5 ``<video>``) beside its input, with its flicker: the temporal warping error of each
frame, the result's against the input's, as an inline SVG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import quote

from rvgen import imageio
from rvgen.batch.reporters import duration
from rvgen.recipe import recipe_toml
from rvgen.report.folder import Folder, Made, RecipeGroup
from rvgen.report.thumbs import Thumbnails
from rvgen.video.io import is_video_file

CURVE_WIDTH, CURVE_HEIGHT = 160, 40
REFERENCES_SHOWN = 12  # reference images a recipe shows (a style folder may hold hundreds)
GENERATOR = '<meta name="generator" content="rvgen">'  # says a page is rvgen's own (rvgen.report.write)

STYLE = """
:root { --fg: #1d1d1f; --muted: #6b6b70; --line: #d9d9de; --card: #f6f6f8; --bad: #b3261e; --ok: #1b7a3a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1280px; padding: 20px 24px 40px; background: #fff; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 0 0 8px; overflow-wrap: anywhere; }
code, pre { font: 12px/1.4 ui-monospace, "SF Mono", Menlo, Consolas, monospace; }
a { color: #0b57d0; }
.muted { color: var(--muted); }
.live { color: #8a5300; font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0 6px; }
.figure { background: var(--card); border-radius: 8px; padding: 6px 14px; min-width: 96px; }
.figure b { display: block; font-size: 22px; line-height: 1.2; }
.figure.bad b { color: var(--bad); }
.figure.ok b { color: var(--ok); }
table { border-collapse: collapse; margin: 6px 0; }
th, td { text-align: left; padding: 3px 12px 3px 0; vertical-align: top; border-bottom: 1px solid var(--line); }
th { font-weight: 600; color: var(--muted); }
td.num, th.num { text-align: right; }
.failures td.reason { color: var(--bad); }
.recipe-head { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
pre.toml { background: var(--card); border-radius: 8px; padding: 10px 12px; max-height: 240px; overflow: auto;
           margin: 0; flex: 0 1 560px; min-width: 280px; }
.refs { display: flex; gap: 10px; flex-wrap: wrap; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(350px, 1fr)); gap: 14px; margin-top: 14px; }
.card { border: 1px solid var(--line); border-radius: 10px; padding: 10px 12px 12px; break-inside: avoid; }
.row { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 160px; }
figure img { display: block; width: 160px; height: 160px; object-fit: contain; background: var(--card);
             border-radius: 6px; }
figure .missing { display: flex; width: 160px; height: 160px; align-items: center; justify-content: center;
                  background: var(--card); border-radius: 6px; color: var(--muted); text-align: center; }
figcaption { font-size: 12px; margin-top: 4px; overflow-wrap: anywhere; }
svg.curve { display: block; width: 160px; height: 40px; margin: 4px 0 2px; background: var(--card);
            border-radius: 4px; }
svg.curve polyline { fill: none; stroke: #0b57d0; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
figure video { display: block; width: 160px; height: 160px; object-fit: contain; background: var(--card);
               border-radius: 6px; }
svg.curve polyline.input { stroke: #b0b0b8; stroke-dasharray: 3 2; }
dl.facts { display: grid; grid-template-columns: auto 1fr; gap: 0 8px; margin: 2px 0 0; font-size: 12px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
ul.pending { columns: 3 220px; padding-left: 18px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  a { color: inherit; text-decoration: none; }
  pre.toml { max-height: none; overflow: visible; white-space: pre-wrap; }
  .grid { grid-template-columns: repeat(2, 1fr); }
  h2 { break-after: avoid; }
  .card, tr, figure { break-inside: avoid; }
}
"""


@dataclass(frozen=True)
class LiveStatus:
    """A run still going: shown at the top of a page written while it works."""

    started: str
    done: int
    failed: int
    total: int
    updated: str


def when(iso: str) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM`` (as recorded, when it is not one)."""
    return iso[:16].replace("T", " ") if len(iso) >= 16 and iso[10:11] == "T" else iso


def link(page_folder: Path, target: str | Path) -> str:
    """A URL from the page to ``target``: relative when it can be, else a file URI."""
    path = Path(target)
    try:
        rel = os.path.relpath(path.resolve(), page_folder.resolve())
    except ValueError:  # another drive
        return path.resolve().as_uri()
    return quote(Path(rel).as_posix())


def curve(history: Sequence[tuple[int, float]]) -> str:
    """The loss over the iterations as an inline SVG polyline (log scale), or '' with fewer
    than two points."""
    points = [(i, math.log10(v)) for i, v in history if v > 0 and math.isfinite(v)]
    if len(points) < 2:
        return ""
    x0, x1 = points[0][0], points[-1][0]
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    sx = (CURVE_WIDTH - 4) / ((x1 - x0) or 1)
    sy = (CURVE_HEIGHT - 6) / ((y1 - y0) or 1)
    coords = " ".join(f"{2 + (i - x0) * sx:.1f},{3 + (y1 - y) * sy:.1f}" for i, y in points)
    first, last = history[0][1], history[-1][1]
    return (f'<svg class="curve" viewBox="0 0 {CURVE_WIDTH} {CURVE_HEIGHT}" preserveAspectRatio="none" '
            f'role="img" aria-label="loss curve"><title>loss {first:.3g} to {last:.3g} '
            f'over {history[-1][0]} iterations (log scale)</title><polyline points="{coords}"/></svg>')


def flicker_curve(frames: Sequence[Sequence[float]]) -> str:
    """The temporal warping error per frame as an inline SVG: the result's (solid) over the
    input's (dashed), one linear scale from 0; '' with fewer than two frames."""
    points = [(float(i), float(r), float(s)) for i, r, s in frames
              if all(math.isfinite(float(v)) for v in (i, r, s))]
    if len(points) < 2:
        return ""
    x0, x1 = points[0][0], points[-1][0]
    top = max(max(r, s) for _, r, s in points) or 1.0
    sx, sy = (CURVE_WIDTH - 4) / ((x1 - x0) or 1), (CURVE_HEIGHT - 6) / top

    def line(k: int, cls: str) -> str:
        coords = " ".join(f"{2 + (p[0] - x0) * sx:.1f},{CURVE_HEIGHT - 3 - p[k] * sy:.1f}" for p in points)
        return f'<polyline class="{cls}" points="{coords}"/>'

    return (f'<svg class="curve flicker" viewBox="0 0 {CURVE_WIDTH} {CURVE_HEIGHT}" preserveAspectRatio="none" '
            f'role="img" aria-label="flicker per frame"><title>temporal warping error per frame, frames '
            f'{int(x0)} to {int(x1)}: result (solid) and input (dashed)</title>{line(2, "input")}{line(1, "result")}'
            "</svg>")


def video(page_folder: Path, source: str | Path, label: str) -> str:
    """A clip playing on the page (muted, looping, with controls); its caption links to the file."""
    return (f'<video src="{link(page_folder, source)}" controls muted loop playsinline preload="metadata" '
            f'aria-label="{escape(label, quote=True)}"></video>')


def thumbnail(thumbs: Thumbnails, page_folder: Path, source: str, label: str) -> str:
    """An image's thumbnail, linking to the full image when it is a file."""
    thumb = thumbs.of(source)
    if thumb is None:
        return f'<div class="missing">{escape(label)}<br>(cannot be read)</div>'
    img = f'<img src="{link(page_folder, thumb)}" alt="{escape(label, quote=True)}">'
    if not imageio.is_sample(source) and Path(source).is_file():
        return f'<a href="{link(page_folder, source)}">{img}</a>'
    return img


class PageWriter:
    def __init__(self, folder: Folder, thumbs: Thumbnails, page_folder: Path):
        self.folder, self.thumbs, self.at = folder, thumbs, page_folder

    def image(self, source: str, label: str) -> str:
        if not imageio.is_sample(source) and is_video_file(Path(source)):
            return video(self.at, source, label)
        return thumbnail(self.thumbs, self.at, source, label)

    def result(self, made: Made) -> str:
        facts = [("loss", f"{made.loss:.4g}" if made.loss is not None else "-"),
                 ("iterations", str(made.iterations)), ("time", f"{made.seconds:.1f} s"),
                 ("device", made.device), ("recipe", f"<code>{escape(made.digest[:8])}</code>")]
        clip = made.clip
        flicker = clip.get("flicker") if clip else None
        if clip:
            passes = f", {clip['passes']} passes" if clip.get("passes", 1) > 1 else ""
            facts[1:1] = [("frames", f"{clip.get('frames', '?')} in {len(clip.get('shots') or [0])} shot(s){passes}")]
            if len(clip.get("workers") or {}) > 1:  # its shots shared among workers
                facts.append(("made by", ", ".join(f"{w} ({n})" for w, n in sorted(clip["workers"].items()))))
        if isinstance(flicker, dict):
            facts[1:1] = [("flicker", f"{flicker.get('result', 0):.2e} (input {flicker.get('input', 0):.2e})")]
        rows = "".join(f"<dt>{name}</dt><dd>{value if name == 'recipe' else escape(value)}</dd>"
                       for name, value in facts)
        plot = flicker_curve(flicker.get("frames") or []) if isinstance(flicker, dict) else curve(made.history)
        return (f'<figure class="result">{self.image(str(made.path), made.name)}'
                f'<figcaption><a href="{link(self.at, made.path)}">{escape(made.name)}</a>'
                f'{plot}<dl class="facts">{rows}</dl></figcaption></figure>')

    def group(self, group: RecipeGroup) -> str:
        description = group.resolved.get("description") or ""
        shown = list(group.references.items())[:REFERENCES_SHOWN]
        refs = "".join(f'<figure>{self.image(source, name)}<figcaption>{escape(name)}: '
                       f'{escape(Path(source).name if not imageio.is_sample(source) else source)}'
                       f'</figcaption></figure>' for name, source in shown)
        if len(group.references) > len(shown):
            refs += f'<p class="muted">and {len(group.references) - len(shown)} more reference images</p>'
        cards = []
        for item in group.inputs:
            label = item.name
            source = (f'<figure class="input">{self.image(item.source, label)}<figcaption>input</figcaption></figure>'
                      if item.source else "")
            masks = item.results[0].mask_files if item.results else {}
            source += "".join(f'<figure class="input">{self.image(path, name)}<figcaption>{escape(name)}</figcaption>'
                              f'</figure>' for name, path in masks.items())
            results = "".join(self.result(m) for m in item.results)
            cards.append(f'<article class="card"><h3>{escape(label)}</h3><div class="row">{source}{results}</div>'
                         f'</article>')
        return (f'<section class="recipe"><h2>{escape(group.source)} <code class="muted">{escape(group.digest)}</code>'
                f' <span class="muted">({group.count} image{"s" if group.count != 1 else ""})</span></h2>'
                + (f"<p>{escape(description)}</p>" if description else "")
                + f'<div class="recipe-head"><pre class="toml">{escape(recipe_toml(group.resolved))}</pre>'
                + (f'<div class="refs">{refs}</div>' if refs else "")
                + f'</div><div class="grid">{"".join(cards)}</div></section>')

    def figures(self) -> str:
        f = self.folder
        boxes = [("ok" if f.results else "", len(f.results), "done"),
                 ("bad" if f.failures else "", len(f.failures), "failed"),
                 ("", len(f.pending), "not yet made"),
                 ("", duration(f.seconds), "time" if f.runs else "image time")]
        out = '<div class="figures">' + "".join(
            f'<div class="figure {cls}"><b>{value}</b>{label}</div>' for cls, value, label in boxes) + "</div>"
        if f.devices:
            rows = "".join(f'<tr><td>{escape(d.device)}</td><td class="num">{d.images}</td>'
                           f'<td class="num">{"-" if d.per_hour is None else f"{d.per_hour:.1f}"}</td></tr>'
                           for d in f.devices)
            out += ('<table class="devices"><tr><th>device</th><th class="num">images</th>'
                    f'<th class="num">images per hour</th></tr>{rows}</table>')
        return out

    def failures(self) -> str:
        if not self.folder.failures:
            return ""
        rows = "".join(f'<tr><td>{escape(x.input)}{f" (variation {x.variation})" if x.variation else ""}</td>'
                       f'<td>{escape(x.name)}</td><td class="reason">{escape(x.reason)}</td>'
                       f'<td class="muted">{escape(when(x.time))}</td></tr>' for x in self.folder.failures)
        return (f'<section id="failures"><h2>Failed ({len(self.folder.failures)})</h2><table class="failures">'
                f'<tr><th>input</th><th>output</th><th>reason</th><th>when</th></tr>{rows}</table></section>')

    def pending(self) -> str:
        if not self.folder.pending:
            return ""
        items = "".join(f"<li>{escape(p.input)} &rarr; {escape(p.name)}</li>" for p in self.folder.pending)
        return (f'<section id="pending"><h2>Not yet made ({len(self.folder.pending)})</h2>'
                f'<ul class="pending">{items}</ul></section>')

    def skipped(self) -> str:
        if not self.folder.skipped:
            return ""
        items = "".join(f"<li>{escape(line)}</li>" for line in self.folder.skipped)
        return (f'<section id="skipped"><h2>Not read ({len(self.folder.skipped)})</h2><p class="muted">Files of '
                f'the folder whose content rvgen does not trust, left out of this page:</p><ul>{items}</ul></section>')

    def runs(self, last: int = 5) -> str:
        if not self.folder.runs:
            return ""
        rows = []
        for r in reversed(self.folder.runs[-last:]):
            stopped = f" ({r['signal']})" if r.get("signal") else ""
            rows.append(f"<tr><td>{escape(when(str(r.get('started', ''))))}</td>"
                        f"<td>{escape(str(r.get('recipe', '')))}</td>"
                        f'<td class="num">{escape(str(r.get("done", 0)))}</td>'
                        f'<td class="num">{escape(str(r.get("failed", 0)))}</td>'
                        f'<td class="num">{int(r.get("not_started") or 0) + int(r.get("abandoned") or 0)}</td>'
                        f'<td class="num">{duration(float(r.get("seconds", 0) or 0))}{escape(stopped)}</td></tr>')
        return ('<section id="runs"><h2>Runs</h2><table><tr><th>started</th><th>recipe</th><th class="num">done</th>'
                '<th class="num">failed</th><th class="num" title="abandoned part way or not started">not made</th><th class="num">took</th></tr>'
                + "".join(rows) + "</table></section>")

    def page(self, live: LiveStatus | None = None) -> str:
        title = self.folder.path.resolve().name or str(self.folder.path)
        status = ""
        if live is not None:
            status = (f'<p class="live">A run is going (started {escape(when(live.started))}): {live.done} of '
                      f'{live.total} done, {live.failed} failed; this page was written at {escape(live.updated)} '
                      f'and is rewritten every half minute or so.</p>')
        body = "".join(self.group(g) for g in self.folder.groups)
        if not self.folder.groups:
            body = '<p class="muted">No images made yet.</p>'
        return ("<!DOCTYPE html>\n"
                f'<html lang="en"><head><meta charset="utf-8">{GENERATOR}<meta name="viewport" '
                f'content="width=device-width, initial-scale=1"><title>rvgen: {escape(title)}</title>'
                f"<style>{STYLE}</style></head><body>"
                f'<header><h1>rvgen: {escape(title)}</h1><p class="muted">{escape(str(self.folder.path))}</p>'
                f"{status}{self.figures()}</header>"
                f"{self.failures()}{self.pending()}{self.skipped()}{body}{self.runs()}</body></html>\n")
