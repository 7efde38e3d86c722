"""The page kept up to date while a run goes: a reporter beside the others.

:class:`PageReporter` takes the same calls as the run's other reporters
(:class:`~rvgen.batch.summary.Reporter`): it keeps the folder's record (the images planned,
made and failed, :mod:`rvgen.report.record`) and writes the page when the run starts, at most
every ``interval`` seconds as images finish, and when the run ends. A page that cannot be
written is said once (``on_error``) and never stops the run; so is, once each, a file of the
folder whose content is left out (:attr:`rvgen.report.folder.Folder.skipped`) and a page
written as ``rvgen.html`` beside a user's ``index.html`` (``on_note``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from rvgen.batch.events import Event, ImageDone, ImageFailed
from rvgen.batch.summary import RunInfo, Summary
from rvgen.errors import RvgenError
from rvgen.report.page import LiveStatus
from rvgen.report.record import FolderRecord, now
from rvgen.report.write import write_report

INTERVAL = 30.0  # seconds between pages while a run goes


class PageReporter:
    def __init__(self, folder: Path, digest: str, source: str, interval: float = INTERVAL,
                 on_error: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 on_note: Callable[[str], None] | None = None):
        self.folder, self.digest, self.source = Path(folder), digest, source
        self.interval, self.on_error, self.clock = interval, on_error, clock
        self.on_note = on_note or on_error
        self.said: set[str] = set()  # the notes said already
        self.record = FolderRecord()
        self.run: RunInfo | None = None
        self.started = now()
        self.done = self.failed = 0
        self.devices: dict[str, str] = {}  # worker -> its device
        self.made_on: dict[str, int] = defaultdict(int)
        self.last = 0.0
        self.broken = False

    def start(self, run: RunInfo) -> None:
        self.run = run
        self.started = now()
        self.devices = {w.name: w.device for w in run.workers}
        self.record = FolderRecord.load(self.folder)
        self.record.planned(self.folder, list(run.jobs), self.digest)
        self.write(live=True)

    def handle(self, event: Event) -> None:
        if isinstance(event, ImageDone):
            self.done += 1
            self.made_on[self.devices.get(event.worker, event.worker)] += 1
            self.record.made(self.folder, event.job)
        elif isinstance(event, ImageFailed):
            self.failed += 1
            self.record.failed(self.folder, event.job, event.reason, self.digest)
        else:
            return
        if self.clock() - self.last >= self.interval:
            self.write(live=True)

    def finish(self, summary: Summary) -> None:
        if self.run is not None:
            self.record.finished(self.run, summary, self.started, self.source, self.digest, dict(self.made_on))
        self.write(live=False)

    def write(self, live: bool) -> None:
        if self.broken:
            return
        self.last = self.clock()
        total = len(self.run.jobs) if self.run is not None else 0
        status = LiveStatus(self.started, self.done, self.failed, total,
                            datetime.now().strftime("%H:%M:%S")) if live else None
        try:
            self.record.save(self.folder)
            _, view, note = write_report(self.folder, status, self.record.problems)
        except (OSError, RvgenError) as exc:
            self.broken = True
            if self.on_error is not None:
                self.on_error(f"the report page of {self.folder} cannot be written: "
                              f"{getattr(exc, 'strerror', None) or exc}; the run goes on without it")
            return
        for line in ([note] if note else []) + view.skipped:
            if line not in self.said:
                self.said.add(line)
                if self.on_note is not None:
                    self.on_note(line)
