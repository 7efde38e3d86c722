"""Stopping a run by signals, waiting for another run's lock, and names that could forge log lines.

The subprocess helpers are tests/test_batch.py's."""

import os
import signal
import subprocess
import sys
import time

import pytest
from test_batch import events, folder, recipe, start, wait_for

from rvgen.batch.lock import OutputLock


def burst(proc: subprocess.Popen, signals) -> None:
    """Send ``signals`` to ``proc`` back to back, microseconds apart."""
    for sig in signals:
        os.kill(proc.pid, sig)


def stopped_cleanly(proc: subprocess.Popen, log, code: int, name: str) -> str:
    text, _ = proc.communicate(timeout=90)
    assert proc.returncode == code, text
    assert "Traceback" not in text and "Error" not in text, text
    assert f"interrupted ({name}): 0 done, 0 failed, 4 not started" in text, text
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
