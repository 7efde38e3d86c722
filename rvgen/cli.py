"""The command line: parse, call the library, render. No tensors here.

Errors the user can fix are one line on stderr (``Error: ...``) with exit status 2 for usage
and recipe problems; ``-v`` adds tracebacks. ``rvgen run`` exits 0 when every image was
made, 1 when some failed (the others are still made), 130 when interrupted.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import rvgen
from rvgen.errors import RvgenError, UsageError


class RvgenGroup(click.Group):
    """Turns rvgen's errors into one line and an exit status; tracebacks only with ``-v``."""

    def invoke(self, ctx: click.Context):
        verbose = bool(ctx.params.get("verbose"))
        try:
            return super().invoke(ctx)
        except RvgenError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"Error: internal error: {type(exc).__name__}: {exc} (rerun with -v for the traceback)",
                       err=True)
            ctx.exit(1)


@click.group(cls=RvgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rvgen.__version__, prog_name="rvgen")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
def cli(verbose: bool) -> None:
    """Images from untrained networks: reconstruct, texture and style over folders of images."""


def _warn_plugin_problems() -> None:
    from rvgen.plugins import load_warnings

    for line in load_warnings():
        click.echo(f"Warning: {line}", err=True)


def resolve_device(spec: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked against this machine."""
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device {spec}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine (torch {torch.__version__})")
        count = torch.cuda.device_count()
        index = device.index or 0
        if index >= count:
            raise UsageError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        return f"cuda:{index}"
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {spec}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {spec}: unsupported device type {device.type!r}")
    return str(device)


@cli.command(epilog="Exit status: 0 all images done, 1 some failed (the others were done), "
                     "2 usage or recipe error, 130 interrupted.")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-i", "--input", "input_spec", metavar="PATH",
              help="Folder (searched recursively), image file, or skimage:NAME[,NAME...]. "
                   "Default: scikit-image's sample photos.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder. Default: rvgen-out/RECIPE_NAME.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set optimizer.iterations=50 (value parsed as TOML).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the summary.")
@click.pass_context
def run(ctx: click.Context, recipe: Path, input_spec: str | None, output: Path | None,
        overrides: tuple[str, ...], device: str, quiet: bool) -> None:
    """Run RECIPE over every image of --input, writing one result per image to --output."""
    from rvgen.batch.jobs import DEFAULT_SAMPLES, plan_jobs
    from rvgen.batch.progress import PlainReporter, QuietReporter, RichReporter
    from rvgen.batch.runner import run_batch
    from rvgen.recipe import load_recipe

    verbose = bool(ctx.find_root().params.get("verbose"))
    _warn_plugin_problems()
    parsed = load_recipe(recipe, overrides)
    device = resolve_device(device)
    output = output or Path("rvgen-out") / recipe.stem
    console = Console()
    if input_spec is None:
        input_spec = DEFAULT_SAMPLES
        if not quiet:
            console.print(f"no --input given: using scikit-image's sample photos ({input_spec})", highlight=False)
    plan = plan_jobs(input_spec, output, parsed.variations, parsed.output["format"])
    if not plan.jobs:
        raise UsageError(f"--input {input_spec}: no images found (looked for jpg, png, webp, bmp, tiff)")
    if quiet:
        reporter = QuietReporter(console, str(output), verbose)
    elif console.is_terminal:
        reporter = RichReporter(console, str(output), verbose)
    else:
        reporter = PlainReporter(console, str(output), verbose)
    summary = run_batch(parsed, plan, reporter, device)
    ctx.exit(summary.exit_code)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List the installed backbones, losses and tasks, where they come from, and their options."""
    from rvgen.params import REQUIRED
    from rvgen.plugins import get_registry

    _warn_plugin_problems()
    registry = get_registry()
    if as_json:
        data = {
            kind: [
                {
                    "name": e.name,
                    "source": e.source,
                    "description": e.description,
                    "params": [
                        {"name": p.name, "type": p.type_name, "default": None if p.default is REQUIRED else p.default,
                         "required": p.default is REQUIRED,
                         "help": p.help, "choices": list(p.choices) if p.choices else None}
                        for p in e.params
                    ],
                }
                for e in sorted(entries.values(), key=lambda e: e.name)
            ]
            for kind, entries in registry.entries.items()
        }
        click.echo(json.dumps(data, indent=2, default=repr))
        return
    console = Console()
    titles = {"task": "Tasks", "backbone": "Backbones", "loss": "Losses"}
    for kind in ("task", "backbone", "loss"):
        console.print(f"[bold underline]{titles[kind]}[/]")
        for entry in sorted(registry.entries[kind].values(), key=lambda e: e.name):
            console.print(f"\n[bold cyan]{entry.name}[/]  [dim]({escape(entry.source)})[/]", highlight=False)
            console.print(f"  {escape(entry.description)}", highlight=False)
            if not entry.params:
                continue
            table = Table(box=None, show_header=False, padding=(0, 1, 0, 3), expand=False)
            table.add_column(style="green", no_wrap=True)
            table.add_column(no_wrap=True)
            table.add_column(style="dim", no_wrap=True)
            table.add_column()
            for p in entry.params:
                default = "required" if p.default is REQUIRED else ("-" if p.default is None else json.dumps(p.default))
                choices = f"one of {', '.join(map(str, p.choices))}; " if p.choices else ""
                table.add_row(p.name, f"= {default}", p.type_name, choices + p.help)
            console.print(table)
        console.print()


@cli.command(epilog="Exit status: 0 done, 1 a result failed (the comparison stops there), 2 usage or recipe "
                     "error, 130 interrupted. Results made so far are in --output/results.")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-i", "--input", "input_spec", metavar="PATH",
              help="Folder, image file, or skimage:NAME[,NAME...]. Default: scikit-image's sample photos.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the contact sheet, metrics.csv, summary.csv, metrics.json and results/.")
@click.option("--backbones", metavar="SPECS",
              help="Comma list of NAME[:VARIANT|:KEY=VALUE], e.g. random-vgg19,random-vgg19:stacked,"
                   "random-resnet50. Default: the recipe's.")
@click.option("--layers", metavar="LAYERS",
              help="Reconstruct: comma list of layers, one column each (VGG names map to a ResNet's equivalents).")
@click.option("--seeds", metavar="SEEDS", help="Comma list of backbone seeds, one column each.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (as in run).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the tables.")
def compare(recipe: Path, input_spec: str | None, output: Path, backbones: str | None, layers: str | None,
            seeds: str | None, overrides: tuple[str, ...], device: str, quiet: bool) -> None:
    """Run RECIPE's task over the same inputs per backbone x seed x layer; write a sheet and metrics."""
    import time

    from rvgen import compare as cmp
    from rvgen.batch.jobs import DEFAULT_SAMPLES, find_inputs
    from rvgen.plugins import get_registry
    from rvgen.recipe import read_recipe_data

    _warn_plugin_problems()
    try:
        seed_list = [int(s) for s in cmp.split_list(seeds)]
    except ValueError:
        raise UsageError(f"--seeds {seeds}: expected a comma list of integers, e.g. 0,1,2") from None
    data, cwd_keys = read_recipe_data(recipe, overrides)
    columns, recipes = cmp.plan_columns(data, cmp.split_list(backbones), cmp.split_list(layers), seed_list,
                                        get_registry(), recipe.resolve().parent, cwd_keys, str(recipe))
    found, _ = find_inputs(input_spec or DEFAULT_SAMPLES, exclude=output)
    if not found:
        raise UsageError(f"--input {input_spec}: no images found (looked for jpg, png, webp, bmp, tiff)")
    inputs = cmp.input_names(found)
    device = resolve_device(device)
    console = Console()
    total = len(columns) * len(inputs)
    if not quiet:
        console.print(f"{len(columns)} column(s) x {len(inputs)} input(s) on {device}", highlight=False)

    def report(comparison, outcome) -> None:
        cmp.write_result(comparison, outcome, output)
        if quiet:
            return
        done = len(comparison.outcomes)
        scores = ", ".join(f"{k} {v:.4g}" for k, v in outcome.scores.items())
        console.print(f"[{done}/{total}] {escape(comparison.columns[outcome.column].label)} | "
                      f"{escape(outcome.input)}: {scores} ({outcome.seconds:.1f} s)", highlight=False)

    start = time.perf_counter()
    comparison = cmp.run_comparison(columns, recipes, inputs, device, on_result=report)
    wall = time.perf_counter() - start
    paths = cmp.write_outputs(comparison, output, {"recipe": str(recipe), "input": input_spec or DEFAULT_SAMPLES,
                                                   "device": device, "wall_seconds": wall})
    summary = comparison.summary()
    console.print(cmp.summary_table(comparison, summary))
    pivot = cmp.layer_table(comparison, summary)
    if pivot is not None:
        console.print(pivot)
    console.print(f"wall time {wall:.0f} s; sheet {paths['sheet']}, tables {paths['summary']}, {paths['csv']}, "
                  f"{paths['json']}", highlight=False)


def main() -> None:
    cli(prog_name="rvgen")


if __name__ == "__main__":
    main()
