"""Reporters: what a run shows while it works and leaves behind when it ends.

All of them take the same calls (:class:`rvgen.batch.summary.Reporter`): ``start`` with the
plan, ``handle`` for each worker event, ``finish`` with the summary.

- :class:`RichReporter`: a live display on a terminal, the batch as a whole and a row per
  worker (current image, iteration, loss, images done);
- :class:`PlainReporter`: timestamped lines for cron and log files;
- :class:`QuietReporter` (``-q``): failures and the summary only;
- :class:`JsonLogReporter` (``--log-file``): one JSON object per line, for machines.
"""

from __future__ import annotations

import json
import os
import signal
import time
import unicodedata
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rvgen.batch.events import (
    Event,
    ImageAbandoned,
    ImageDone,
    ImageFailed,
    ImageStarted,
    PartDone,
    Step,
    WorkerFailed,
    WorkerReady,
    duration,
)
from rvgen.batch.summary import RunInfo, Summary
from rvgen.errors import UsageError


NOT_LOGGED = {"job", "parts", "history", "image"}  # the job is logged by its fields; the rest is for Python callers


BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown(text: Any) -> str:
    """``text`` (a file name, an error message) made safe for one line of a terminal or log:
    control characters (newline, carriage return, escape sequences), line and paragraph
    separators and the bidirectional overrides are written as ``\\n``, ``\\x1b``, ``\\u202e``,
    so a file name can neither start a forged line nor rewrite what the terminal shows."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c in BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            out.append(repr(c)[1:-1])
        else:
            out.append(c)
    return "".join(out)


def summary_line(summary: Summary) -> str:
    parts = [f"{len(summary.done)} done", f"{len(summary.failed)} failed"]
    if summary.abandoned:
        parts.append(f"{len(summary.abandoned)} abandoned")
    if summary.not_started:
        parts.append(f"{summary.not_started} not started")
    if summary.skipped:
        parts.append(f"{summary.skipped} already done")
    line = f"{', '.join(parts)} in {duration(summary.seconds)}"
    if summary.signal is not None:
        line = f"interrupted ({signal.Signals(summary.signal).name}): " + line
    return line


class _Base:
    def __init__(self, console: Console, verbose: bool = False):
        self.console = console
        self.verbose = verbose
        self.total = 0
        self.finished = 0
        self.several = False  # more than one worker: name it on each line

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)

    def start(self, run: RunInfo) -> None:
        self.total = len(run.jobs)
        self.several = len(run.workers) > 1
        if run.ignored:
            names = ", ".join(map(shown, run.ignored[:5])) + (f" and {len(run.ignored) - 5} more"
                                                               if len(run.ignored) > 5 else "")
            self.say(f"skipping {len(run.ignored)} file(s) that are not images: {names}", "yellow")
        done = f" ({run.skipped} already done)" if run.skipped else ""
        workers = ", ".join(w.name for w in run.workers)
        self.say(f"{self.total} image(s) to make{done} on {workers} -> {shown(run.output)}")

    def handle(self, event: Event) -> None:
        if isinstance(event, (ImageDone, ImageFailed)):
            self.finished += 1
        method = getattr(self, "on_" + type(event).__name__, None)
        if method is not None:
            method(event)

    def where(self, event: Any) -> str:
        return f" on {event.worker}" if self.several else ""

    def on_WorkerFailed(self, event: WorkerFailed) -> None:
        self.say(f"worker {event.worker} did not start: {shown(event.reason)}", "red")
        if self.verbose and event.details:
            self.say(event.details)

    def on_ImageFailed(self, event: ImageFailed) -> None:
        self.say(f"failed: {shown(event.job.rel)}: {shown(event.reason)}", "red")
        if self.verbose and event.details:
            self.say(event.details)

    def finish(self, summary: Summary) -> None:
        bad = summary.failed or summary.interrupted or summary.problems or summary.unfinished
        self.say(summary_line(summary), "bold red" if bad else "bold green")
        for job, reason in summary.failed:
            self.say(f"  {shown(job.rel)}: {shown(reason)}", "red")
        for problem in summary.problems:
            self.say(f"  {shown(problem)}", "red")


class PlainReporter(_Base):
    """One timestamped line per finished image, a progress line per worker at most every ``interval`` s."""

    def __init__(self, console: Console, verbose: bool = False, interval: float = 30.0):
        super().__init__(console, verbose)
        self.interval = interval
        self._last: dict[str, float] = {}

    def say(self, text: str, style: str | None = None) -> None:
        super().say(f"{datetime.now():%Y-%m-%d %H:%M:%S} {text}")

    def on_WorkerReady(self, event: WorkerReady) -> None:
        if self.several:
            threads = f" ({event.threads} thread{'s' if event.threads > 1 else ''})" if event.threads else ""
            self.say(f"worker {event.worker} ready{threads}")

    def on_ImageStarted(self, event: ImageStarted) -> None:
        self._last[event.worker] = time.monotonic()

    def on_Step(self, event: Step) -> None:
        now = time.monotonic()
        if now - self._last.get(event.worker, 0.0) >= self.interval:
            self._last[event.worker] = now
            self.say(f"{shown(event.job.rel)}{self.where(event)}: {event.stage}, loss {event.loss:.4g}")

    def on_ImageDone(self, event: ImageDone) -> None:
        self.say(f"[{self.finished}/{self.total}] {shown(event.job.rel)} -> {shown(event.job.output)}"
                 f"{self.where(event)} ({event.iterations} iterations, loss {event.loss:.4g}, {event.seconds:.1f}s)")

    def on_ImageAbandoned(self, event: ImageAbandoned) -> None:
        self.say(f"abandoned: {shown(event.job.rel)} (stopped before it was finished; nothing written)", "yellow")

    def on_PartDone(self, event: PartDone) -> None:
        if event.frames:
            self.say(f"{shown(event.job.rel)}{self.where(event)}: made its share of the shots ({event.frames} "
                     "frame(s)); another worker writes the clip")


class QuietReporter(_Base):
    """Only failures and the summary."""

    def start(self, run: RunInfo) -> None:
        self.total = len(run.jobs)


class RichReporter(_Base):
    """A live display: the batch (done/total, ETA) and a row per worker (image, iteration, loss)."""

    def __init__(self, console: Console, verbose: bool = False):
        super().__init__(console, verbose)
        self.progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.batch = None
        self.rows: dict[str, Any] = {}
        self.made: dict[str, int] = {}

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.batch = self.progress.add_task("batch", total=self.total, info="")
        self.progress.start()

    def _row(self, worker: str):
        if worker not in self.rows:
            self.rows[worker] = self.progress.add_task(worker, total=None, info="starting")
            self.made[worker] = 0
        return self.rows[worker]

    def on_WorkerReady(self, event: WorkerReady) -> None:
        self.progress.update(self._row(event.worker), info="ready")

    @staticmethod
    def name(job) -> str:
        """The end of the job's name, as rich markup that shows it as it is."""
        return escape(shown(job.rel)[-32:])

    def on_ImageStarted(self, event: ImageStarted) -> None:
        self.progress.reset(self._row(event.worker), total=None,
                            info=f"{self.name(event.job)}: loading · {self.made[event.worker]} done")

    def on_Step(self, event: Step) -> None:
        self.progress.update(self._row(event.worker), total=event.iterations, completed=event.iteration,
                             info=f"{self.name(event.job)}: {event.stage} · loss {event.loss:.3e} · "
                                  f"{self.made[event.worker]} done")

    def _image_over(self, worker: str, info: str) -> None:
        self.progress.advance(self.batch)
        self.made[worker] = self.made.get(worker, 0) + 1
        self.progress.update(self._row(worker), info=f"{info} · {self.made[worker]} done")

    def on_ImageDone(self, event: ImageDone) -> None:
        self._image_over(event.worker, "idle")
        self.progress.console.print(f"[green]done[/] {escape(shown(event.job.rel))} -> "
                                    f"{escape(shown(event.job.output))}{escape(self.where(event))} "
                                    f"(loss {event.loss:.3e}, {event.seconds:.1f}s)", highlight=False)

    def on_ImageFailed(self, event: ImageFailed) -> None:
        self._image_over(event.worker, "idle")
        super().on_ImageFailed(event)

    def on_ImageAbandoned(self, event: ImageAbandoned) -> None:
        self.progress.update(self._row(event.worker), info="stopped")

    def on_PartDone(self, event: PartDone) -> None:
        row = self._row(event.worker)
        self.progress.update(row, info=f"idle · {self.made[event.worker]} done")

    def on_WorkerFailed(self, event: WorkerFailed) -> None:
        self.progress.update(self._row(event.worker), info="did not start")
        super().on_WorkerFailed(event)

    def finish(self, summary: Summary) -> None:
        self.progress.stop()
        super().finish(summary)


def _job(job) -> dict[str, Any]:
    return {"input": job.rel, "output": str(job.output), "variation": job.variation}


class JsonLogReporter:
    """``--log-file``: one JSON object per line, appended as it happens (no per-iteration lines).

    Each line goes to the file whole or not at all. A log that cannot be written (a full disk)
    never stops the run: ``warn`` is told once, the log ends with its last whole line, and
    :meth:`finish` adds the problem to the summary before the other reporters show it (so
    :class:`Tee` this reporter first). A log file that cannot be opened is a usage error.
    """

    def __init__(self, path: Path, argv: list[str] | None = None, warn: Callable[[str], None] | None = None):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"--log-file {path}: cannot open it ({exc.strerror or exc})") from None
        self.argv = argv
        self.warn = warn or (lambda text: None)
        self.lines = 0  # whole lines written
        self.error: str | None = None  # why the log stopped, once it has

    def write(self, event: str, **fields: Any) -> None:
        if self.error is not None or self.fd is None:
            return
        record = {"time": datetime.now().astimezone().isoformat(timespec="seconds"), "event": event, **fields}
        data = memoryview((json.dumps(record, default=str) + "\n").encode())
        size, written = None, 0
        try:
            size = os.fstat(self.fd).st_size
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except OSError as exc:
            if size is not None:
                self._truncate(size)
            self.error = (f"log file {self.path} could not be written ({exc.strerror or exc}); "
                          f"it ends after {self.lines} whole line(s); the run goes on without it")
            self.warn(self.error)
            return
        self.lines += 1

    def _truncate(self, size: int) -> None:
        """Take back a line written in part (a device that cannot be truncated keeps it)."""
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            pass

    def start(self, run: RunInfo) -> None:
        self.write("run_start", jobs=len(run.jobs), already_done=run.skipped, ignored=len(run.ignored),
                   workers=[{"name": w.name, "device": w.device} for w in run.workers], output=run.output,
                   argv=self.argv)

    def handle(self, event: Event) -> None:
        if isinstance(event, Step):
            return
        fields = {k: v for k, v in vars(event).items() if k not in NOT_LOGGED}
        if hasattr(event, "job"):
            fields.update(_job(event.job))
        name = "".join("_" + c.lower() if c.isupper() else c for c in type(event).__name__).lstrip("_")
        self.write(name, **fields)

    def finish(self, summary: Summary) -> None:
        self.write("run_end", exit_code=summary.exit_code, done=len(summary.done), failed=len(summary.failed),
                   abandoned=len(summary.abandoned), not_started=summary.not_started, already_done=summary.skipped, seconds=round(summary.seconds, 3),
                   signal=signal.Signals(summary.signal).name if summary.signal else None,
                   failures=[{**_job(job), "reason": reason} for job, reason in summary.failed],
                   problems=summary.problems)
        self.close()
        if self.error is not None:
            summary.problems.append(self.error)

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError as exc:  # a network file system reports a failed write only here
                if self.error is None:
                    self.error = f"log file {self.path} could not be written ({exc.strerror or exc})"
                    self.warn(self.error)
            self.fd = None


class Tee:
    """Several reporters as one."""

    def __init__(self, *reporters):
        self.reporters = reporters

    def start(self, run: RunInfo) -> None:
        for r in self.reporters:
            r.start(run)

    def handle(self, event: Event) -> None:
        for r in self.reporters:
            r.handle(event)

    def finish(self, summary: Summary) -> None:
        for r in self.reporters:
            r.finish(summary)
