"""Running a comparison: every column through the same batch engine as ``rvgen run``
(workers per device, batches, the out-of-memory fallback), each result scored as it
arrives by the task's own :meth:`~rvgen.tasks.Task.score`.

A column's results are written under ``OUTPUT/results/COLUMN/`` with their sidecars, as
``rvgen run`` writes them; the images also come back in the workers' events, so they are
scored at full precision rather than from the 8-bit files. A comparison always remakes
its results (it measures; it does not resume).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rvgen import imageio
from rvgen.batch.events import Event, ImageDone, ImageFailed, WorkerFailed
from rvgen.batch.jobs import Job
from rvgen.batch.runner import run_jobs
from rvgen.batch.summary import RunInfo, Summary, WorkerSpec
from rvgen.compare.plan import Column
from rvgen.compare.outputs import result_path
from rvgen.compare.results import Comparison, Scored
from rvgen.errors import PluginError, UsageError
from rvgen.pipeline import load_references
from rvgen.plugins import Entry, Registry, get_registry
from rvgen.recipe import Recipe, call_plugin, plugin_fault

ResultCallback = Callable[[Comparison, Scored], None]
FailureCallback = Callable[[Comparison, int, str, str], None]


class _Collector:
    """A reporter for one column: scores each image as its event arrives."""

    def __init__(self, comparison: Comparison, column: int, task, contents: dict[str, torch.Tensor],
                 references: dict[str, torch.Tensor], on_result: ResultCallback | None,
                 on_failure: FailureCallback | None, entry: Entry | None = None):
        self.comparison, self.column, self.task, self.entry = comparison, column, task, entry
        self.contents, self.references = contents, references
        self.on_result, self.on_failure = on_result, on_failure

    def start(self, run: RunInfo) -> None:
        pass

    def handle(self, event: Event) -> None:
        if isinstance(event, ImageDone):
            image = event.image if event.image is not None else imageio.load_image(event.job.output)
            try:
                scores = self._score(image, self.contents[event.job.rel])
            except PluginError as exc:  # a plugin task's score(): that result fails, the others go on
                self._fail(event.job.rel, str(exc))
                return
            outcome = Scored(self.column, event.job.rel, image, scores, event.seconds, event.loss)
            self.comparison.outcomes.append(outcome)
            if self.on_result is not None:
                self.on_result(self.comparison, outcome)
        elif isinstance(event, ImageFailed):
            self._fail(event.job.rel, event.reason)
        elif isinstance(event, WorkerFailed):
            self._fail("*", f"worker {event.worker} did not start: {event.reason}")

    def _score(self, image: torch.Tensor, content: torch.Tensor) -> dict[str, float]:
        """The task's scores of one result: a float for each of its metrics, or a one-line
        :class:`~rvgen.errors.PluginError` naming the plugin when its ``score`` raises or
        returns something else."""
        if not self.comparison.metrics:
            return {}
        if self.entry is None:
            return self.task.score(image, content, self.references)
        scores = call_plugin(self.entry, "score()", self.task.score, image, content, self.references)
        names = [m.name for m in self.comparison.metrics]
        if not isinstance(scores, dict) or any(not isinstance(scores.get(n), (int, float)) for n in names):
            raise plugin_fault(self.entry, f"is at fault: score() must return a number for each of its metrics "
                                           f"({', '.join(names)}), got {scores!r:.200}")
        return scores

    def _fail(self, name: str, reason: str) -> None:
        self.comparison.failures.append((self.column, name, reason))
        if self.on_failure is not None:
            self.on_failure(self.comparison, self.column, name, reason)

    def finish(self, summary: Summary) -> None:
        pass


def run_comparison(
    columns: Sequence[Column],
    recipes: Sequence[Recipe],
    inputs: Sequence[tuple[str, str]],
    output: Path | None = None,
    workers: Sequence[WorkerSpec] = (WorkerSpec("cpu", "cpu"),),
    registry: Registry | None = None,
    on_result: ResultCallback | None = None,
    on_column: Callable[[int, Column], None] | None = None,
    on_failure: FailureCallback | None = None,
) -> Comparison:
    """Run every recipe on every input (``(source, short name)`` pairs) with ``workers`` and
    score the results. ``on_column`` hears of each column before its workers build it (a
    stacked backbone can take minutes the first time), ``on_result`` of each scored result,
    ``on_failure`` of each image that failed (the others go on). Without ``output`` the
    result files go to a temporary folder. Raises ``KeyboardInterrupt`` when stopped."""
    registry = registry or get_registry()
    task_name = recipes[0].task["name"]
    if any(r.task["name"] != task_name for r in recipes):
        raise UsageError("compare runs one task; the columns' recipes name different tasks")
    task_class = registry.get("task", task_name, "task.name").cls
    comparison = Comparison(task_name, list(columns), list(recipes), list(inputs), tuple(task_class.metrics))
    if output is None:
        with tempfile.TemporaryDirectory(prefix="rvgen-compare-") as scratch:
            return _run(comparison, Path(scratch), workers, registry, on_result, on_column, on_failure)
    return _run(comparison, output, workers, registry, on_result, on_column, on_failure)


def _run(comparison: Comparison, output: Path, workers: Sequence[WorkerSpec], registry: Registry,
         on_result: ResultCallback | None, on_column: Callable[[int, Column], None] | None,
         on_failure: FailureCallback | None) -> Comparison:
    contents: dict[tuple[str, int], torch.Tensor] = {}
    for c, (column, recipe) in enumerate(zip(comparison.columns, comparison.recipes)):
        if on_column is not None:
            on_column(c, column)
        size = recipe.output["size"]
        for source, _ in comparison.inputs:
            if (source, size) not in contents:
                contents[(source, size)] = imageio.load_image(source, size)
        jobs = [Job(source, name, result_path(output, column, name)) for source, name in comparison.inputs]
        collector = _Collector(comparison, c, recipe.build_task(registry),
                               {name: contents[(source, size)] for source, name in comparison.inputs},
                               load_references(recipe.references(registry)), on_result, on_failure,
                               registry.get("task", recipe.task["name"], "task.name"))
        run = RunInfo(jobs=jobs, skipped=0, ignored=[], workers=list(workers), output=str(output))
        summary = run_jobs(recipe, run, collector, registry=registry, keep_images=True)
        if summary.signal is not None:
            raise KeyboardInterrupt
    return comparison
