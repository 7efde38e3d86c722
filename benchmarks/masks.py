"""Masked style transfer, measured: the figures and images of docs/gallery.md ("Style where you want it").

    python benchmarks/masks.py            # about 15 minutes on 2 CPU cores; results kept in rvgen-out/masks/

On one photo (skimage:chelsea at 384 px) with Monet's recipe (recipes/monet.toml, its three
pyramid levels), it runs:

- the unmasked style, and the style under a mask over the right half, once for each way the
  mask reaches the layers (mask_propagation = resize, inside, all);
- two regions, the left half in Monet's style and the right half in Van Gogh's (Starry Night).

and prints, for each masked run, the PSNR of the kept half against the photo (beyond the
feathered edge), the Gram distance of the styled half to the painting (on the independent
evaluator network, :func:`rvgen.metrics.gram_distance`) next to the unmasked run's and the
photo's own, the styled strip along the edge (the Gram distance of the 48 px next to it,
which a mask that reaches the layers too narrowly leaves weaker), and the width of a band
inside the edge that the style does not reach (columns changed less than half as much,
relative to the unmasked run, as deep inside). For the two regions, each half's distance to both paintings.
It writes docs/images/masked.jpg (photo, mask, unmasked, masked, two regions) and
docs/images/mask_edge.jpg (the edge, 3x, for each propagation).
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rvgen import imageio, metrics
from rvgen.pipeline import Pipeline
from rvgen.recipe import parse_recipe
from rvgen.tasks.builtin import MASK_PROPAGATION

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "rvgen-out" / "masks"
PHOTO, SIZE, MARGIN = "skimage:chelsea", 384, 8  # MARGIN: px from the edge left out of "outside"
MONET, STARRY = ROOT / "recipes/styles/monet.jpg", ROOT / "recipes/styles/starry_night.jpg"
MODES = ("resize", "inside", "all")
DEFAULT = MASK_PROPAGATION.default  # the sheet shows the results of the default


def recipe(**task):
    data = tomllib.loads((ROOT / "recipes/monet.toml").read_text())
    data = copy.deepcopy(data)
    data["task"].update(task)
    data["output"]["size"] = SIZE
    return parse_recipe(data, base_dir=ROOT / "recipes")


def run(name: str, rec) -> torch.Tensor:
    """The result of ``rec`` on the photo, cached as rvgen-out/masks/NAME.png."""
    path = OUT / f"{name}.png"
    if not path.exists():
        started = time.perf_counter()
        (out,) = Pipeline(rec).run([PHOTO])
        out.image.save(path)
        print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return imageio.load_image(str(path))


def profile(result: torch.Tensor, photo: torch.Tensor) -> np.ndarray:
    """Mean absolute change from the photo in each column."""
    return (result - photo).abs().mean(dim=(0, 1, 2)).numpy()


def weak_band(change: np.ndarray, plain: np.ndarray, edge: int) -> int:
    """Columns inside the edge (of the first 64) where the masked run changed the photo less than
    half as much, relative to the unmasked run, as it does deep inside: the width of a band the
    style does not reach (a halo of the photo), 0 when it reaches the edge."""
    ratio = np.convolve(change, np.ones(4) / 4, "same") / np.maximum(np.convolve(plain, np.ones(4) / 4, "same"), 1e-6)
    deep = float(np.median(ratio[edge + 64:]))
    return int((ratio[edge:edge + 64] < 0.5 * deep).sum())


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    photo = imageio.load_image(PHOTO, SIZE)
    h, w = photo.shape[-2:]
    edge = w // 2
    masks = Path(tempfile.mkdtemp())
    half = np.zeros((h, w), np.uint8)
    half[:, edge:] = 255
    Image.fromarray(half).save(masks / "right.png")
    Image.fromarray(255 - half).save(masks / "left.png")
    monet = imageio.load_image(str(MONET), SIZE)
    starry = imageio.load_image(str(STARRY), SIZE)
    inside = (slice(None), slice(None), slice(None), slice(edge + MARGIN, None))
    outside = (slice(None), slice(None), slice(None), slice(None, edge - MARGIN))
    strip = (slice(None), slice(None), slice(None), slice(edge, edge + 48))

    unmasked = run("unmasked", recipe())
    figures = {"photo": {"gram_inside": metrics.gram_distance(photo[inside], monet)},
               "unmasked": {"gram_inside": metrics.gram_distance(unmasked[inside], monet),
                            "gram_strip": metrics.gram_distance(unmasked[strip], monet)}}
    results = {}
    for mode in MODES:
        rec = recipe(mask=str(masks / "right.png"), mask_propagation=mode)
        result = results[mode] = run(f"masked-{mode}", rec)
        figures[mode] = {
            "psnr_outside": metrics.psnr(result[outside], photo[outside]),
            "gram_inside": metrics.gram_distance(result[inside], monet),
            "gram_strip": metrics.gram_distance(result[strip], monet),
            "weak_band_px": weak_band(profile(result, photo), profile(unmasked, photo), edge),
        }
    left = (slice(None), slice(None), slice(None), slice(None, edge - MARGIN))
    two = {}
    for mode in ("resize", "all"):  # inside leaves a band unstyled at the edge (see above): not run
        regions = recipe(style=None, mask_propagation=mode, regions=[
            {"mask": str(masks / "left.png"), "style": str(MONET)},
            {"mask": str(masks / "right.png"), "style": str(STARRY)},
        ])
        two[mode] = run("two-regions" if mode == "resize" else f"two-regions-{mode}", regions)
        figures[f"two_regions_{mode}"] = {
            "left_to_monet": metrics.gram_distance(two[mode][left], monet),
            "left_to_starry": metrics.gram_distance(two[mode][left], starry),
            "right_to_monet": metrics.gram_distance(two[mode][inside], monet),
            "right_to_starry": metrics.gram_distance(two[mode][inside], starry),
        }
    figures["photo"].update(left_to_monet=metrics.gram_distance(photo[left], monet),
                            left_to_starry=metrics.gram_distance(photo[left], starry),
                            right_to_monet=metrics.gram_distance(photo[inside], monet),
                            right_to_starry=metrics.gram_distance(photo[inside], starry))
    print(json.dumps(figures, indent=2))
    (OUT / "figures.json").write_text(json.dumps(figures, indent=2))

    pil = [imageio.to_pil(t) for t in (photo, torch.from_numpy(half / 255.0).float().expand(1, 3, h, w),
                                       unmasked, results[DEFAULT], two[DEFAULT])]
    sheet = Image.new("RGB", (sum(p.width for p in pil) + 6 * (len(pil) - 1), h), "white")
    x = 0
    for p in pil:
        sheet.paste(p, (x, 0))
        x += p.width + 6
    sheet.thumbnail((1400, 400))
    (ROOT / "docs/images").mkdir(exist_ok=True)
    sheet.save(ROOT / "docs/images/masked.jpg", quality=85, optimize=True)
    crops = [imageio.to_pil(results[m][..., h // 2 - 40:h // 2 + 40, edge - 40:edge + 40]).resize((240, 240),
                                                                                                  Image.NEAREST)
             for m in MODES]
    edges = Image.new("RGB", (240 * len(crops) + 6 * (len(crops) - 1), 240), "white")
    for k, c in enumerate(crops):
        edges.paste(c, (k * 246, 0))
    edges.save(ROOT / "docs/images/mask_edge.jpg", quality=88, optimize=True)


if __name__ == "__main__":
    main()
