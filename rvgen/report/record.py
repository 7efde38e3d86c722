"""The folder's record: what the sidecars cannot say, kept in ``OUTPUT/.rvgen-record`` (JSON).

A sidecar is written only beside a finished image, so a folder's sidecars know nothing of
the images that failed, of those a run planned but did not get to, or of how long the runs
took. The parent process keeps those here as a run goes (:class:`~rvgen.report.live.PageReporter`):

- ``failures``: output -> the input, the variation, the one-line reason, the recipe digest
  and when; an output made later (a sidecar with the same digest) is no longer failed;
- ``pending``: output -> the input, the variation and the recipe digest of images a run
  planned and has not finished;
- ``runs``: the last :data:`KEEP_RUNS` runs: when, how long, the recipe, how many images
  were done and failed, and how many each device made.

Outputs are named by their path under the folder, in POSIX form.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rvgen import imageio
from rvgen.batch.jobs import Job
from rvgen.batch.summary import RunInfo, Summary

RECORD_NAME = ".rvgen-record"  # JSON; not named .json: every *.json in the folder is a sidecar
KEEP_RUNS = 100


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def output_name(folder: Path, output: Path) -> str:
    """An output's name in the record and on the page: its path under the folder."""
    try:
        return output.relative_to(folder).as_posix()
    except ValueError:
        return output.as_posix()


@dataclass
class FolderRecord:
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> FolderRecord:
        """The record of ``folder`` (empty when there is none or it cannot be read)."""
        try:
            data = json.loads((folder / RECORD_NAME).read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()

        def part(key: str, kind: type) -> Any:
            return data[key] if isinstance(data.get(key), kind) else kind()

        return cls(part("failures", dict), part("pending", dict), part("runs", list))

    def save(self, folder: Path) -> None:
        imageio.write_json({"failures": self.failures, "pending": self.pending, "runs": self.runs[-KEEP_RUNS:]},
                           folder / RECORD_NAME)

    # -- what a run tells it -----------------------------------------------------------------

    def planned(self, folder: Path, jobs: list[Job], digest: str) -> None:
        for job in jobs:
            self.pending[output_name(folder, job.output)] = {"input": job.rel, "variation": job.variation,
                                                             "digest": digest}

    def made(self, folder: Path, job: Job) -> None:
        name = output_name(folder, job.output)
        self.pending.pop(name, None)
        self.failures.pop(name, None)

    def failed(self, folder: Path, job: Job, reason: str, digest: str) -> None:
        name = output_name(folder, job.output)
        self.pending.pop(name, None)
        self.failures[name] = {"input": job.rel, "variation": job.variation, "reason": reason, "digest": digest,
                               "time": now()}

    def finished(self, run: RunInfo, summary: Summary, started: str, source: str, digest: str,
                 made_on: dict[str, int]) -> None:
        """A run's line, once it is over; ``made_on``: images made per device."""
        self.runs.append({
            "started": started,
            "seconds": round(summary.seconds, 3),
            "recipe": source,
            "digest": digest,
            "done": len(summary.done),
            "failed": len(summary.failed),
            "not_started": summary.not_started,
            "already_done": summary.skipped,
            "devices": {device: made_on.get(device, 0) for device in dict.fromkeys(w.device for w in run.workers)},
            "signal": signal.Signals(summary.signal).name if summary.signal else None,
        })
