"""Remakes the gallery: every shipped style recipe on four photos, before (the style
defaults before the change: style weight 5, one scale, 150 iterations) and after (the
recipe as shipped), one JPEG sheet per style in docs/images/gallery-STYLE.jpg (at most
300 kB each), and prints the independent Gram distance to the style and the content SSIM
of every result as a Markdown table.

    python benchmarks/gallery.py                      # 384 px, every shipped style recipe
    python benchmarks/gallery.py --size 256 --styles monet --photos tubingen
    python benchmarks/gallery.py --colors-photo chelsea   # the colour options: gallery-colors.jpg

Two processes can share the work on a 2-core machine (``--photos astronaut,chelsea`` in one,
``--photos coffee,tubingen`` in the other); a last run with every result cached writes the
complete sheets in a minute.

The fourth photo is the Tübingen photo from the project's shared images when it is there
(``--tubingen PATH``), else scikit-image's rocket. CPU: about 4-7 minutes per image at
384 px on one thread; the results are cached in --work, so a rerun only makes what is missing.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import torch
from PIL import Image

from rvgen import imageio, metrics, shipped
from rvgen.recipe import load_recipe
from rvgen.sheet import contact_sheet
from rvgen.tasks.colors import keep_colors

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ["skimage:astronaut", "skimage:chelsea", "skimage:coffee"]
TUBINGEN = ROOT.parent / "shared" / "images" / "tubingen.jpg"
BEFORE = ["task.style_weight=5.0", "optimizer.scales=1", "optimizer.iterations=150"]
MAX_BYTES = 300_000
COLORS = ("style", "content", "match")
MISSING = {"gram": float("nan"), "ssim": float("nan"), "seconds": float("nan")}  # a result not made (--cached)


def style_recipes() -> dict[str, Path]:
    """Shipped recipes of the style task whose style image ships with them."""
    out = {}
    for name, path in shipped.shipped().items():
        recipe = load_recipe(path)
        if recipe.task["name"] == "style" and recipe.task.get("init", "content") == "content":
            out[name] = path
    return out


def make(path: Path, overrides: list[str], source: str, size: int, cache: Path,
         cached_only: bool = False) -> tuple[torch.Tensor | None, dict]:
    """One result, cached as PNG with its time in a JSON file beside it, and its scores
    (None and NaN scores when ``cached_only`` and it is not in the cache)."""
    png, record = cache.parent / f"{cache.name}.png", cache.parent / f"{cache.name}.json"
    recipe = load_recipe(path, [f"output.size={size}", *overrides])
    content = imageio.load_image(source, size)
    refs = {name: imageio.load_image(src, side) for name, (src, side) in recipe.references().items()}
    if png.exists():
        image = imageio.load_image(png)
        seconds = json.loads(record.read_text())["seconds"] if record.exists() else float("nan")
    elif cached_only:
        return None, MISSING
    else:
        synth = recipe.build("cpu")
        synth.set_references(refs)
        start = time.perf_counter()
        image = synth.run(content).image.detach().float().cpu()
        seconds = time.perf_counter() - start
        png.parent.mkdir(parents=True, exist_ok=True)
        imageio.save_image(image, png)
        record.write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
    return image, score(image, refs["style"], content, seconds)


def score(image: torch.Tensor, style: torch.Tensor, content: torch.Tensor, seconds: float) -> dict:
    """The independent Gram distance to the style and the content SSIM of one result."""
    return {"gram": GRAM.distance(image, style), "ssim": metrics.ssim(image, content), "seconds": seconds}


def colors_sheet(recipes: dict[str, Path], photo: str, stem: str, args) -> None:
    """One row per style: the photo, the style, and the result with ``task.colors`` = style
    (the shipped recipe), content and match."""
    rows, images, captions = [], [], []
    print("| style | colors | Gram | SSIM | s |")
    print("|---|---|---|---|---|")
    for name, path in recipes.items():
        cache = args.work / str(args.size) / name
        row, caption = [imageio.load_image(photo, args.cell), imageio.load_image(load_recipe(path).task["style"], args.cell)], ["", ""]
        for colors in COLORS:
            if colors == "content":  # the style's result with the photo's colours: the task's finish step
                after, _ = make(path, [], photo, args.size, cache / f"{stem}.after", args.cached)
                image, sc = None, MISSING
                if after is not None:
                    content = imageio.load_image(photo, args.size)
                    source, side = load_recipe(path, [f"output.size={args.size}"]).references()["style"]
                    image = keep_colors(after, content)
                    sc = score(image, imageio.load_image(source, side), content, 0.0)
            else:
                overrides = [] if colors == "style" else [f"task.colors={colors}"]
                suffix = "after" if colors == "style" else f"colors-{colors}"
                image, sc = make(path, overrides, photo, args.size, cache / f"{stem}.{suffix}", args.cached)
            print(f"| {name} | {colors} | {sc['gram']:.4f} | {sc['ssim']:.3f} | {sc['seconds']:.0f} |", flush=True)
            row.append(image)
            caption.append(caption_of(sc))
        rows.append(name)
        images.append(row)
        captions.append(caption)
    sheet = contact_sheet(rows, ["photo", "style", *(f"colors = \"{c}\"" for c in COLORS)], images, captions,
                          cell=args.cell)
    save_jpeg(sheet, args.out / "gallery-colors.jpg")


def caption_of(sc: dict) -> str:
    return "" if math.isnan(sc["gram"]) else f"Gram {sc['gram']:.4f} SSIM {sc['ssim']:.2f}"


def save_jpeg(sheet: Image.Image, path: Path) -> None:
    """The sheet as JPEG, at the best quality that keeps it under MAX_BYTES."""
    for quality in range(90, 30, -5):
        buffer = io.BytesIO()
        sheet.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= MAX_BYTES:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--styles", help="comma list of shipped recipe names (default: every style recipe)")
    parser.add_argument("--photos", help="comma list of photo stems to keep (default: all four)")
    parser.add_argument("--tubingen", type=Path, default=TUBINGEN)
    parser.add_argument("--work", type=Path, default=ROOT / "rvgen-out" / "gallery")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--cell", type=int, default=256, help="long side of each picture in the sheet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--colors-photo", help="photo stem: make the colour options sheet for it instead")
    parser.add_argument("--cached", action="store_true", help="make no result: write the sheets from the cache "
                        "(a result not made yet leaves its cell blank)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos = PHOTOS + [str(args.tubingen) if args.tubingen.exists() else "skimage:rocket"]
    stems = {p: Path(p.split(":")[-1]).stem for p in photos}
    if args.photos:
        keep = set(args.photos.split(","))
        photos = [p for p in photos if stems[p] in keep]
    recipes = style_recipes()
    if args.styles:
        recipes = {k: recipes[k] for k in args.styles.split(",")}
    if args.colors_photo:
        photo = next(p for p in photos if stems[p] == args.colors_photo)
        colors_sheet(recipes, photo, args.colors_photo, args)
        return
    print("| style | photo | Gram before | Gram after | SSIM before | SSIM after | s before | s after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, path in recipes.items():
        rows, images, captions = [], [], []
        style_src = load_recipe(path).task["style"]
        for photo in photos:
            cache = args.work / str(args.size) / name
            before, b = make(path, BEFORE, photo, args.size, cache / f"{stems[photo]}.before", args.cached)
            after, a = make(path, [], photo, args.size, cache / f"{stems[photo]}.after", args.cached)
            print(f"| {name} | {stems[photo]} | {b['gram']:.4f} | {a['gram']:.4f} | {b['ssim']:.3f} | "
                  f"{a['ssim']:.3f} | {b['seconds']:.0f} | {a['seconds']:.0f} |", flush=True)
            rows.append(stems[photo])
            images.append([imageio.load_image(photo, args.cell), imageio.load_image(style_src, args.cell),
                           before, after])
            captions.append(["", "", caption_of(b), caption_of(a)])
        sheet = contact_sheet(rows, ["photo", "style", "before (style weight 5, one scale)",
                                     "after (the shipped recipe)"], images, captions, cell=args.cell)
        save_jpeg(sheet, args.out / f"gallery-{name}.jpg")


GRAM = metrics.GramEvaluator()

if __name__ == "__main__":
    main()
