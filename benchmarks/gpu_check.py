"""The GPU check: one command that runs rvgen's GPU tests and GPU speed cases and writes a report.

    python benchmarks/gpu_check.py OUTDIR             # about 8 minutes at most on one H100
    python benchmarks/gpu_check.py OUTDIR --quick     # fewer iterations and images: a smoke run
    python benchmarks/gpu_check.py OUTDIR --dry-run   # print the plan (steps, commands, budgets); runs nothing

It installs nothing. Steps, in order, each with a time budget (the budgets add up to less
than 8 minutes; a step past its budget is stopped and recorded as an error, and the check
goes on with the next):

1. ``pytest -m gpu -q`` (tests/test_gpu.py: bf16, channels-last, the memory estimate, the
   out-of-memory fallback, two workers on one GPU, the README job), as a subprocess; its
   summary line is recorded and its output kept in OUTDIR/pytest.txt.
2. The speed cases, each in its own process (so one case's memory or failure does not
   touch the next), each against the tutorial-style baseline of ``benchmarks/run.py``
   (whose functions it imports), in the same run:

   - ``style-512``: one 512 px style image, 300 iterations: rvgen's time / the baseline's
     (goal <= 0.2);
   - ``folder-256``: a folder of 64 images at 256 px (scikit-image samples, cropped and
     flipped): images per hour of ``rvgen run`` (a subprocess, timed whole) / the baseline's
     images per hour run image by image (goal >= 15);
   - ``tflops-512``: the backbone's sustained TFLOP/s during a batched 512 px run
     (goal >= 250, an H100's bf16 floor measured 274 at batch 8 in a bare loop);
   - ``memory-512``: the batch size the memory estimate chooses at 512 px, the peak memory
     (``torch.cuda.max_memory_allocated``) against the estimate, and images per second.

It writes OUTDIR/gpu_check.json (everything, with the device, torch, torchvision, CUDA and
cuDNN versions) and OUTDIR/gpu_check.md (a markdown table). The exit status is 0 when the
tests passed and every case ran (goals met or not: they are measurements), 1 when a test
failed or a case could not run, 2 without a CUDA device (one line; ``--dry-run`` needs none).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOTAL_BUDGET = 480  # seconds: the whole check, on one H100


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    budget: int  # seconds
    goal: str  # "" for a step without a goal
    unit: str


STEPS = (
    Step("tests", "GPU tests (pytest -m gpu)", 150, "all pass", ""),
    Step("style-512", "one 512 px image, 300 iterations: rvgen's time / the baseline's", 70, "<= 0.2", "x"),
    Step("folder-256", "64 images at 256 px: images per hour, rvgen run / the baseline per image", 120, ">= 15", "x"),
    Step("tflops-512", "backbone's sustained TFLOP/s, batched 512 px run", 50, ">= 250", "TFLOP/s"),
    Step("memory-512", "batch the estimate chooses at 512 px: peak memory, images per second", 60, "", "images/s"),
)
CASES = tuple(s.name for s in STEPS if s.name != "tests")
assert sum(s.budget for s in STEPS) <= TOTAL_BUDGET - 20  # room for starting the processes


def settings(quick: bool) -> dict[str, int]:
    """Iterations and sizes of the cases (``--quick``: a smoke run, figures not comparable to the goals)."""
    if quick:
        return {"style_iterations": 50, "folder_images": 16, "folder_iterations": 50, "baseline_images": 1,
                "tflops_batch": 8, "tflops_iterations": 10, "memory_iterations": 5}
    return {"style_iterations": 300, "folder_images": 64, "folder_iterations": 300, "baseline_images": 3,
            "tflops_batch": 8, "tflops_iterations": 30, "memory_iterations": 20}


def command(step: Step, outdir: Path, quick: bool) -> list[str]:
    """The command line a step runs, from the repository root."""
    if step.name == "tests":
        return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    return [sys.executable, str(Path(__file__).resolve()), str(outdir), "--case", step.name] + (["--quick"] if quick else [])


# --- the report -----------------------------------------------------------------------------------

def _met(value, goal: str) -> bool | None:
    if value is None or not goal or goal[:2] not in ("<=", ">="):
        return None
    bound = float(goal[2:])
    return value <= bound if goal.startswith("<=") else value >= bound


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(results: dict) -> str:
    """The report as markdown: what ran where, then one row per step."""
    env = results.get("environment", {})
    lines = [
        "# rvgen GPU check",
        "",
        f"- device: {env.get('device', '?')} ({env.get('memory_gib', '?')} GiB)",
        f"- torch {env.get('torch', '?')}, torchvision {env.get('torchvision', '?')}, "
        f"CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}, Python {env.get('python', '?')}",
        f"- started {results.get('started', '?')}, {results.get('seconds', 0):.0f} s in all"
        + (", **quick mode** (fewer iterations and images: not comparable to the goals)" if results.get("quick") else ""),
        "",
        "| check | measured | goal | met | notes |",
        "| --- | ---: | ---: | :---: | --- |",
    ]
    for row in results.get("steps", []):
        if row.get("error"):
            measured, met, notes = "error", "no", row["error"]
        else:
            value = row.get("value")
            measured = _fmt(value) + (f" {row['unit']}" if row.get("unit") and value is not None else "")
            met = {True: "yes", False: "no", None: "-"}[row.get("met")]
            notes = row.get("notes", "")
        notes = str(notes).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['title']} | {measured} | {row.get('goal') or '-'} | {met} | {notes} |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, outdir: Path) -> str:
    """Write OUTDIR/gpu_check.json and OUTDIR/gpu_check.md; return the markdown."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    (outdir / "gpu_check.md").write_text(text)
    return text


# --- the plan and the parent ------------------------------------------------------------------------

def plan_text(outdir: Path, quick: bool) -> str:
    lines = [f"GPU check into {outdir} ({'quick' if quick else 'full'} mode), at most {TOTAL_BUDGET} s in all:"]
    for i, step in enumerate(STEPS, 1):
        goal = f", goal {step.goal}" if step.goal else ""
        lines.append(f"{i}. {step.name}: {step.title} (budget {step.budget} s{goal})")
        lines.append(f"   $ {' '.join(command(step, outdir, quick))}")
    lines.append(f"then: {outdir / 'gpu_check.json'} and {outdir / 'gpu_check.md'}")
    return "\n".join(lines)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_step(cmd: list[str], budget: float, env: dict[str, str], log: Path) -> tuple[int | None, str]:
    """Run ``cmd`` for at most ``budget`` s (the whole process group is stopped after); its
    output goes to ``log``. Returns (exit status or None when stopped, output)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, log.read_text(errors="replace")


def pytest_summary(output: str) -> str:
    """pytest's final line ("5 passed, 1 skipped in 40.1s"), without its decoration."""
    for line in reversed(output.splitlines()):
        if " in " in line and any(w in line for w in ("passed", "failed", "skipped", "error", "deselected")):
            return line.strip("= ").strip()
    return last_line(output)


def environment() -> dict:
    import torch

    try:
        import torchvision

        vision = torchvision.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        vision = f"not importable ({exc})"
    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "devices": torch.cuda.device_count(),
        "torch": torch.__version__,
        "torchvision": vision,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def check(outdir: Path, quick: bool) -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees none (torch.cuda.is_available() is False); "
              "--dry-run prints the plan", file=sys.stderr)
        return 2
    start = time.monotonic()
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "cases").mkdir(exist_ok=True)
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": quick, "environment": environment(),
               "settings": settings(quick), "steps": []}
    env = dict(os.environ, RVGEN_LOAD_PLUGINS="", RVGEN_GPU_ARTIFACTS=str(outdir / "images"),
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    print(plan_text(outdir, quick), flush=True)
    status = 0
    for step in STEPS:
        row = {"name": step.name, "title": step.title, "goal": step.goal, "unit": step.unit, "budget": step.budget}
        left = TOTAL_BUDGET - (time.monotonic() - start)
        budget = min(step.budget, left - 5)
        t0 = time.monotonic()
        if budget < 10:
            row["error"] = f"not run: the check's {TOTAL_BUDGET} s were spent"
        else:
            code, output = run_step(command(step, outdir, quick), budget, env, outdir / f"{step.name}.txt")
            if step.name == "tests":
                summary = pytest_summary(output)
                row.update(value=summary, met=code == 0, notes=f"output in {step.name}.txt")
                if code is None:
                    row["error"] = f"stopped after its budget of {budget:.0f} s ({summary})"
                elif code != 0:
                    row["met"] = False
                    status = 1
            else:
                case_file = outdir / "cases" / f"{step.name}.json"
                if code is None:
                    row["error"] = f"stopped after its budget of {budget:.0f} s"
                elif code != 0 or not case_file.exists():
                    row["error"] = last_line(output) or f"exit status {code}"
                else:
                    case = json.loads(case_file.read_text())
                    row.update(value=case.get("value"), notes=case.get("notes", ""), details=case.get("details", {}))
                    row["met"] = _met(row["value"], step.goal)
        if row.get("error"):
            status = 1
        row["seconds"] = round(time.monotonic() - t0, 1)
        results["steps"].append(row)
        shown = row.get("error") or f"{_fmt(row.get('value'))} {step.unit}".strip()
        print(f"[{time.monotonic() - start:5.0f} s] {step.name}: {shown}", flush=True)
    results["seconds"] = round(time.monotonic() - start, 1)
    print(write_report(results, outdir))
    return status


# --- the cases (each run in its own process: gpu_check.py OUTDIR --case NAME) ------------------------

def bench():
    """benchmarks/run.py as a module: the baseline, the floor and rvgen's timed run."""
    spec = importlib.util.spec_from_file_location("rvgen_bench_run", Path(__file__).with_name("run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being made
    spec.loader.exec_module(module)
    return module


_PHOTOS: dict = {}


def photo(b, index: int, size: int):
    """Content ``index``: the sample photos of benchmarks/run.py in turn, flipped on their second round."""
    name = b.CONTENTS[index % len(b.CONTENTS)]
    if (name, size) not in _PHOTOS:
        _PHOTOS[name, size] = b.square(name, size)
    image = _PHOTOS[name, size]
    return image.flip(-1) if (index // len(b.CONTENTS)) % 2 else image


def case_style_512(b, device, s) -> dict:
    its = s["style_iterations"]
    content = photo(b, 0, 512).to(device)
    # Warm-up of both (cuDNN autotuning, kernels loaded), so each is timed in its steady state.
    b.baseline(b.make_synth("style", 512, 3, device, "fp32"), content, 3)
    b.rvgen(b.make_synth("style", 512, 3, device, "auto"), [content])
    base_s, base_loss = b.baseline(b.make_synth("style", 512, its, device, "fp32"), content, its)
    run = b.rvgen(b.make_synth("style", 512, its, device, "auto"), [content])
    return {"value": run.seconds / base_s,
            "notes": f"rvgen {run.seconds:.2f} s (loss {run.losses[0]:.4f}), baseline {base_s:.2f} s "
                     f"(loss {base_loss:.4f}), {its} iterations",
            "details": {"rvgen_s": run.seconds, "baseline_s": base_s, "rvgen_loss": run.losses[0],
                        "baseline_loss": base_loss, "iterations": its, "evaluations": run.evaluations}}


def make_folder(b, folder: Path, count: int, size: int = 256) -> list[Path]:
    """``count`` square images of ``size`` px: each sample photo's four corner crops, plain and flipped."""
    from rvgen import imageio

    paths = []
    i = 0
    while len(paths) < count:
        name = b.CONTENTS[i % len(b.CONTENTS)]
        image = b.square(name, size + size // 4)
        edge = image.shape[-1] - size
        for top, left in ((0, 0), (0, edge), (edge, 0), (edge, edge)):
            crop = image[..., top : top + size, left : left + size]
            for flip in (False, True):
                if len(paths) < count:
                    path = folder / f"{len(paths):03d}-{name}.png"
                    imageio.to_pil(crop.flip(-1) if flip else crop).save(path)
                    paths.append(path)
        i += 1
    return paths


def case_folder_256(b, device, s, outdir: Path) -> dict:
    from rvgen import imageio

    count, its = s["folder_images"], s["folder_iterations"]
    with tempfile.TemporaryDirectory(prefix="rvgen-gpu-check-") as tmp:
        tmp = Path(tmp)
        inputs = tmp / "in"
        inputs.mkdir()
        paths = make_folder(b, inputs, count)
        recipe = tmp / "recipe.toml"
        recipe.write_text(f'[task]\nname = "style"\nstyle = "{b.STYLE}"\n\n[optimizer]\niterations = {its}\n\n'
                          "[output]\nsize = 256\n")
        cmd = [sys.executable, "-m", "rvgen", "run", str(recipe), "-i", str(inputs), "-o", str(tmp / "out"),
               "--gpus", "0", "-q", "--log-file", str(outdir / "cases" / "folder-256.jsonl")]
        t0 = time.perf_counter()
        env = dict(os.environ, RVGEN_LOAD_PLUGINS="",
                   PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rvgen_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"rvgen run exited {proc.returncode}: {last_line(proc.stdout)}")
        made = len(list((tmp / "out").glob("*.png")))
        if made != count:
            raise RuntimeError(f"rvgen run made {made} of {count} images")
        # The baseline, image by image in this process (its per-image setup counts, a process
        # start per image does not), on the first few images after a short warm-up.
        contents = [imageio.load_image(p, 256).to(device) for p in paths[: s["baseline_images"]]]
        synth = b.make_synth("style", 256, its, device, "fp32")
        b.baseline(synth, contents[0], 3)
        times = [b.baseline(synth, c, its)[0] for c in contents]
    base_per_image = sum(times) / len(times)
    rvgen_per_hour, base_per_hour = count / rvgen_s * 3600, 3600 / base_per_image
    return {"value": rvgen_per_hour / base_per_hour,
            "notes": f"rvgen run {rvgen_s:.1f} s for {count} images ({rvgen_per_hour:,.0f} images/h, process "
                     f"start included); baseline {base_per_image:.2f} s per image ({base_per_hour:,.0f} images/h, "
                     f"mean of {len(times)}); {its} iterations",
            "details": {"rvgen_process_s": rvgen_s, "images": count, "rvgen_images_per_hour": rvgen_per_hour,
                        "baseline_s_per_image": base_per_image, "baseline_images_per_hour": base_per_hour,
                        "baseline_images_timed": len(times), "iterations": its}}


def case_tflops_512(b, device, s) -> dict:
    import torch

    batch, its = s["tflops_batch"], s["tflops_iterations"]
    synth = b.make_synth("style", 512, its, device, "auto")
    contents = [photo(b, i, 512).to(device) for i in range(batch)]
    floor_s, flops = b.floor(synth, torch.cat(contents), 5)  # one forward + backward of the batch
    run = b.rvgen(synth, contents)
    (t0, i0, _), (t1, i1, _) = run.trace[0], run.trace[-1]
    per_iteration = (t1 - t0) / max(1, i1 - i0)  # steady state: setup and final scoring left out
    per_evaluation = per_iteration * run.iterations / max(1, run.evaluations)
    sustained = flops / per_evaluation / 1e12
    return {"value": sustained,
            "notes": f"batch {batch}, {its} iterations, {per_evaluation * 1e3:.1f} ms per evaluation; bare "
                     f"forward + backward {flops / floor_s / 1e12:.0f} TFLOP/s ({floor_s * 1e3:.1f} ms), "
                     f"precision {synth.numerics.precision}",
            "details": {"batch": batch, "flops_per_evaluation": flops, "ms_per_evaluation": per_evaluation * 1e3,
                        "floor_ms": floor_s * 1e3, "floor_tflops": flops / floor_s / 1e12,
                        "evaluations": run.evaluations, "iterations": run.iterations,
                        "precision": synth.numerics.precision}}


def case_memory_512(b, device, s) -> dict:
    import torch

    from rvgen.engine.memory import MAX_BATCH, free_memory

    its = s["memory_iterations"]
    synth = b.make_synth("style", 512, its, device, "auto")
    free = free_memory(device)
    batch = synth.batch_size((512, 512), MAX_BATCH)
    estimate = synth.memory_estimate((512, 512)).total(batch)
    contents = [photo(b, i, 512).to(device) for i in range(batch)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run = b.rvgen(synth, contents)
    peak = torch.cuda.max_memory_allocated()
    gib = 2**30
    return {"value": batch / run.seconds,
            "notes": f"batch {batch} chosen with {free / gib:.1f} GiB free; peak {peak / gib:.2f} GiB, "
                     f"estimate {estimate / gib:.2f} GiB ({estimate / peak:.2f}x); {its} iterations in "
                     f"{run.seconds:.1f} s",
            "details": {"batch": batch, "free_bytes": free, "peak_bytes": peak, "estimate_bytes": estimate,
                        "estimate_over_peak": estimate / peak, "seconds": run.seconds, "iterations": its}}


def run_case(name: str, outdir: Path, quick: bool) -> None:
    import torch

    b = bench()
    device = torch.device("cuda")
    s = settings(quick)
    if name == "style-512":
        out = case_style_512(b, device, s)
    elif name == "folder-256":
        out = case_folder_256(b, device, s, outdir)
    elif name == "tflops-512":
        out = case_tflops_512(b, device, s)
    elif name == "memory-512":
        out = case_memory_512(b, device, s)
    else:
        raise SystemExit(f"unknown case {name!r}; one of {', '.join(CASES)}")
    (outdir / "cases").mkdir(parents=True, exist_ok=True)
    (outdir / "cases" / f"{name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"{name}: {out['value']:.4g} ({out['notes']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path, help="folder for gpu_check.json, gpu_check.md and the logs")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing (no GPU needed)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and images (a smoke run)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in a process of its own
    args = parser.parse_args(argv)
    if args.dry_run:
        print(plan_text(args.outdir, args.quick))
        return 0
    if args.case:
        run_case(args.case, args.outdir, args.quick)
        return 0
    return check(args.outdir, args.quick)


if __name__ == "__main__":
    sys.exit(main())
