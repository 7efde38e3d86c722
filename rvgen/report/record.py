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

import signal
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rvgen import imageio
from rvgen.batch import schema
from rvgen.batch.jobs import Job
from rvgen.batch.summary import RunInfo, Summary

RECORD_NAME = ".rvgen-record"  # JSON; not named .json: every *.json in the folder is a sidecar
KEEP_RUNS = 100
FAILURE = {"input": str, "variation": int, "reason": str, "digest": str, "time": str}
PENDING = {"input": str, "variation": int, "digest": str}
RUN = {"started": str, "seconds": float, "recipe": str, "digest": str, "done": int, "failed": int,
       "not_started": int, "abandoned": schema.Opt(int), "already_done": int, "devices": schema.Map(int), "signal": schema.Opt(str)}


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

    problems: list[str] = field(default_factory=list)
    """What of the file was skipped, one line each (an entry that does not fit the schema)."""

    @classmethod
    def load(cls, folder: Path) -> FolderRecord:
        """The record of ``folder`` (empty when there is none). Content that does not fit
        :mod:`the schema <rvgen.batch.schema>` is left out, each part said in :attr:`problems`."""
        try:
            data = schema.parse((folder / RECORD_NAME).read_bytes(), dict)
        except FileNotFoundError:
            return cls()
        except (OSError, schema.Invalid) as exc:
            return cls(problems=[f"{RECORD_NAME}: {getattr(exc, 'strerror', None) or exc}; its content is left out"])
        record = cls()

        def entries(key: str, spec, kind: type) -> list:
            value = data.get(key, kind())
            if not isinstance(value, kind):
                record.problems.append(f"{RECORD_NAME}: {key}: expected {schema.NAMES[kind]}, got "
                                       f"{schema.kind(value)}; left out")
                return []
            kept = []
            for name, item in (value.items() if kind is dict else enumerate(value)):
                try:
                    schema.check(item, spec, f"{key}[{name!r}]" if kind is dict else f"{key}[{name}]")
                except schema.Invalid as exc:
                    record.problems.append(f"{RECORD_NAME}: {exc}; left out")
                else:
                    kept.append((name, item))
            return kept

        record.failures = dict(entries("failures", FAILURE, dict))
        record.pending = dict(entries("pending", PENDING, dict))
        record.runs = [item for _, item in entries("runs", RUN, list)]
        return record

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
            "abandoned": len(summary.abandoned),
            "already_done": summary.skipped,
            "devices": {device: made_on.get(device, 0) for device in dict.fromkeys(w.device for w in run.workers)},
            "signal": signal.Signals(summary.signal).name if summary.signal else None,
        })
