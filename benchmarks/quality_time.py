"""Quality against CPU time: the frontier of the style recipes' settings on this machine.

For every setting (a list of ``--set`` overrides on a shipped recipe), every style and every
photo, one result at ``--size`` px, with

- the **CPU seconds** it took (user + system time of the process that made it, so the split
  into workers and threads hides no work),
- the **Gram distance** to the painting at the result's size on a random VGG-19 of another
  seed than the recipe's (:func:`rvgen.metrics.gram_distance`: not the optimised loss),
- the **content SSIM** against the photo,

then a Markdown table per setting (means, and the ratios to the first setting, ``today``,
image by image), a PNG chart (CPU time on x, Gram distance on y, one point per setting) and a
contact sheet (photo, painting, then each setting's picture).

    python benchmarks/quality_time.py --help
    python benchmarks/quality_time.py                      # 384 px, three styles, three photos
    python benchmarks/quality_time.py --settings today,shipped --styles monet --photos chelsea
    python benchmarks/quality_time.py --list               # the settings and their overrides

``today`` is the style recipes as they were before this benchmark (every key written out, so
a change of the shipped recipes does not move it); ``shipped`` is each recipe as it ships now.
Results are cached under ``--work`` with their times, so an interrupted run resumes and a new
setting only makes its own pictures; ``--jobs 2`` runs two images at a time, one torch thread
each (CPU time per image is the same at any split; see ``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = {"astronaut": "skimage:astronaut", "chelsea": "skimage:chelsea", "coffee": "skimage:coffee",
          "rocket": "skimage:rocket"}
STYLES = ("monet", "starry_night", "great_wave")

PINNED = [  # what every style recipe ran with before the frontier was measured, every key written out
    "task.content_weight=1.0", "task.style_scale=1.0", "task.weighting='auto'", "task.style_loss='gram'",
    "task.colors='style'", "task.seed=0",
    "backbone.name='random-vgg19'", "backbone.seed=0", "backbone.init='uniform'", "backbone.pooling='avg'",
    "backbone.normalize='imagenet'", "backbone.padding='zeros'",
    "optimizer.name='lbfgs'", "optimizer.scale_step=2.0", "optimizer.min_size=64", "optimizer.history=50",
    "optimizer.line_search=true", "optimizer.tolerance=0.0", "optimizer.precision='fp32'",
    "optimizer.parametrization='pixels'",
]
PAINTED = PINNED + [  # starry_night, monet, great_wave: from the photo, coarse to fine, 100 iterations a level
    "task.style_weight=20.0", "task.tv_weight=0.5", "task.init='content'",
    "optimizer.scales=3", "optimizer.iterations=100", "optimizer.scale_iterations=100",
]
TODAY = {name: PAINTED for name in STYLES}
TODAY["scream"] = PINNED + [  # from noise, one scale of 300 iterations
    "task.style_weight=5.0", "task.tv_weight=0.0", "task.init='noise'",
    "optimizer.scales=1", "optimizer.iterations=300",
]


def levels(*budgets: int, step: float = 2.0) -> list[str]:
    """A pyramid of len(budgets) levels from 32 px, these iterations at each, smallest first."""
    return [f"optimizer.scales={len(budgets)}", "optimizer.min_size=32", f"optimizer.scale_step={step}",
            f"optimizer.scale_iterations={list(budgets[:-1])}", f"optimizer.iterations={budgets[-1]}"]


SHIPPED = levels(50, 15, 10) + ["optimizer.upsample_detail=true", "task.style_weight=30.0"]
"""The schedule the painted recipes ship (written out, so the levers below vary only one thing)."""

SETTINGS: dict[str, list[str] | None] = {  # overrides on each recipe's TODAY pins; None: the recipe as shipped
    "today": [],
    "shipped": None,
    # where the iterations go
    "100/50/15": ["optimizer.scale_iterations=[100, 50]", "optimizer.iterations=15"],
    "200/50/10": ["optimizer.scale_iterations=[200, 50]", "optimizer.iterations=10"],
    "4 levels 200/100/30/8": levels(200, 100, 30, 8),
    "4 levels 200/100/25/5": levels(200, 100, 25, 5),
    "4 levels 300/150/20/4": levels(300, 150, 20, 4),
    "sqrt2 levels 150/80/40/20/8": levels(150, 80, 40, 20, 8, step=2 ** 0.5),
    "3 levels 100/40/10": levels(100, 40, 10) + ["optimizer.min_size=64"],
    "4 levels 150/80/30/8": levels(150, 80, 30, 8),
    "4 levels 100/60/30/10": levels(100, 60, 30, 10),
    "3 levels 60/20/12": levels(60, 20, 12) + ["optimizer.min_size=64"],
    "3 levels 80/30/12": levels(80, 30, 12) + ["optimizer.min_size=64"],
    "4 levels 60/40/20/12": levels(60, 40, 20, 12),
    "3 levels 60/20/12 style 30": levels(60, 20, 12) + ["optimizer.min_size=64", "task.style_weight=30.0"],
    "3 levels 40/15/15": levels(40, 15, 15) + ["optimizer.min_size=64"],
    "3 levels 40/15/15 style 30": levels(40, 15, 15) + ["optimizer.min_size=64", "task.style_weight=30.0"],
    "3 levels 60/20/12 detail": levels(60, 20, 12) + ["optimizer.min_size=64", "optimizer.upsample_detail=true"],
    "3 levels 60/20/12 detail style 25": levels(60, 20, 12) + ["optimizer.min_size=64",
                                                              "optimizer.upsample_detail=true",
                                                              "task.style_weight=25.0"],
    "3 levels 50/15/10 detail": levels(50, 15, 10) + ["optimizer.min_size=64", "optimizer.upsample_detail=true"],
    "3 levels 50/15/10 detail style 25": levels(50, 15, 10) + ["optimizer.min_size=64",
                                                              "optimizer.upsample_detail=true",
                                                              "task.style_weight=25.0"],
    "shipped + reflect padding": SHIPPED + ["backbone.padding='reflect'"],
    "shipped + plateau stop": SHIPPED + ["optimizer.tolerance=0.01", "optimizer.iterations=30"],
    "shipped with adam": SHIPPED + ["optimizer.name='adam'"],
    "plateau stop": ["optimizer.tolerance=0.01"],
    # the picture's edges
    "reflect padding": ["backbone.padding='reflect'"],
    "4 levels 200/100/25/5 reflect": levels(200, 100, 25, 5) + ["backbone.padding='reflect'"],
    # the other optimiser
    "adam 4 levels 200/100/25/5": levels(200, 100, 25, 5) + ["optimizer.name='adam'"],
    # from noise (scream)
    "4 levels 300/150/40/10": levels(300, 150, 40, 10),
    "4 levels 300/150/40/10 detail": levels(300, 150, 40, 10) + ["optimizer.upsample_detail=true"],
    "4 levels 300/150/40/10 detail style 10": levels(300, 150, 40, 10) + ["optimizer.upsample_detail=true",
                                                                         "task.style_weight=10.0"],
    "4 levels 300/150/40/10 detail style 20": levels(300, 150, 40, 10) + ["optimizer.upsample_detail=true",
                                                                         "task.style_weight=20.0"],
    "4 levels 300/150/40/10 style 20": levels(300, 150, 40, 10) + ["task.style_weight=20.0"],
    "4 levels 300/100/25/5": levels(300, 100, 25, 5),
}


def overrides_of(setting: str, recipe: str) -> list[str]:
    extra = SETTINGS[setting]
    return [] if extra is None else TODAY[recipe] + extra


def make(setting: str, style: str, photo: str, size: int, work: Path, threads: int) -> dict:
    """One result, cached in ``work`` as PNG with its CPU and wall time in a JSON file beside it."""
    import torch

    from rvgen import imageio, shipped
    from rvgen.recipe import load_recipe

    png, record = cache_paths(work, size, setting, style, photo)
    if png.exists() and record.exists():
        return json.loads(record.read_text())
    torch.set_num_threads(threads)
    overrides = overrides_of(setting, style)
    recipe = load_recipe(shipped.resolve(style), [f"output.size={size}", *overrides])
    content = imageio.load_image(PHOTOS[photo], size)
    refs = {name: imageio.load_image(src, side) for name, (src, side) in recipe.references().items()}
    synth = recipe.build("cpu")
    synth.set_references(refs)
    cpu, wall = time.process_time(), time.perf_counter()
    result = synth.run(content)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    png.parent.mkdir(parents=True, exist_ok=True)
    imageio.save_image(result.image.detach().float().cpu(), png)
    data = {"cpu": cpu, "wall": wall, "threads": threads, "iterations": result.iterations,
            "evaluations": result.evaluations, "loss": result.loss, "overrides": overrides}
    record.write_text(json.dumps(data))
    return data


def cache_paths(work: Path, size: int, setting: str, style: str, photo: str) -> tuple[Path, Path]:
    folder = work / str(size) / "".join(c if c.isalnum() or c in "-_" else "_" for c in setting)
    return folder / f"{style}.{photo}.png", folder / f"{style}.{photo}.json"


def score(png: Path, style: str, photo: str, size: int) -> dict:
    from rvgen import imageio, metrics, shipped
    from rvgen.recipe import load_recipe

    image = imageio.load_image(png)
    source, side = load_recipe(shipped.resolve(style), [f"output.size={size}"]).references()["style"]
    return {"gram": metrics.gram_distance(image, imageio.load_image(source, side)),
            "ssim": metrics.ssim(image, imageio.load_image(PHOTOS[photo], size))}


def summarise(rows: dict[str, list[dict]], base: str) -> list[dict]:
    """One line per setting: means, and the mean per-image ratios to ``base``."""
    lines = []
    reference = {(r["style"], r["photo"]): r for r in rows.get(base, [])}
    for setting, results in rows.items():
        pairs = [(r, reference.get((r["style"], r["photo"]))) for r in results]
        pairs = [(r, b) for r, b in pairs if b is not None]
        mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
        lines.append({
            "setting": setting, "images": len(results),
            "cpu": mean([r["cpu"] for r in results]),
            "gram": mean([r["gram"] for r in results]), "ssim": mean([r["ssim"] for r in results]),
            "cpu_ratio": mean([r["cpu"] / b["cpu"] for r, b in pairs]),
            "gram_ratio": mean([r["gram"] / b["gram"] for r, b in pairs]),
            "gram_worst": max([r["gram"] / b["gram"] for r, b in pairs], default=math.nan),
            "ssim_delta": mean([r["ssim"] - b["ssim"] for r, b in pairs]),
        })
    return lines


def table(lines: list[dict], base: str) -> str:
    out = [f"| setting | images | CPU s/image | x {base} | Gram distance | x {base} (worst image) | "
           f"content SSIM | - {base} |", "|---|---|---|---|---|---|---|---|"]
    for line in lines:
        out.append(f"| {line['setting']} | {line['images']} | {line['cpu']:.0f} | {line['cpu_ratio']:.2f} | "
                   f"{line['gram']:.4f} | {line['gram_ratio']:.2f} ({line['gram_worst']:.2f}) | "
                   f"{line['ssim']:.3f} | {line['ssim_delta']:+.3f} |")
    return "\n".join(out)


def chart(lines: list[dict], path: Path, title: str) -> None:
    """CPU seconds per image (x) against the mean Gram distance (y), one labelled point per setting."""
    from PIL import Image, ImageDraw

    width, height, margin = 900, 560, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    points = [(line["cpu"], line["gram"], line["setting"]) for line in lines
              if math.isfinite(line["cpu"]) and math.isfinite(line["gram"])]
    if not points:
        return
    x_max = max(p[0] for p in points) * 1.1
    y_max = max(p[1] for p in points) * 1.15
    plot = (margin, margin // 2, width - margin // 2, height - margin)

    def at(x: float, y: float) -> tuple[float, float]:
        return (plot[0] + (plot[2] - plot[0]) * x / x_max, plot[3] - (plot[3] - plot[1]) * y / y_max)

    draw.rectangle(plot, outline="black")
    for k in range(6):
        x, y = x_max * k / 5, y_max * k / 5
        px, _ = at(x, 0)
        _, py = at(0, y)
        draw.line([(px, plot[3]), (px, plot[3] + 5)], fill="black")
        draw.text((px - 12, plot[3] + 8), f"{x:.0f}", fill="black")
        draw.line([(plot[0] - 5, py), (plot[0], py)], fill="black")
        draw.text((4, py - 6), f"{y:.4f}", fill="black")
    draw.text((width // 2 - 90, height - 24), "CPU seconds per image (user + system)", fill="black")
    draw.text((plot[0] + 8, plot[1] + 6), title, fill="black")
    for x, y, name in points:
        px, py = at(x, y)
        colour = "red" if name == "today" else "blue" if name == "shipped" else "black"
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        draw.text((px + 7, py - 6), name, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--styles", default=",".join(STYLES), help="shipped recipe names, comma separated")
    parser.add_argument("--photos", default="astronaut,chelsea,coffee",
                        help=f"comma list of {', '.join(PHOTOS)}")
    parser.add_argument("--settings", default="today,shipped", help="comma list of setting names (--list)")
    parser.add_argument("--jobs", type=int, default=2, help="images made at once (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per image")
    parser.add_argument("--work", type=Path, default=ROOT / "rvgen-out" / "quality_time")
    parser.add_argument("--chart", type=Path, default=None, help="PNG chart to write")
    parser.add_argument("--sheet", type=Path, default=None, help="JPEG contact sheet to write")
    parser.add_argument("--cell", type=int, default=256, help="long side of each picture in the sheet")
    parser.add_argument("--cached", action="store_true", help="make nothing: report what is cached")
    parser.add_argument("--list", action="store_true", help="print the settings and their overrides")
    args = parser.parse_args()
    if args.list:
        for recipe, pins in (("monet, starry_night, great_wave", PAINTED), ("scream", TODAY["scream"])):
            print(f"today ({recipe}): {' '.join(pins)}")
        for name, extra in SETTINGS.items():
            print(f"{name}: {'the shipped recipe' if extra is None else 'today + ' + (' '.join(extra) or '(nothing)')}")
        return
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; see --list")
    styles, photos = args.styles.split(","), args.photos.split(",")
    cells = [(s, st, ph) for s in settings for st in styles for ph in photos]
    todo = [c for c in cells if not all(p.exists() for p in cache_paths(args.work, args.size, *c))]
    if todo and not args.cached:
        from joblib import Parallel, delayed

        print(f"making {len(todo)} results, {args.jobs} at a time, {args.threads} thread(s) each", flush=True)
        Parallel(n_jobs=args.jobs, verbose=10)(
            delayed(make)(s, st, ph, args.size, args.work, args.threads) for s, st, ph in todo)
    rows: dict[str, list[dict]] = {}
    pictures: dict[tuple[str, str, str], Path] = {}
    for s, st, ph in cells:
        png, record = cache_paths(args.work, args.size, s, st, ph)
        if not record.exists():
            continue
        data = json.loads(record.read_text())
        rows.setdefault(s, []).append({"style": st, "photo": ph, **data, **score(png, st, ph, args.size)})
        pictures[(s, st, ph)] = png
    base = settings[0]
    for s, results in rows.items():
        for r in results:
            print(f"  {s} | {r['style']} | {r['photo']} | CPU {r['cpu']:.0f} s | {r['iterations']} it, "
                  f"{r['evaluations']} ev | Gram {r['gram']:.4f} | SSIM {r['ssim']:.3f}")
    lines = summarise(rows, base)
    print(f"\n{args.size} px, {', '.join(styles)} on {', '.join(photos)}\n")
    print(table(lines, base))
    if args.chart:
        chart(lines, args.chart, f"{args.size} px: {', '.join(styles)} x {', '.join(photos)}")
        print(f"chart: {args.chart}")
    if args.sheet:
        write_sheet(args, settings, styles, photos, pictures, rows)


def write_sheet(args, settings, styles, photos, pictures, rows) -> None:
    from rvgen import imageio, shipped
    from rvgen.recipe import load_recipe
    from rvgen.sheet import contact_sheet

    scores = {(s, r["style"], r["photo"]): r for s, results in rows.items() for r in results}
    names, images, captions = [], [], []
    for st in styles:
        painting = imageio.load_image(load_recipe(shipped.resolve(st)).task["style"], args.cell)
        for ph in photos:
            names.append(f"{st} / {ph}")
            row = [imageio.load_image(PHOTOS[ph], args.cell), painting]
            caption = ["", ""]
            for s in settings:
                png = pictures.get((s, st, ph))
                row.append(imageio.load_image(png, args.cell) if png else None)
                r = scores.get((s, st, ph))
                caption.append(f"{r['cpu']:.0f} s, Gram {r['gram']:.4f}, SSIM {r['ssim']:.2f}" if r else "")
            images.append(row)
            captions.append(caption)
    sheet = contact_sheet(names, ["photo", "painting", *settings], images, captions, cell=args.cell)
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.convert("RGB").save(args.sheet, quality=85, optimize=True)
    print(f"sheet: {args.sheet}")


if __name__ == "__main__":
    main()
