"""Builds docs/images/report.png: the page of a real run's folder (OUTPUT/index.html), as
headless Chromium draws it.

    python benchmarks/report_screenshot.py                  # starry_night, shortened for a CPU
    python benchmarks/report_screenshot.py --iterations 100 --size 160   # the recipe as shipped
    python benchmarks/report_screenshot.py --page-only      # rewrite the last run's page, shoot it

It runs ``rvgen run recipes/starry_night.toml`` over scikit-image's three sample photos and a
broken file (so the page shows a failure), then has Chromium (Debian's ``chromium``
package, or ``--chromium PATH``) take a screenshot of the folder's page, trims the empty
bottom and writes it as a palette PNG of at most 200 kB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

from rvgen import imageio

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("astronaut", "chelsea", "coffee")
LIMIT = 200_000  # bytes


def chromium(given: str | None) -> str:
    for name in ([given] if given else ["chromium", "chromium-browser", "google-chrome"]):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("no Chromium found: apt-get install chromium, or give --chromium PATH")


def make_inputs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        imageio.to_pil(imageio.load_image(f"skimage:{name}", 256)).save(folder / f"{name}.png")
    (folder / "scan-0042.jpg").write_bytes(b"\xff\xd8\xff\xe0 a scan cut short")


def trim(image: Image.Image, margin: int = 24) -> Image.Image:
    """Cut the empty page below the content."""
    box = ImageChops.difference(image, Image.new("RGB", image.size, (255, 255, 255))).getbbox()
    return image if box is None else image.crop((0, 0, image.width, min(image.height, box[3] + margin)))


def save_small(image: Image.Image, path: Path) -> None:
    while True:
        small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        path.parent.mkdir(parents=True, exist_ok=True)
        small.save(path, optimize=True)
        if path.stat().st_size <= LIMIT or image.width < 600:
            return
        image = image.resize((image.width * 9 // 10, image.height * 9 // 10), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "rvgen-out" / "report-demo",
                        help="folder for the inputs and the run's output (reused: a rerun makes nothing again)")
    parser.add_argument("--iterations", type=int, default=40, help="iterations per pyramid level")
    parser.add_argument("--size", type=int, default=128, help="output.size")
    parser.add_argument("--width", type=int, default=1200, help="window width in CSS pixels")
    parser.add_argument("--height", type=int, default=1500, help="window height before trimming")
    parser.add_argument("--chromium", help="the browser to run (default: chromium on PATH)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "report.png")
    parser.add_argument("--page-only", action="store_true",
                        help="run nothing: write the page of --work's folder again (rvgen report) and shoot it")
    args = parser.parse_args()

    browser = chromium(args.chromium)
    photos, output = args.work / "photos", args.work / "starry_night"
    if args.page_only:
        subprocess.run([sys.executable, "-m", "rvgen", "report", "starry_night"], cwd=args.work, check=True)
    else:
        make_inputs(photos)
        subprocess.run([sys.executable, "-m", "rvgen", "run", "starry_night", "--input", "photos",
                        "--output", "starry_night", "--devices", "cpu",
                        "--set", f"optimizer.iterations={args.iterations}", "--set", f"output.size={args.size}"],
                       cwd=args.work, check=False)  # exits 1: the broken scan failed, as the page should show
    page = output / "index.html"
    if not page.is_file():
        sys.exit(f"{page} was not written")
    with tempfile.TemporaryDirectory() as scratch:
        shot = Path(scratch) / "shot.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--force-device-scale-factor=1", f"--window-size={args.width},{args.height}",
                        f"--screenshot={shot}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        image = trim(Image.open(shot).convert("RGB"))
    save_small(image, args.out)
    print(f"{args.out}: {image.width}x{image.height}, {args.out.stat().st_size // 1000} kB")


if __name__ == "__main__":
    main()
