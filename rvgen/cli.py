"""The command line: parse, call the library, render. No tensors here.

Errors the user can fix are one line on stderr (``Error: ...``) with exit status 2 for usage
and recipe problems; ``-v`` adds tracebacks. ``rvgen run`` exits 0 when every image was
made, 1 when some failed (the others are still made), 75 when another run holds the output
folder, 130 or 143 when stopped by SIGINT or SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import rvgen
from rvgen.errors import RvgenError, UsageError, one_line
from rvgen.shipped import resolve as resolve_recipe


class RvgenGroup(click.Group):
    """Turns rvgen's errors into one line and an exit status; tracebacks only with ``-v``."""

    def invoke(self, ctx: click.Context):
        verbose = bool(ctx.params.get("verbose"))
        try:
            return super().invoke(ctx)
        except RvgenError as exc:
            if verbose:
                traceback.print_exc()
            _warn_plugin_problems(ctx, unless_in=str(exc))
            click.echo(f"Error: {one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"Error: internal error: {one_line(f'{type(exc).__name__}: {exc}', 300)} "
                       "(rerun with -v for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=RvgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rvgen.__version__, prog_name="rvgen")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
def cli(verbose: bool) -> None:
    """Images from untrained networks: reconstruct, texture and style over folders of images."""


def _warn_plugin_problems(ctx: click.Context | None = None, unless_in: str = "") -> None:
    """One ``Warning:`` line per plugin left out and per other plugin warning, once per command,
    after its recipe was checked: a recipe that uses a plugin left out fails with that line
    instead (its error, ``unless_in``, holds it, and it is not repeated as a warning). Before
    the registry is built nothing is said: no plugin was looked at yet."""
    import rvgen.plugins

    meta = (ctx or click.get_current_context()).find_root().meta
    if meta.get("rvgen.plugins.warned") or rvgen.plugins.built() is None:
        return
    meta["rvgen.plugins.warned"] = True
    for line in rvgen.plugins.load_warnings():
        if line not in unless_in:
            click.echo(f"Warning: {line}", err=True)


EPILOG = ("Exit status: 0 all images done, 1 some failed (the others were done), 2 usage or recipe error, "
          "75 another run holds the output folder, 130 interrupted (SIGINT), 143 terminated (SIGTERM).")


@cli.command(epilog=EPILOG)
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--from", "from_image", type=click.Path(dir_okay=False, path_type=Path), metavar="IMAGE",
              help="Instead of RECIPE: the recipe a result of rvgen was made with (as rvgen info IMAGE shows it).")
@click.option("-i", "--input", "input_spec", metavar="PATH",
              help="Folder (searched recursively), image file, or skimage:NAME[,NAME...]. "
                   "Default: scikit-image's sample photos.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder. Default: rvgen-out/RECIPE_NAME.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set optimizer.iterations=50 (value parsed as TOML).")
@click.option("--gpus", metavar="0,1", help="GPU indices to use, one worker each.")
@click.option("--devices", "--device", "devices", metavar="LIST",
              help="Devices to use, e.g. cuda:0,cuda:1,cpu or mps. Default: every GPU, else the CPU.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Workers per device. Default: one per GPU; on the CPU, the cores divided by --threads.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch threads per CPU image, whatever --workers is (a CPU result depends on them, not on "
                   "--workers; a result made on other threads is made again). Default: 1, or cores / 8 past 8 "
                   "cores.")
@click.option("--shard", metavar="K/N", help="Make only shard K of N of the jobs (for N machines).")
@click.option("--force", is_flag=True, help="Redo images that are already done.")
@click.option("--wait", is_flag=True, help="If another run holds the output folder, wait for it instead of exiting 75.")
@click.option("--dry-run", is_flag=True, help="Print the plan (jobs, already done, workers) and run nothing.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Append a JSON line per event (image done or failed, start, end) to this file.")
@click.option("--backend", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="local: worker processes on this machine; dask: tasks on a Dask cluster (--scheduler).")
@click.option("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the summary.")
@click.option("--no-report", is_flag=True, help="Do not write OUTPUT/index.html (the page of the folder).")
@click.pass_context
def run(ctx: click.Context, recipe: Path | None, from_image: Path | None, input_spec: str | None,
        output: Path | None, overrides: tuple[str, ...], gpus: str | None, devices: str | None,
        workers: int | None, threads: int | None, shard: str | None, force: bool, wait: bool, dry_run: bool,
        log_file: Path | None, backend: str, scheduler: str | None, quiet: bool, no_report: bool) -> None:
    """Run RECIPE over every image of --input, writing one result per image to --output.

    RECIPE is a recipe file or the name of a shipped recipe (see `rvgen recipes`).

    Images already made by the same recipe from the same input are skipped, so a rerun
    finishes an interrupted batch. OUTPUT/index.html shows the folder (--no-report: not)."""
    from rvgen.batch.devices import resolve_devices
    from rvgen.batch.jobs import DEFAULT_SAMPLES, parse_shard, plan_jobs, select_shard
    from rvgen.batch.lock import OutputLock
    from rvgen.batch.runner import prepare, remove_leftovers, run_jobs, worker_specs
    from rvgen.batch.sidecar import split_finished
    from rvgen.batch.steps import remove_steps
    from rvgen.batch.summary import RunInfo, WorkerSpec
    from rvgen.imageio import FORMAT_NAMES
    from rvgen.recipe import VIDEO_CODECS

    _check_backend(backend, scheduler, local_options=bool(gpus or devices or workers or threads))
    shard_k_n = parse_shard(shard) if shard else None
    parsed, named, made_with, stem = _run_recipe(recipe, from_image, overrides)
    threads = threads or made_with
    _warn_plugin_problems(ctx)
    specs = ([WorkerSpec("dask", scheduler)] if scheduler
             else worker_specs(resolve_devices(gpus, devices), workers, threads=threads))
    output = output or default_output(stem)
    check_folder(output, "--output")
    if from_image is not None:
        _from_notice(from_image, parsed, output, named)
    if log_file is not None:
        check_folder(log_file.parent, "--log-file", log_file)
    console = Console()
    if input_spec is None:
        input_spec = DEFAULT_SAMPLES
        if not quiet:
            console.print(f"no --input given: using scikit-image's sample photos ({input_spec})", highlight=False)
    plan = plan_jobs(input_spec, output, parsed.variations, parsed.output["format"],
                     steps=parsed.output["save_every"] > 0, clip_format=VIDEO_CODECS[parsed.video["codec"]],
                     gifs=parsed.video_table)
    if not plan.jobs:
        shown = ", ".join(plan.ignored[:3]) + (" ..." if len(plan.ignored) > 3 else "")
        ignored = f"; ignored: {shown}" if shown else ""
        raise UsageError(f"--input {input_spec}: no images or clips found (looked for {FORMAT_NAMES} and "
                         f"video files){ignored}")
    jobs = plan.jobs
    if shard_k_n:
        jobs = select_shard(jobs, *shard_k_n)
    key = prepare(parsed)
    key = replace(key, threads=next((s.threads for s in specs if s.device == "cpu"), None))
    if from_image is not None:  # a reference only the image's metadata names gets no thumbnail or link on the page
        key = replace(key, sources={name: source for name, source in key.sources.items() if f"task.{name}" in named})
    if dry_run:
        todo, finished = (list(jobs), []) if force else split_finished(jobs, key)
        _print_plan(console, plan, jobs, todo, finished, specs, output, shard)
        return
    make_folder(output, "--output")
    verbose = bool(ctx.find_root().params.get("verbose"))
    reporter, log = _reporters(console, quiet, verbose, log_file, None if no_report else output, key.recipe,
                               parsed.source)

    def waiting(line: str) -> None:
        if not quiet:
            console.print(line, highlight=False, markup=False, soft_wrap=True)

    try:
        with OutputLock(output).acquire(wait=wait, on_wait=waiting):
            remove_leftovers(output)
            if not parsed.output["keep_steps"]:  # a killed run's step images, which it would have removed
                remove_steps(jobs)
            todo, finished = (list(jobs), []) if force else split_finished(jobs, key)
            if force:  # a clip's frames kept by an earlier run are redone too
                from rvgen.batch.clip import clear_work

                for job in todo:
                    if job.clip:
                        clear_work(job)
            run_info = RunInfo(todo, len(finished), plan.ignored, specs, str(output))  # run_jobs drops idle workers
            summary = run_jobs(parsed, run_info, reporter, key, scheduler=scheduler)
    finally:
        if log is not None:
            log.close()
    ctx.exit(summary.exit_code)



def _check_backend(backend: str, scheduler: str | None, local_options: bool) -> None:
    """The options that choose where a run's workers are must agree (one usage line if not)."""
    if backend == "dask" and not scheduler:
        raise UsageError("--backend dask needs --scheduler ADDRESS (e.g. tcp://host:8786)")
    if scheduler and backend != "dask":
        raise UsageError("--scheduler is for --backend dask")
    if backend == "dask" and local_options:
        raise UsageError("--gpus, --devices, --workers and --threads are for --backend local; "
                         "a Dask cluster has its own workers")


def _run_recipe(recipe: Path | None, from_image: Path | None, overrides: tuple[str, ...]):
    """The recipe a run makes: (recipe, the keys ``--from`` took from the image, the torch
    threads the image was made on or None, the name of the default output folder)."""
    from rvgen.recipe import load_recipe

    if (recipe is None) == (from_image is None):
        raise UsageError("give a RECIPE or --from IMAGE (one of them)")
    if from_image is not None:
        parsed, named, made_with = _recipe_from_image(from_image, overrides)
        return parsed, named, made_with, from_image.stem  # the image's own name: never a path its metadata gives
    path = resolve_recipe(recipe)
    return load_recipe(path, overrides), frozenset(), None, path.stem


def _reporters(console: Console, quiet: bool, verbose: bool, log_file: Path | None, page: Path | None,
               recipe: str, source: str):
    """What receives a run's events: the screen's reporter (quiet, live or plain lines), the
    JSON log with ``--log-file`` and the folder's page unless ``--no-report`` (``page`` None).
    Returns (the reporter, the log or None: it is closed when the run ends)."""
    from rvgen.batch.reporters import JsonLogReporter, PlainReporter, QuietReporter, RichReporter, Tee, shown

    if quiet:
        reporter = QuietReporter(console, verbose)
    elif console.is_terminal:
        reporter = RichReporter(console, verbose)
    else:
        reporter = PlainReporter(console, verbose)
    log = None
    if log_file is not None:  # first, so that a log it cannot write is in the summary the others show
        screen = reporter
        log = JsonLogReporter(log_file, sys.argv, warn=lambda text: screen.say(text, "yellow"))
        reporter = Tee(log, screen)
    if page is not None:
        from rvgen.report import PageReporter

        def warn(line: str) -> None:  # on stderr, and in the log as a "warning" event
            click.echo(f"Warning: {shown(line)}", err=True)
            if log is not None:
                log.write("warning", message=line)

        reporter = Tee(reporter, PageReporter(page, recipe, source, on_error=warn))
    return reporter, log

def check_folder(path: Path, option: str, given: Path | None = None) -> None:
    """A usage error unless rvgen could make and write in folder ``path``: the nearest part of it
    that exists must be a folder this user may write in. Creates nothing (``--dry-run`` too).
    The error names ``option`` and its value, ``given`` (default: ``path``)."""
    given = given or path
    try:
        existing = path.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        is_dir = existing.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, a NUL character
        raise UsageError(f"{option} {given}: not a usable path ({getattr(exc, 'strerror', None) or exc})") from None
    if not is_dir:
        raise UsageError(f"{option} {given}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {given}: {existing} is not writable (permission denied)")


def make_folder(path: Path, option: str) -> None:
    """Create folder ``path`` and check a file can be made in it; a usage error if not (a
    read-only file system, a folder only root may write in), before any work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write in it ({exc.strerror or exc})") from None


def _provenance(image: Path) -> dict:
    from rvgen.batch.schema import Invalid
    from rvgen.batch.sidecar import read_provenance

    if not image.is_file():
        raise UsageError(f"{image}: file not found")
    try:
        data = read_provenance(image)
    except Invalid as exc:
        raise UsageError(f"{image}: {exc}; it cannot be used") from None
    if data is None:
        raise UsageError(f"{image}: says nothing of how it was made (no rvgen metadata in it, no sidecar beside it)")
    return data


def _plugins_not_here(made_with: dict) -> str:
    """The plugin distributions an image records (``plugins``) that this installation does not
    have at the same version, said for a message ('' when it has them all)."""
    from rvgen.plugins import get_registry, normalize_name

    here = get_registry().installed()
    said = []
    for dist, version in sorted(made_with.items()):
        now = here.get(normalize_name(dist))
        if now != version:
            state = "which is not installed here" if now is None else f"installed here at {_shown(now)}"
            said.append(f"the plugin {_shown(dist)} {_shown(version)}, {state} (pip install "
                        f"'{_shown(dist)}=={_shown(version)}')")
    return "; ".join(said)


def _recipe_from_image(image: Path, overrides: tuple[str, ...]):
    """The recipe ``image`` records, with ``--set`` overrides, validated as a recipe file is.
    Its source is the image: the name the metadata gives is only text."""
    from rvgen.recipe import apply_overrides, parse_recipe

    data = _provenance(image)
    recorded = data["recipe"]
    resolved, cwd_keys = apply_overrides(recorded["resolved"], overrides)
    try:
        parsed = parse_recipe(resolved, cwd_keys=cwd_keys, source=str(image))
    except UsageError as exc:
        missing = _plugins_not_here(data.get("plugins") or {})
        if missing:
            raise type(exc)(f"{exc}; {_shown(image.name)} was made with {missing}") from None
        raise
    changed = _plugins_not_here(data.get("plugins") or {})
    if changed:
        click.echo(f"Warning: {_shown(image)} was made with {changed}; results may differ", err=True)
    if not overrides and recorded.get("digest") and parsed.digest() != recorded["digest"]:
        click.echo(f"Warning: {_shown(image)}: this rvgen resolves its recipe to digest {parsed.digest()}, not the "
                   f"recorded {_shown(recorded['digest'])}; results may differ", err=True)
    # A CPU result depends on the precision it ran in and its torch threads: pin what the image
    # records (unless set here), so it comes back bit for bit on any CPU.
    if str(data.get("device") or "").split(":")[0] != "cpu":
        return parsed, cwd_keys, None
    from rvgen.engine.precision import LAYOUTS, LEGACY_CPU, PRECISIONS
    from rvgen.engine.precision import resolve as resolve_numerics

    # Only where "auto" would resolve otherwise on this CPU: elsewhere the recipe, and its
    # digest, stay as recorded.
    here = resolve_numerics(parsed.execution.precision, "cpu", parsed.execution.layout)
    pins = []
    for key, allowed in (("precision", PRECISIONS), ("layout", LAYOUTS)):
        made = data.get(key, getattr(LEGACY_CPU, key))  # a CPU result from before they were recorded
        if made in allowed and made != "auto" and made != getattr(here, key) \
                and getattr(parsed.execution, key) == "auto" and f"optimizer.{key}" not in cwd_keys:
            pins.append(f"optimizer.{key}='{made}'")
    if pins:
        parsed = parse_recipe(apply_overrides(resolved, pins)[0], cwd_keys=cwd_keys, source=str(image))
    threads = data.get("threads")
    return parsed, cwd_keys, threads if isinstance(threads, int) and 1 <= threads <= 1024 else None


def _shown(text) -> str:
    """Text from a file or the command line, safe for the terminal (:func:`rvgen.batch.reporters.shown`)."""
    from rvgen.batch.reporters import shown

    return shown(text)


def default_output(name: str) -> Path:
    """``rvgen-out/NAME``: where a run's results go without ``--output`` (a name that is no
    folder's, such as ``..``, is ``rvgen-out/results``)."""
    return Path("rvgen-out") / (name if name.strip(".") and "/" not in name else "results")


def _from_notice(image: Path, recipe, output: Path, named: frozenset[str]) -> None:
    """What ``--from IMAGE`` will read (the files its recorded recipe names) and write, said
    before anything is read or written; keys set with ``--set`` (``named``) are the user's."""
    files = recipe.files()
    for key, path in files[:20]:
        mine = " (set with --set)" if key in named else " (named in the image's metadata)"
        click.echo(f"--from {_shown(image)}: reads {key} = {_shown(path)}{mine}", err=True)
    if len(files) > 20:
        click.echo(f"--from {_shown(image)}: reads {len(files) - 20} more file(s)", err=True)
    click.echo(f"--from {_shown(image)}: writes results, sidecars and the page in {_shown(output)}", err=True)


def _print_plan(console: Console, plan, jobs, todo, finished, specs, output: Path, shard: str | None) -> None:
    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    def threads(spec) -> str:
        return f" ({spec.threads} thread{'s' if spec.threads > 1 else ''})" if spec.threads else ""

    say(f"plan for {output}:")
    say(f"  to make:      {len(todo)}")
    say(f"  already done: {len(finished)}" + (" (skipped; --force redoes them)" if finished else ""))
    if shard:
        say(f"  shard:        {shard} ({len(jobs)} of {len(plan.jobs)} jobs)")
    if plan.ignored:
        say(f"  ignored:      {len(plan.ignored)}: {', '.join(plan.ignored[:5])}{' ...' if len(plan.ignored) > 5 else ''}")
    say(f"  workers:      {', '.join(s.name + threads(s) for s in specs)}")
    for job in todo[:50]:
        say(f"  {job.rel} -> {job.output}")
    if len(todo) > 50:
        say(f"  ... and {len(todo) - 50} more")


def _recipe_reference(registry) -> str:
    """The recipe key reference in Markdown, from the declared parameters (docs/recipes.md)."""
    from rvgen.params import REQUIRED, number
    from rvgen.recipe import OPTIMIZER_PARAMS, OUTPUT_PARAMS, TERM_PARAMS, VIDEO_PARAMS

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    def table(params) -> list[str]:
        rows = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
        for p in params:
            default = ("**required**" if p.default is REQUIRED else "not set" if p.default is None
                       else f"`{json.dumps(p.default)}`")
            bounds = [f"≥ {number(p.minimum)}"] if p.minimum is not None else []
            bounds += [f"≤ {number(p.maximum)}"] if p.maximum is not None else []
            allowed = (", ".join(f"`{json.dumps(c)}`" for c in p.choices) if p.choices else ", ".join(bounds))
            rows.append(f"| `{p.name}` | {cell(p.type_name)} | {default} | {cell(allowed)} | {cell(p.help)} |")
        return rows + [""]

    def entries(kind: str, heading: str) -> list[str]:
        lines = []
        for e in sorted(registry.entries[kind].values(), key=lambda e: e.name):
            lines += [heading.format(name=e.name), "", f"{cell(e.description).rstrip('.')}. From {e.source}.", ""]
            lines += table(e.params) if e.params else ["No options.", ""]
            for p in e.params:
                if p.fields:  # an array of tables: its keys
                    lines += [f"Each `[[{kind}.{p.name}]]` table:", "", *table(p.fields)]
        return lines

    lines = [
        "# Recipe keys", "",
        "<!-- Made by `rvgen plugins --markdown` from the declared parameters; do not edit by hand. -->", "",
        "A recipe is a TOML file. Every table is optional except `[task]`, whose `name` picks the task;",
        "`[backbone]`'s `name` picks the backbone (default `random-vgg19`). A top-level",
        "`description = \"...\"` is free text. Paths are relative to the recipe file. Any key can be",
        "overridden on the command line by its dotted path: `--set optimizer.iterations=50`.", "",
        "## `[optimizer]`", "", *table(OPTIMIZER_PARAMS),
        "## `[output]`", "", *table(OUTPUT_PARAMS),
        "## `[video]`", "", "How clips (video files in `--input`) are made; see [video.md](video.md). With a `[video]`",
        "table an animated GIF is a clip too.", "", *table(VIDEO_PARAMS),
        "## `[[terms]]`", "", "Extra objective terms, added to the task's own.", "", *table(TERM_PARAMS),
        "## Tasks: `[task]`", "", *entries("task", '### `name = "{name}"`'),
        "## Backbones: `[backbone]`", "", *entries("backbone", '### `name = "{name}"`'),
        "## Losses: `[losses.NAME]`", "",
        "A loss's options are shared by every term that uses it.", "", *entries("loss", "### `[losses.{name}]`"),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _param_rows(params) -> list[tuple[str, str, str, str]]:
    """(name, = default, type, help) of each of ``params`` (a registry entry's, or a table's)."""
    from rvgen.params import REQUIRED

    rows = []
    for p in params:
        default = "required" if p.default is REQUIRED else ("-" if p.default is None else json.dumps(p.default))
        choices = f"one of {', '.join(map(str, p.choices))}; " if p.choices else ""
        rows.append((p.name, f"= {default}", p.type_name, choices + p.help))
    return rows


def _plugins_json(registry) -> dict:
    from rvgen.params import REQUIRED

    data: dict = {
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
    data["left_out"] = [{"plugin": b.plugin, "source": b.source, "problem": b.problem} for b in registry.broken]
    return data


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--markdown", is_flag=True, help="The recipe key reference in Markdown (docs/recipes.md).")
def plugins(as_json: bool, markdown: bool) -> None:
    """List the installed backbones, losses and tasks, where they come from, and their options,
    and the plugins left out (at fault), each with what to change."""
    from rvgen.plugins import get_registry

    registry = get_registry()
    for line in registry.warnings:  # the plugins left out are listed below, not warned about
        click.echo(f"Warning: {line}", err=True)
    if markdown:
        click.echo(_recipe_reference(registry), nl=False)
        return
    if as_json:
        click.echo(json.dumps(_plugins_json(registry), indent=2, default=repr))
        return
    console = Console()
    terminal = console.is_terminal
    if not terminal:  # piped or redirected: whole lines, never wrapped to an assumed 80 columns
        console = Console(soft_wrap=True)

    def show(rows: list[tuple[str, str, str, str]]) -> None:
        if terminal:
            table = Table(box=None, show_header=False, padding=(0, 1, 0, 3), expand=False)
            table.add_column(style="green", no_wrap=True)
            table.add_column(no_wrap=True)
            table.add_column(style="dim", no_wrap=True)
            table.add_column()
            for row in rows:
                table.add_row(*row)
            console.print(table)
            return
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[3]]
            console.print(escape("    " + " ".join(cells).rstrip()), highlight=False)

    titles = {"task": "Tasks", "backbone": "Backbones", "loss": "Losses"}
    for kind in ("task", "backbone", "loss"):
        console.print(f"[bold underline]{titles[kind]}[/]")
        for entry in sorted(registry.entries[kind].values(), key=lambda e: e.name):
            console.print(f"\n[bold cyan]{entry.name}[/]  [dim]({escape(entry.source)})[/]", highlight=False)
            console.print(f"  {escape(entry.description)}", highlight=False)
            rows = _param_rows(entry.params)
            if rows:
                show(rows)
        console.print()
    if registry.broken:
        console.print("[bold underline]Left out[/] [dim](plugins at fault: nothing of theirs is available)[/]")
        for broken in registry.broken:
            console.print(f"\n[bold red]{escape(broken.plugin)}[/]  [dim]({escape(broken.source)})[/]", highlight=False)
            console.print(f"  {escape(broken.problem)}", highlight=False)
        console.print()
    from rvgen.recipe import VIDEO_PARAMS

    console.print("[bold underline]Clips: the recipe's \\[video] table[/]\n")
    show(_param_rows(VIDEO_PARAMS))


@cli.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
def report(output: Path) -> None:
    """Write OUTPUT/index.html again, from the folder's sidecars and record alone."""
    from rvgen.batch.reporters import shown
    from rvgen.report import write_report

    if not output.is_dir():
        raise UsageError(f"{output}: no such folder")
    path, view, note = write_report(output)
    for line in ([note] if note else []) + view.skipped:
        click.echo(f"Warning: {shown(line)}", err=True)
    click.echo(f"{shown(path)}: {len(view.results)} done, {len(view.failures)} failed, {len(view.pending)} not yet made")


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Everything the image records, as JSON.")
def info(image: Path, as_json: bool) -> None:
    """How IMAGE (a result of rvgen) was made: recipe, seeds, input, losses, versions.

    Remake it with: rvgen run --from IMAGE --input THE_INPUT"""
    from rvgen.recipe import recipe_toml

    data = _provenance(image)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))  # ASCII: escapes included
        return
    recipe, inp, loss = data["recipe"], data.get("input", {}), data.get("loss") or {}
    versions = data.get("versions") or {}
    lines = [
        f"image:      {image}" + (f" ({data['size'][0]}x{data['size'][1]})" if data.get("size") else ""),
        f"made by:    rvgen {versions.get('rvgen', '?')} (torch {versions.get('torch', '?')}, "
        f"python {versions.get('python', '?')}) on {data.get('device', '?')}",
        f"input:      {inp.get('name', '?')} (sha256 {inp.get('sha256', '?')})"
        + (f", variation {data['variation']}" if data.get("variation") else ""),
        f"recipe:     {recipe.get('source', '?')} (digest {recipe.get('digest', '?')})",
        "seeds:      " + (", ".join(f"{k} = {v}" for k, v in (data.get("seeds") or {}).items()) or "-"),
    ]
    if data.get("plugins"):
        lines.append("plugins:    " + ", ".join(f"{dist} {version}" for dist, version in data["plugins"].items()))
    for name, digest in (data.get("references") or {}).items():
        lines.append(f"reference:  {name} (sha256 {digest})")
    for name, digest in (data.get("masks") or {}).items():
        lines.append(f"mask:       {name} " + ("(no file: styled whole)" if digest == "missing" else f"(sha256 {digest})"))
    if "final" in loss:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in (loss.get("terms") or {}).items())
        lines.append(f"loss:       {loss.get('initial', float('nan')):.4g} -> {loss['final']:.4g}"
                     + (f" ({terms})" if terms else ""))
    lines.append(f"iterations: {data.get('iterations', '?')} in {float(data.get('seconds', 0)):.1f} s")
    lines += ["", "# the resolved recipe (rvgen run --from IMAGE runs it again)"]
    lines += recipe_toml(recipe["resolved"]).splitlines()
    click.echo("\n".join(_shown(line) for line in lines))  # text from the file: no escape sequence reaches the terminal


@cli.command()
def recipes() -> None:
    """List the recipes shipped with rvgen (run one by name: rvgen run NAME)."""
    from rvgen.shipped import description, recipes_dir, shipped

    found = shipped()
    if not found:
        raise UsageError("no shipped recipes in this installation")
    console = Console()
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for name, path in found.items():
        table.add_row(name, escape(description(path)))
    console.print(table)
    console.print(f"in {recipes_dir()}; run one with: rvgen run NAME --input PHOTOS", highlight=False, soft_wrap=True)


@cli.command(epilog="Exit status: 0 done, 1 some results failed (the others are still scored), 2 usage or "
                     "recipe error, 130 interrupted. Results made so far are in --output/results.")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-i", "--input", "input_spec", metavar="PATH",
              help="Folder, image file, or skimage:NAME[,NAME...]. Default: scikit-image's sample photos.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the contact sheet, metrics.csv, summary.csv, metrics.json and results/.")
@click.option("--backbones", metavar="SPECS",
              help="Comma list of NAME[:VARIANT|:KEY=VALUE], e.g. random-vgg19,random-vgg19:stacked,"
                   "random-resnet50. Default: the recipe's.")
@click.option("--layers", metavar="LAYERS",
              help="Comma list of layers, one column each, for a task with a layer_option (reconstruct's layer; "
                   "VGG names map to other backbones' equivalents).")
@click.option("--seeds", metavar="SEEDS", help="Comma list of backbone seeds, one column each.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (as in run).")
@click.option("--gpus", metavar="IDS", help="GPUs to use, e.g. 0,1 (one worker each), as in run.")
@click.option("--devices", "--device", "devices", metavar="DEVICES",
              help="Devices, e.g. cpu or cuda:0,cuda:1 (default: every GPU, else the CPU), as in run.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Workers per device; each CPU image runs on 1 torch thread (cores / 8 past 8 cores).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the tables.")
@click.pass_context
def compare(ctx: click.Context, recipe: Path, input_spec: str | None, output: Path, backbones: str | None,
            layers: str | None, seeds: str | None, overrides: tuple[str, ...], gpus: str | None,
            devices: str | None, workers: int, quiet: bool) -> None:
    """Run RECIPE's task over the same inputs per backbone x seed x layer; write a sheet and metrics.

    Each column runs on the same workers, batches and out-of-memory fallback as run."""
    import time

    from rvgen import compare as cmp
    from rvgen.batch.devices import resolve_devices
    from rvgen.batch.jobs import DEFAULT_SAMPLES, find_inputs
    from rvgen.imageio import FORMAT_NAMES
    from rvgen.batch.runner import worker_specs
    from rvgen.plugins import get_registry
    from rvgen.recipe import read_recipe_data

    recipe = resolve_recipe(recipe)
    try:
        seed_list = [int(s) for s in cmp.split_list(seeds)]
    except ValueError:
        raise UsageError(f"--seeds {seeds}: expected a comma list of integers, e.g. 0,1,2") from None
    recipe = resolve_recipe(recipe)
    data, cwd_keys = read_recipe_data(recipe, overrides)
    columns, recipes = cmp.plan_columns(data, cmp.split_list(backbones), cmp.split_list(layers), seed_list,
                                        get_registry(), recipe.resolve().parent, cwd_keys, str(recipe))
    _warn_plugin_problems(ctx)
    found, _ = find_inputs(input_spec or DEFAULT_SAMPLES, exclude=output)
    if not found:
        raise UsageError(f"--input {input_spec}: no images found (looked for {FORMAT_NAMES})")
    inputs = cmp.input_names(found)
    device_list = resolve_devices(gpus, devices)
    specs = worker_specs(device_list, workers)
    console = Console()
    total = len(columns) * len(inputs)
    if not quiet:
        console.print(f"{len(columns)} column(s) x {len(inputs)} input(s) on {', '.join(device_list)}"
                      f" ({len(specs)} worker(s))", highlight=False)

    def report(comparison, outcome) -> None:
        if not quiet:
            done = len(comparison.outcomes) + len(comparison.failures)
            console.print(f"[{done}/{total}] {escape(cmp.describe(comparison, outcome))}", highlight=False)

    def failed(comparison, column, name, reason) -> None:
        done = len(comparison.outcomes) + len(comparison.failures)
        console.print(f"[{done}/{total}] {escape(comparison.columns[column].label)} | {escape(name)}: "
                      f"FAILED {escape(reason)}", highlight=False, style="red")

    def announce(index, column) -> None:
        if not quiet:
            stacked = " (building the stacked network: minutes the first time, cached after)" \
                if column.options.get("stacked_candidates", 0) >= 2 else ""
            console.print(f"column {index + 1}/{len(columns)}: {escape(column.label)}{stacked}", highlight=False)

    start = time.perf_counter()
    comparison = cmp.run_comparison(columns, recipes, inputs, output, specs, on_result=report,
                                    on_column=announce, on_failure=failed)
    wall = time.perf_counter() - start
    meta = {"recipe": str(recipe), "input": input_spec or DEFAULT_SAMPLES, "devices": device_list,
            "wall_seconds": wall}
    paths = cmp.write_outputs(comparison, output, meta)
    paths["page"] = cmp.write_page(comparison, output, meta)
    summary = comparison.summary()
    console.print(cmp.summary_table(comparison, summary))
    pivot = cmp.layer_table(comparison, summary)
    if pivot is not None:
        console.print(pivot)
    console.print(f"wall time {wall:.0f} s; page {paths['page']}, sheet {paths['sheet']}, tables {paths['summary']}, "
                  f"{paths['csv']}, {paths['json']}", highlight=False)
    if comparison.failures:
        console.print(f"{len(comparison.failures)} result(s) failed; see above", style="red", highlight=False)
        ctx.exit(1)


def main() -> None:
    cli(prog_name="rvgen")


if __name__ == "__main__":
    main()
