"""Stopping a run by signals, waiting for another run's lock, and names that could forge log lines.

The subprocess helpers are tests/test_batch.py's."""

import os
import re
import signal
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner
from test_batch import events, folder, recipe, start, wait_for

from rvgen.batch.lock import OutputLock
from rvgen.cli import cli


def burst(proc: subprocess.Popen, signals) -> None:
    """Send ``signals`` to ``proc`` back to back, microseconds apart."""
    for sig in signals:
        os.kill(proc.pid, sig)


def stopped_cleanly(proc: subprocess.Popen, log, code: int, name: str) -> str:
    text, _ = proc.communicate(timeout=90)
    assert proc.returncode == code, text
    assert "Traceback" not in text and "Error" not in text, text
    stopped = re.search(rf"interrupted \({name}\): 0 done, 0 failed, (?:(\d) abandoned, )?(\d) not started", text)
    assert stopped and int(stopped[1] or 0) + int(stopped[2]) == 4, text
    end = events(log)[-1]
    assert end["event"] == "run_end" and end["exit_code"] == code and end["signal"] == name
    return text


@pytest.mark.parametrize(("workers", "signals"), [(2, [signal.SIGINT] * 2), (2, [signal.SIGTERM] * 20),
                                                 (1, [signal.SIGINT] * 2 + [signal.SIGTERM] * 8)])
@pytest.mark.slow
def test_a_burst_of_signals_still_ends_with_the_summary_and_run_end(tmp_path, workers, signals):
    """Signals microseconds apart: the first stops the run, the next ones stop it at once; the
    summary and run_end are written every time, with no traceback. (Two SIGINTs with two
    workers lost both and printed a traceback in 2 of 4 trials.)"""
    inputs, out, log = folder(tmp_path, 4), tmp_path / "out", tmp_path / "log.jsonl"
    proc = start(recipe(tmp_path, 300, 48), "-i", inputs, "-o", out, "--devices", "cpu", "--workers", workers,
                 "--log-file", log)
    wait_for(lambda: sum(e["event"] == "image_started" for e in events(log)) >= workers)
    began = time.monotonic()
    burst(proc, signals)
    name = signal.Signals(signals[0]).name
    text = stopped_cleanly(proc, log, {"SIGINT": 130, "SIGTERM": 143}[name], name)
    assert time.monotonic() - began < 30  # however many were merged into one, the stop is quick
    abandoned = sorted(e["input"] for e in events(log) if e["event"] == "image_abandoned")
    started = sorted(e["input"] for e in events(log) if e["event"] == "image_started")
    assert abandoned == started and len(abandoned) == workers
    assert text.count("abandoned: ") == workers
    assert not list(out.rglob("*.png"))


@pytest.mark.slow
def test_a_second_signal_while_the_workers_start_stops_at_once(tmp_path):
    """The first signal waits for the workers to abandon their images; a second one kills them,
    even while they are still starting (it waited for them, then printed loky's traceback)."""
    inputs, out, log = folder(tmp_path, 4), tmp_path / "out", tmp_path / "log.jsonl"
    proc = start(recipe(tmp_path, 300, 48), "-i", inputs, "-o", out, "--devices", "cpu", "--workers", 2,
                 "--log-file", log)
    wait_for(lambda: any(e["event"] == "run_start" for e in events(log)))
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    began = time.monotonic()
    stopped_cleanly(proc, log, 130, "SIGINT")
    assert time.monotonic() - began < 10
    assert [e["event"] for e in events(log)][-1] == "run_end"


@pytest.mark.slow
def test_sigterm_with_one_worker_logs_the_abandoned_image(tmp_path):
    inputs, out, log = folder(tmp_path, 4), tmp_path / "out", tmp_path / "log.jsonl"
    proc = start(recipe(tmp_path, 300, 48), "-i", inputs, "-o", out, "--devices", "cpu", "--workers", 1,
                 "--log-file", log)
    wait_for(lambda: any(e["event"] == "image_started" for e in events(log)))
    proc.send_signal(signal.SIGTERM)
    text = stopped_cleanly(proc, log, 143, "SIGTERM")
    started = [e["input"] for e in events(log) if e["event"] == "image_started"]
    abandoned = [e["input"] for e in events(log) if e["event"] == "image_abandoned"]
    assert abandoned == started[-1:] and len(abandoned) == 1
    assert f"abandoned: {abandoned[0]} (stopped before it was finished; nothing written)" in text


def test_wait_says_whom_it_waits_for_then_runs(tmp_path):
    inputs, out = folder(tmp_path, 1), tmp_path / "out"
    path = recipe(tmp_path, 2)
    lock = OutputLock(out).acquire()
    threading.Timer(1.0, lock.release).start()
    result = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(out), "--wait"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"waiting for another rvgen run (pid {os.getpid()}) to finish writing to {out}"
    assert "1 done, 0 failed" in lines[-1] and result.output.count("waiting") == 1


def test_the_wait_line_names_no_pid_it_cannot_read_and_is_not_said_when_the_lock_is_free(tmp_path):
    said: list[str] = []
    holder = OutputLock(tmp_path).acquire()
    (tmp_path / ".rvgen.lock").write_text("")  # a holder that has not written its pid yet
    threading.Timer(0.3, holder.release).start()
    OutputLock(tmp_path).acquire(wait=True, on_wait=said.append).release()
    assert said == [f"waiting for another rvgen run to finish writing to {tmp_path}"]
    OutputLock(tmp_path).acquire(wait=True, on_wait=said.append).release()
    assert len(said) == 1


FORGED = "cat\n2026-12-01 00:00:00 [9 of 9] forged.png -> passwd (1 iterations, loss 0, 0.1s)\x1b[2K\r"


def test_a_file_name_cannot_forge_a_line_in_the_plain_log(tmp_path, photos):
    """A newline (or an escape sequence) in a file name is shown escaped, on the image's own line."""
    (photos / "cat.jpg").rename(photos / f"{FORGED}.jpg")
    (photos / f"notes\n{FORGED}.txt").write_text("not an image")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(recipe(tmp_path, 2)), "-i", str(photos), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert not any(line.startswith("2026-12-01 00:00:00") for line in lines)
    assert "\x1b" not in result.output and "\r" not in result.output
    escaped = "cat\\n2026-12-01 00:00:00 [9 of 9] forged.png -> passwd (1 iterations, loss 0, 0.1s)\\x1b[2K\\r"
    done = [line for line in lines if f"] {escaped}.jpg -> " in line]
    assert len(done) == 1 and done[0].endswith(")") and f"{escaped}.png" in done[0]
    assert f"not images: notes\\n{escaped}.txt" in result.output
    assert len(lines) == 5  # the plan, skipping, two images, the summary


def test_the_live_display_shows_names_as_they_are(tmp_path):
    """The rich display neither runs a name's control characters nor reads it as markup."""
    from io import StringIO

    from rich.console import Console

    from rvgen.batch.events import ImageDone, ImageFailed, ImageStarted
    from rvgen.batch.jobs import Job
    from rvgen.batch.reporters import RichReporter
    from rvgen.batch.summary import RunInfo, Summary, WorkerSpec

    buffer = StringIO()
    reporter = RichReporter(Console(file=buffer, force_terminal=True, width=300, color_system=None))
    jobs = [Job("/in/a", f"[bold red]{FORGED}", tmp_path / "a.png"), Job("/in/b", "b\nfake", tmp_path / "b.png")]
    reporter.start(RunInfo(jobs, 0, [], [WorkerSpec("cpu", "cpu")], str(tmp_path)))
    reporter.handle(ImageStarted("cpu", jobs[0]))
    reporter.handle(ImageDone("cpu", jobs[0], 0.5, 3, 1.0, {}, []))
    reporter.handle(ImageFailed("cpu", jobs[1], "cannot read b\nfake: broken"))
    reporter.finish(Summary(total=2, done=[jobs[0]], failed=[(jobs[1], "cannot read b\nfake: broken")]))
    text = buffer.getvalue()
    assert "done [bold red]cat\\n2026-12-01 00:00:00 [9 of 9] forged.png" in text
    assert "\\x1b[2K\\r.png" not in text and "\\x1b[2K\\r -> " in text
    assert "failed: b\\nfake: cannot read b\\nfake: broken" in text
    assert not any(line.startswith("2026-12-01 00:00:00") or line.startswith("fake") for line in text.splitlines())
