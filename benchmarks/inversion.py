"""Deep-layer inversions: what each optimisation lever gives, layer by layer.

The protocol of docs/research.md: invert relu1_1..relu5_1 of the random VGG-19 (the
``reconstruct`` task, from white noise) for five photos at 128 px, and score each result by
PSNR and SSIM against its photo. A lever is a set of recipe overrides on top of
``recipes/reconstruct.toml``; each prints one row of mean ± std per layer, with the loss's
fall (final / initial) and the seconds per image. Results are cached as PNGs with their
scores under --work, so a rerun only makes what is missing.

    python benchmarks/inversion.py                               # every lever, 128 px
    python benchmarks/inversion.py --levers shipped,fourier --layers relu4_1,relu5_1   # lever names: see LEVERS
    python benchmarks/inversion.py --size 256 --photos astronaut,tubingen --levers shipped
    python benchmarks/inversion.py --seeds relu4_1,relu5_1       # two noise seeds, one lever
    python benchmarks/inversion.py --sheet docs/images/inversion.jpg --levers shipped
    python benchmarks/inversion.py --trace 100 --levers "1000 iterations" --layers relu5_1  # PSNR along the way

``--seeds`` inverts each photo from two different noise images with the same lever and
reports how close the two results are to each other: two images with the same features at
a layer that differ from each other are the network's ambiguity, not the optimiser's.
``--bands`` splits each result's error by the size of the structures it is in (octaves of
the spatial period): it says which scales a layer keeps, and with ``--seeds``, at which scales
two equally good inversions disagree.
``--trace N`` scores the image every N iterations: if the loss keeps falling while the PSNR
stays, more optimisation of the same loss does not bring the photo back.

Not part of the test suite: the full table is about an hour on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from joblib import Parallel, delayed  # noqa: E402

from rvgen import imageio, metrics  # noqa: E402
from rvgen.recipe import load_recipe  # noqa: E402
from rvgen.sheet import contact_sheet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "reconstruct.toml"
TUBINGEN = ROOT.parent / "shared" / "images" / "tubingen.jpg"
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "tubingen")
LEVERS = {  # overrides on recipes/reconstruct.toml: pixels, coarse to fine from 32 px, 200 iterations a level
    "shipped": [],
    "single scale": ["optimizer.scales=1"],
    "100 iterations a level": ["optimizer.iterations=100"],
    "fourier + coarse to fine (100 a level)": ["optimizer.parametrization=fourier", "optimizer.iterations=100"],
    "single scale (150 iterations)": ["optimizer.scales=1", "optimizer.iterations=150"],
    "single scale (1000 iterations)": ["optimizer.scales=1", "optimizer.iterations=1000"],
    "1000 iterations": ["optimizer.iterations=1000", "optimizer.scale_iterations=200"],
    "coarse to fine from 64 px": ["optimizer.min_size=64"],
    "fourier (single scale)": ["optimizer.parametrization=fourier", "optimizer.scales=1"],
    "fourier + coarse to fine from 64 px": ["optimizer.parametrization=fourier", "optimizer.min_size=64"],
    "fourier + coarse to fine": ["optimizer.parametrization=fourier"],
    "normal 0.015 init": ["backbone.init=normal", "backbone.std=0.015"],
    "max pooling": ["backbone.pooling=max"],
    "tv 0.5 (a prior)": ["task.tv_weight=0.5"],
    "tolerance 1e-3 (1000 max)": ["optimizer.tolerance=0.001", "optimizer.iterations=1000",
                                  "optimizer.scale_iterations=200"],
    "tolerance 1e-2 (1000 max a level)": ["optimizer.tolerance=0.01", "optimizer.iterations=1000"],
}


def source(photo: str) -> str:
    if photo == "tubingen":
        return str(TUBINGEN) if TUBINGEN.exists() else "skimage:immunohistochemistry"
    return photo if ":" in photo or "/" in photo else f"skimage:{photo}"


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def one(lever: str, overrides: list[str], layer: str, photo: str, size: int, seed: int, work: Path,
        trace: int = 0) -> dict:
    """Invert ``layer`` of ``photo`` with ``overrides`` (cached); with ``trace``, also score
    the image every ``trace`` iterations (row["trace"]: iteration, loss, PSNR)."""
    stem = work / f"{size}px" / slug(lever) / f"{layer}-{photo}-seed{seed}"
    if stem.with_suffix(".json").exists():
        row = json.loads(stem.with_suffix(".json").read_text())
        if not trace or row.get("trace_every") == trace:
            return row
    torch.set_num_threads(1)
    recipe = load_recipe(RECIPE, [f"output.size={size}", f"task.layer={layer}", f"task.seed={seed}",
                                  f"output.save_every={trace}", *overrides])
    synth = recipe.build("cpu")
    synth.set_references({})
    content = imageio.load_image(source(photo), size)
    points: list[tuple[int, float, float]] = []

    def follow(progress) -> None:
        if progress.image is not None:
            points.append((progress.iteration, progress.loss, metrics.psnr(progress.image, content)))

    start = time.perf_counter()
    result = synth.run(content, callback=follow if trace else None)
    seconds = time.perf_counter() - start  # with a trace, this includes its scoring
    row = {"lever": lever, "layer": layer, "photo": photo, "seed": seed, "size": size,
           "psnr": metrics.psnr(result.image, content), "ssim": metrics.ssim(result.image, content),
           "fall": result.loss / result.initial_loss if result.initial_loss else math.nan,
           "iterations": result.iterations, "seconds": seconds}
    if trace:
        row.update(trace_every=trace, trace=points, initial_loss=result.initial_loss)
    stem.parent.mkdir(parents=True, exist_ok=True)
    imageio.to_pil(result.image).save(stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(row))
    return row


PERIODS = (32, 16, 8, 4)  # px: the octave bands' edges, as spatial periods


def band_energies(image: torch.Tensor, reference: torch.Tensor) -> tuple[list[float], list[float]]:
    """Energy of the signal and of the error of ``image`` against ``reference`` (1, 3, H, W)
    in each band of spatial period: over 32 px, 16-32, 8-16, 4-8 and under 4 px. Signal is
    the reference without its mean colour; the error's mean colour counts in the coarsest band."""
    h, w = reference.shape[-2:]
    f = torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2)
    band = torch.bucketize(f, torch.tensor([1 / p for p in PERIODS]))
    signal = torch.fft.fft2(reference - reference.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).sum(dim=(0, 1))
    error = torch.fft.fft2(image - reference).abs().pow(2).sum(dim=(0, 1))
    bands = range(len(PERIODS) + 1)
    return [signal[band == b].sum().item() for b in bands], [error[band == b].sum().item() for b in bands]


def band_snr(signal: list[float], error: list[float]) -> list[float]:
    """Signal-to-error ratio in dB in each band, from :func:`band_energies`."""
    return [10 * math.log10(s / max(e, 1e-20)) for s, e in zip(signal, error)]


def bands_table(pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]) -> str:
    """Mean band SNR of each labelled set of (image, reference) pairs, then each band's mean
    share of the squared error."""
    heads = [f"> {PERIODS[0]} px"] + [f"{b}-{a} px" for a, b in zip(PERIODS, PERIODS[1:])] + [f"< {PERIODS[-1]} px"]
    lines = ["| SNR dB by structure size | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    shares = ["", "| share of the squared error | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    for label, items in pairs.items():
        energies = [band_energies(a, b) for a, b in items]
        snrs = [band_snr(signal, error) for signal, error in energies]
        lines.append(f"| {label} | " + " | ".join(mean_std([s[k] for s in snrs]) for k in range(len(heads))) + " |")
        errors = [error for _, error in energies]
        share = [statistics.mean(e[k] / sum(e) for e in errors) for k in range(len(heads))]
        shares.append(f"| {label} | " + " | ".join(f"{100 * x:.0f} %" for x in share) + " |")
    return "\n".join(lines + shares)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(rows: list[dict], levers: list[str], layers: list[str]) -> str:
    lines = ["| lever | " + " | ".join(layers) + " | loss fall at " + layers[-1] + " | s / image |",
             "| --- | " + " | ".join("---:" for _ in layers) + " | ---: | ---: |"]
    for lever in levers:
        mine = [r for r in rows if r["lever"] == lever]
        cells = [mean_std([r["psnr"] for r in mine if r["layer"] == layer]) for layer in layers]
        deepest = [r["fall"] for r in mine if r["layer"] == layers[-1]]
        fall = f"{statistics.mean(deepest):.1e}" if deepest else "-"
        seconds = statistics.mean(r["seconds"] for r in mine)
        lines.append(f"| {lever} | " + " | ".join(cells) + f" | {fall} | {seconds:.0f} |")
    return "\n".join(lines)


def trace_table(rows: list[dict], levers: list[str], layers: list[str]) -> str:
    """PSNR (mean over the photos) and loss / initial loss of the last level along the way."""
    lines = []
    for lever in levers:
        for layer in layers:
            mine = [r for r in rows if r["lever"] == lever and r["layer"] == layer]
            steps = sorted({p[0] for r in mine for p in r["trace"]})
            lines += ["", f"{lever}, {layer} (iterations counted over all levels; loss against the last "
                      "level's start):", "", "| iteration | loss / initial | PSNR dB |", "| ---: | ---: | ---: |"]
            for step in steps:
                at = [(p[1] / r["initial_loss"], p[2]) for r in mine for p in r["trace"] if p[0] == step]
                if len(at) == len(mine):
                    lines.append(f"| {step} | {statistics.mean(a[0] for a in at):.1e} | "
                                 f"{mean_std([a[1] for a in at])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma list of: " + ", ".join(LEVERS))
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--seeds", metavar="LAYERS", help="two noise seeds per photo at these layers, one lever")
    parser.add_argument("--bands", action="store_true", help="split the error by structure size")
    parser.add_argument("--trace", type=int, default=0, metavar="N", help="score the image every N iterations")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet: photos x (layer, lever)")
    parser.add_argument("--work", type=Path, default=ROOT / "rvgen-out" / "inversion")
    args = parser.parse_args()
    levers = [lever.strip() for lever in args.levers.split(",")]
    unknown = [lever for lever in levers if lever not in LEVERS]  # (lever names hold no commas)
    if unknown:
        parser.error(f"unknown lever {unknown[0]!r}; choose from: {', '.join(LEVERS)}")
    layers, photos = args.layers.split(","), args.photos.split(",")
    seeds = [0, 1] if args.seeds else [0]
    if args.seeds:
        layers, levers = args.seeds.split(","), levers[:1]
    jobs = [(lever, LEVERS[lever], layer, photo, args.size, seed, args.work, args.trace)
            for lever in levers for layer in layers for photo in photos for seed in seeds]
    rows = Parallel(n_jobs=args.jobs)(delayed(one)(*job) for job in jobs)
    print(f"PSNR dB against the photo, mean ± std over {len(photos)} photos at {args.size} px "
          f"({', '.join(photos)}); loss fall = final / initial loss\n")

    def result(lever: str, layer: str, photo: str, seed: int = 0) -> torch.Tensor:
        return imageio.load_image(str(args.work / f"{args.size}px" / slug(lever) / f"{layer}-{photo}-seed{seed}.png"),
                                  args.size)

    if not args.seeds:
        print(table(rows, levers, layers))
        print("\nSSIM:\n")
        print(table([{**r, "psnr": r["ssim"] * 100} for r in rows], levers, layers).replace("lever |", "lever (SSIM x 100) |", 1))
    else:
        print(f"| {levers[0]} | PSNR to the photo, seed 0 | seed 1 | PSNR between the two results | loss fall |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for layer in layers:
            a = [r for r in rows if r["layer"] == layer and r["seed"] == 0]
            b = [r for r in rows if r["layer"] == layer and r["seed"] == 1]
            between = [metrics.psnr(result(levers[0], layer, p, 0), result(levers[0], layer, p, 1)) for p in photos]
            print(f"| {layer} | {mean_std([r['psnr'] for r in a])} | {mean_std([r['psnr'] for r in b])} | "
                  f"{mean_std(between)} | {statistics.mean(r['fall'] for r in a + b):.1e} |")
    if args.bands:
        pairs = {f"{lever}, {layer}": [(result(lever, layer, p), imageio.load_image(source(p), args.size))
                                       for p in photos] for lever in levers for layer in layers}
        if args.seeds:
            pairs |= {f"{levers[0]}, {layer}, seed 1 against seed 0": [(result(levers[0], layer, p, 1),
                                                                          result(levers[0], layer, p, 0))
                                                                         for p in photos] for layer in layers}
        print("\n" + bands_table(pairs))
    if args.trace:
        print(trace_table(rows, levers, layers))
    if args.sheet:  # photos x (layer, lever), a layer's levers side by side
        columns = [(layer, lever) for layer in layers for lever in levers]
        images = [[imageio.load_image(source(p), args.size)] + [result(lever, layer, p) for layer, lever in columns]
                  for p in photos]
        psnrs = {(r["lever"], r["layer"], r["photo"]): r["psnr"] for r in rows if r["seed"] == 0}
        captions = [[""] + [f"{psnrs[lever, layer, p]:.1f} dB" for layer, lever in columns] for p in photos]
        heads = [layer if len(levers) == 1 else f"{layer} {lever}" for layer, lever in columns]
        sheet = contact_sheet(photos, ["photo", *heads], images, captions, cell=args.size)
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.convert("RGB").save(args.sheet, quality=88)
        print(f"\nsheet: {args.sheet}")


if __name__ == "__main__":
    main()
