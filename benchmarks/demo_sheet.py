"""Builds docs/images/demo.png: the README's main job, inputs above results, style at the side.

    rvgen run recipes/starry_night.toml && python benchmarks/demo_sheet.py
"""

from pathlib import Path

from PIL import Image

from rvgen import imageio

NAMES = ("astronaut", "chelsea", "coffee")
GAP, SIZE = 8, 160


def main() -> None:
    ins = [imageio.to_pil(imageio.load_image(f"skimage:{n}", SIZE)) for n in NAMES]
    outs = [Image.open(Path("rvgen-out/starry_night") / f"{n}.png").convert("RGB") for n in NAMES]
    style = Image.open("recipes/styles/starry_night.jpg").convert("RGB")
    style.thumbnail((SIZE, SIZE))
    width = sum(i.width for i in ins) + style.width + GAP * len(ins)
    height = 2 * SIZE + GAP
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for a, b in zip(ins, outs):
        sheet.paste(a, (x, (SIZE - a.height) // 2))
        sheet.paste(b, (x, SIZE + GAP + (SIZE - b.height) // 2))
        x += a.width + GAP
    sheet.paste(style, (x, (height - style.height) // 2))
    Path("docs/images").mkdir(parents=True, exist_ok=True)
    sheet.save("docs/images/demo.png", optimize=True)


if __name__ == "__main__":
    main()
