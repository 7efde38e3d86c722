"""Tiled against untiled evaluation of large images: peak memory and time, in one run.

Each case runs in a fresh Python process, so its peak resident memory (``ru_maxrss``) is its
own. "Above base" is the peak less the resident memory once the network, the targets and the
image are ready, before the first evaluation (what a ``--dry-run``-sized process holds), so it
is what evaluating costs. Ratios are against the untiled case of the same size, measured in
the same run.

    python benchmarks/tiling.py                       # evaluations at 512, 1024, 2048 px
    python benchmarks/tiling.py --sizes 1024 --tiles 256,512 --halos full,48
    python benchmarks/tiling.py --adam 1024           # a 1024 px Adam run, tile 256 vs whole

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mib() -> float:
    """The current resident memory of this process, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(size: int, tile: int | None, halo: int | None, name: str = "lbfgs", iterations: int = 1):
    import torch

    from rvgen import imageio
    from rvgen.recipe import parse_recipe

    torch.set_num_threads(2)
    recipe = parse_recipe({"task": {"name": "style", "style": "skimage:hubble_deep_field", "tv_weight": 0.5},
                           "optimizer": {"name": name, "iterations": iterations,
                                         **({"tile_size": tile} if tile else {})},
                           "output": {"size": size}})
    synth = recipe.build("cpu")
    synth.objective.halo = halo
    synth.set_references({"style": imageio.load_image("skimage:hubble_deep_field", 512)})
    content = imageio.load_image("skimage:astronaut", size)
    return synth, content


def case(spec: dict) -> dict:
    """One measurement, in this process."""
    synth, content = build(spec["size"], spec["tile"], spec["halo"], spec.get("optimizer", "lbfgs"),
                           spec.get("iterations", 1))
    objective = synth.objective
    objective.tile_size = spec["tile"]
    objective.set_targets({"input": content})
    objective.auto_weight(content)
    base = rss_mib()
    if spec.get("iterations", 0) > 1:  # a whole optimisation
        start = time.perf_counter()
        result = synth.run(content)
        return {**spec, "seconds": time.perf_counter() - start, "loss": result.loss,
                "base_mib": base, "peak_mib": peak_mib()}
    x = content.clone()
    objective.value_and_grad(x)  # warm-up (allocator, first-call costs)
    times = []
    for _ in range(spec.get("repeats", 2)):
        start = time.perf_counter()
        total, grad = objective.value_and_grad(x)
        times.append(time.perf_counter() - start)
    tiles = len(objective.tile_plan(tuple(x.shape[-2:]))) if spec["tile"] else 1
    return {**spec, "seconds": min(times), "loss": float(total[0]), "grad_norm": float(grad.norm()),
            "tiles": tiles, "base_mib": base, "peak_mib": peak_mib()}


def run_case(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        return {**spec, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--tiles", default="256,512")
    parser.add_argument("--halos", default="full", help="comma list of halos in px, or 'full' (the exact one)")
    parser.add_argument("--adam", type=int, metavar="SIZE", help="compare a whole Adam run, tile 256 vs untiled")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="timed evaluations per case (the fastest counts)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(json.loads(args.case))))
        return
    if args.adam:
        rows = [run_case({"size": args.adam, "tile": tile, "halo": None, "optimizer": "adam",
                          "iterations": args.iterations}) for tile in (None, 256)]
        whole = rows[0]
        print(f"| {args.adam} px, Adam, {args.iterations} iterations | s | final loss | peak MiB | above base MiB | "
              "above base vs whole |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            if "error" in r:
                print(f"| tile {r['tile']} | failed: {r['error']} |")
                continue
            above = r["peak_mib"] - r["base_mib"]
            ratio = above / (whole["peak_mib"] - whole["base_mib"])
            print(f"| {'whole' if r['tile'] is None else 'tile ' + str(r['tile'])} | {r['seconds']:.1f} | "
                  f"{r['loss']:.5f} | {r['peak_mib']:.0f} | {above:.0f} | {ratio:.2f}x |")
        return
    halos = [None if h == "full" else int(h) for h in args.halos.split(",")]
    print("| size | tile | halo | tiles | s / evaluation | vs whole | peak MiB | above base MiB | vs whole | "
          "loss rel. diff | grad-norm rel. diff |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in (int(s) for s in args.sizes.split(",")):
        whole = run_case({"size": size, "tile": None, "halo": None, "repeats": args.repeats})
        rows = [whole] + [run_case({"size": size, "tile": int(t), "halo": h, "repeats": args.repeats})
                          for t in args.tiles.split(",") if int(t) < size for h in halos]
        for r in rows:
            if "error" in r:
                print(f"| {size} | {r['tile'] or '-'} | {r['halo']} | failed: {r['error']} |")
                continue
            above = r["peak_mib"] - r["base_mib"]
            whole_above = whole.get("peak_mib", float("nan")) - whole.get("base_mib", 0)
            err_l = abs(r["loss"] - whole["loss"]) / abs(whole["loss"]) if "loss" in whole else float("nan")
            err_g = abs(r["grad_norm"] - whole["grad_norm"]) / whole["grad_norm"] if "grad_norm" in whole else float("nan")
            halo = "-" if r["tile"] is None else ("full" if r["halo"] is None else r["halo"])
            print(f"| {size} | {r['tile'] or 'whole'} | {halo} | {r['tiles']} | {r['seconds']:.2f} | "
                  f"{r['seconds'] / whole.get('seconds', float('nan')):.2f}x | {r['peak_mib']:.0f} | {above:.0f} | "
                  f"{above / whole_above:.2f}x | {err_l:.1e} | {err_g:.1e} |", flush=True)


if __name__ == "__main__":
    main()
