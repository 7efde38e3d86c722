"""Pixels against the Fourier parametrisation on style and texture, in one run.

For each task, the shipped recipe is run twice on the same input, once with
``optimizer.parametrization = "pixels"`` and once with ``"fourier"``, and scored the way
``rvgen compare`` scores it: the independent Gram distance to the style (or the exemplar),
the content SSIM (style) or the structure distance (texture), the final loss and the time.
Ratios are fourier against pixels. The results are written under --work for looking.

    python benchmarks/parametrization.py                    # style at 256 px, texture at 128 px
    python benchmarks/parametrization.py --photo skimage:astronaut --style-size 384

Not part of the test suite: a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rvgen import imageio, metrics
from rvgen.recipe import load_recipe
from rvgen.sheet import contact_sheet

ROOT = Path(__file__).resolve().parent.parent
TUBINGEN = ROOT.parent / "shared" / "images" / "tubingen.jpg"


def run(recipe_path: Path, overrides: list[str], source: str, size: int) -> tuple[torch.Tensor, dict]:
    recipe = load_recipe(recipe_path, [f"output.size={size}", *overrides])
    synth = recipe.build("cpu")
    refs = {name: imageio.load_image(src, side) for name, (src, side) in recipe.references().items()}
    synth.set_references(refs)
    content = imageio.load_image(source, size)
    start = time.perf_counter()
    result = synth.run(content)
    seconds = time.perf_counter() - start
    image = result.image.detach().float()
    target = refs.get("style", content)
    scores = {"gram": metrics.gram_distance(image, target), "loss": result.loss, "seconds": seconds}
    if "style" in refs:
        scores["ssim"] = metrics.ssim(image, content)
    else:
        scores["structure"] = metrics.structure_distance(image, content)
    return image, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default=str(TUBINGEN) if TUBINGEN.exists() else "skimage:astronaut")
    parser.add_argument("--style-recipe", type=Path, default=ROOT / "recipes" / "monet.toml")
    parser.add_argument("--style-size", type=int, default=256)
    parser.add_argument("--texture", default="skimage:brick")
    parser.add_argument("--texture-size", type=int, default=128)
    parser.add_argument("--work", type=Path, default=ROOT / "rvgen-out" / "parametrization")
    args = parser.parse_args()
    cases = [("style", args.style_recipe, [], args.photo, args.style_size),
             ("texture", ROOT / "recipes" / "texture.toml", ["task.variations=1"], args.texture, args.texture_size)]
    args.work.mkdir(parents=True, exist_ok=True)
    print("| task | parametrization | Gram distance | SSIM / structure distance | final loss | s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for task, path, overrides, source, size in cases:
        rows, images = {}, []
        for name in ("pixels", "fourier"):
            image, scores = run(path, [*overrides, f"optimizer.parametrization={name}"], source, size)
            rows[name] = scores
            images.append(image)
            imageio.save_image(image, args.work / f"{task}-{name}.png")
            other = scores.get("ssim", scores.get("structure"))
            print(f"| {task} | {name} | {scores['gram']:.4f} | {other:.3f} | {scores['loss']:.4g} | "
                  f"{scores['seconds']:.0f} |", flush=True)
        p, f = rows["pixels"], rows["fourier"]
        print(f"| {task} | fourier / pixels | {f['gram'] / p['gram']:.2f}x | | {f['loss'] / p['loss']:.2f}x | "
              f"{f['seconds'] / p['seconds']:.2f}x |", flush=True)
        sheet = contact_sheet([task], ["input", "pixels", "fourier"],
                              [[imageio.load_image(source, size), *images]], cell=size)
        sheet.save(args.work / f"{task}-sheet.png")


if __name__ == "__main__":
    main()
