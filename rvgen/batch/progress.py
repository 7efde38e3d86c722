"""Progress reporters: a rich live display on a terminal, plain log lines otherwise (cron).

Both implement :class:`rvgen.batch.runner.Reporter` and print the same summary at the end.
"""

from __future__ import annotations

import time
from datetime import datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rvgen.batch.jobs import Job, Plan
from rvgen.batch.runner import Summary
from rvgen.engine.optimize import Progress as Step
from rvgen.engine.optimize import Result


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _Base:
    def __init__(self, console: Console, output_dir: str, verbose: bool = False):
        self.console = console
        self.output_dir = output_dir
        self.verbose = verbose
        self.total = 0

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)

    def start(self, plan: Plan, device: str) -> None:
        self.total = len(plan.jobs)
        if plan.ignored:
            shown = ", ".join(plan.ignored[:5]) + (f" and {len(plan.ignored) - 5} more" if len(plan.ignored) > 5 else "")
            self.say(f"skipping {len(plan.ignored)} file(s) that are not images: {shown}", "yellow")
        self.say(f"{self.total} image(s) on {device} -> {self.output_dir}")

    def image_failed(self, job: Job, reason: str, details: str | None) -> None:
        self.say(f"failed: {job.rel}: {reason}", "red")
        if self.verbose and details:
            self.say(details)

    def finish(self, summary: Summary) -> None:
        parts = [f"{len(summary.done)} done", f"{len(summary.failed)} failed"]
        left = summary.total - len(summary.done) - len(summary.failed)
        if left:
            parts.append(f"{left} not started")
        line = f"{', '.join(parts)} in {duration(summary.seconds)}"
        if summary.interrupted:
            line = "interrupted: " + line
        self.say(line, "bold red" if summary.failed or summary.interrupted else "bold green")
        for job, reason in summary.failed:
            self.say(f"  {job.rel}: {reason}", "red")


class PlainReporter(_Base):
    """One timestamped line per event, and a progress line at most every ``interval`` seconds."""

    def __init__(self, console: Console, output_dir: str, verbose: bool = False, interval: float = 30.0):
        super().__init__(console, output_dir, verbose)
        self.interval = interval
        self._last = 0.0
        self._index = 0

    def say(self, text: str, style: str | None = None) -> None:
        super().say(f"{datetime.now():%Y-%m-%d %H:%M:%S} {text}")

    def image_start(self, job: Job, index: int) -> None:
        self._index = index + 1
        self._last = time.monotonic()

    def iteration(self, job: Job, step: Step) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.say(f"[{self._index}/{self.total}] {job.rel}: iteration {step.iteration}/{step.iterations}, "
                     f"loss {step.loss:.4g}")

    def image_done(self, job: Job, result: Result) -> None:
        self.say(f"[{self._index}/{self.total}] {job.rel} -> {job.output} "
                 f"({result.iterations} iterations, loss {result.loss:.4g}, {result.seconds:.1f}s)")


class QuietReporter(_Base):
    """Only failures and the summary."""

    def start(self, plan: Plan, device: str) -> None:
        self.total = len(plan.jobs)

    def image_start(self, job: Job, index: int) -> None:
        pass

    def iteration(self, job: Job, step: Step) -> None:
        pass

    def image_done(self, job: Job, result: Result) -> None:
        pass


class RichReporter(_Base):
    """A live display: the batch (done/total, ETA) and the current image (iteration, loss)."""

    def __init__(self, console: Console, output_dir: str, verbose: bool = False):
        super().__init__(console, output_dir, verbose)
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
        self.image = None

    def start(self, plan: Plan, device: str) -> None:
        super().start(plan, device)
        self.batch = self.progress.add_task("batch", total=self.total, info="")
        self.image = self.progress.add_task("image", total=1, info="", visible=False)
        self.progress.start()

    def image_start(self, job: Job, index: int) -> None:
        self.progress.reset(self.image, total=None, description=job.rel[-32:], info="loading", visible=True)

    def iteration(self, job: Job, step: Step) -> None:
        self.progress.update(self.image, total=step.iterations, completed=step.iteration, info=f"loss {step.loss:.3e}")

    def image_done(self, job: Job, result: Result) -> None:
        self.progress.advance(self.batch)
        self.progress.console.print(f"[green]done[/] {job.rel} -> {job.output} "
                                    f"(loss {result.loss:.3e}, {result.seconds:.1f}s)", highlight=False)

    def image_failed(self, job: Job, reason: str, details: str | None) -> None:
        self.progress.advance(self.batch)
        super().image_failed(job, reason, details)

    def finish(self, summary: Summary) -> None:
        if self.image is not None:
            self.progress.update(self.image, visible=False)
        self.progress.stop()
        super().finish(summary)
