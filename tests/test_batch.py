"""The batch engine: workers, resume, the lock, shards, signals, the log file and Dask.

Most tests drive ``python -m rvgen run`` in a subprocess, because what they check (worker
processes, kill -9, SIGTERM, two runs at once) only exists between processes.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import psnr, write_recipe, write_sample
from PIL import Image

from rvgen import imageio
from rvgen.batch.jobs import Job, select_shard
from rvgen.batch.lock import OutputLock
from rvgen.batch.runner import cpu_threads, worker_specs
from rvgen.cli import cli

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat")

RECONSTRUCT = '''
[task]
name = "reconstruct"
layer = "relu2_1"

[optimizer]
iterations = {iterations}

[output]
size = {size}
'''


def recipe(tmp_path: Path, iterations: int = 8, size: int = 32) -> Path:
    return write_recipe(tmp_path / "recipe.toml", RECONSTRUCT.format(iterations=iterations, size=size))


def folder(tmp_path: Path, count: int, size: int = 40) -> Path:
    root = tmp_path / "in"
    for name in NAMES[:count]:
        write_sample(root / f"{name}.png", name, size)
    return root


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), RVGEN_LOAD_PLUGINS="", PYTHONWARNINGS="ignore")
    e.pop("COLUMNS", None)
    return e


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rvgen", "run", *map(str, args)], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def rvgen(*args, timeout: float = 180) -> tuple[int, str]:
    proc = start(*args)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def outputs(out: Path) -> dict[str, float]:
    """Each finished result -> the mtime of its sidecar."""
    return {p.name: p.with_name(p.name + ".json").stat().st_mtime_ns
            for p in out.rglob("*.png") if p.with_name(p.name + ".json").exists()}


def check_complete_or_absent(out: Path, inputs: Path) -> int:
    """Every image in ``out`` opens; every sidecar sits beside its image and names its input."""
    count = 0
    for image in out.rglob("*.png"):
        with Image.open(image) as im:
            im.load()  # raises on a truncated file
        sidecar = image.with_name(image.name + ".json")
        if sidecar.exists():
            data = json.loads(sidecar.read_text())
            assert data["input"]["name"] == image.name
            assert (inputs / image.name).is_file()
            count += 1
    for sidecar in out.rglob("*.json"):
        assert sidecar.with_suffix("").is_file(), f"{sidecar} has no image"
    return count


@pytest.mark.slow
def test_two_cpu_workers_share_a_folder_make_each_image_once_and_survive_a_corrupt_one(tmp_path):
    inputs, out, log = folder(tmp_path, 6), tmp_path / "out", tmp_path / "log.jsonl"
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, text = rvgen(recipe(tmp_path, 30, 48), "-i", inputs, "-o", out, "--devices", "cpu", "--workers", "2",
                       "--log-file", log)
    assert code == 1, text
    done = [e for e in events(log) if e["event"] == "image_done"]
    assert sorted(e["input"] for e in done) == sorted(f"{n}.png" for n in NAMES[:6])  # each image once
    assert {e["worker"] for e in done} == {"cpu#1", "cpu#2"}  # both workers made images
    ready = [e for e in events(log) if e["event"] == "worker_ready"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert [e["threads"] for e in ready] == [cpu_threads(cores)] * 2  # each image has the default threads
    assert check_complete_or_absent(out, inputs) == 6
    assert "6 done, 1 failed" in text and "broken.jpg: " in text and "Traceback" not in text
    failed = [e for e in events(log) if e["event"] == "image_failed"]
    assert [e["input"] for e in failed] == ["broken.jpg"] and "cannot read" in failed[0]["reason"]
    assert events(log)[-1]["failures"][0]["input"] == "broken.jpg"


@pytest.mark.slow
def test_a_rerun_skips_finished_images_and_redoes_changed_ones(tmp_path):
    inputs, out = folder(tmp_path, 3), tmp_path / "out"
    path = recipe(tmp_path)
    runner = CliRunner()

    def run(*extra):
        result = runner.invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
        return result.output

    run()
    first = outputs(out)
    assert len(first) == 3
    text = run()
    assert "0 done, 0 failed, 3 already done" in text and outputs(out) == first  # nothing redone

    write_sample(inputs / "chelsea.png", "coffee", 40)  # a changed input is redone, alone
    text = run()
    assert "1 done, 0 failed, 2 already done" in text
    changed = {k for k in first if outputs(out)[k] != first[k]}
    assert changed == {"chelsea.png"}

    text = run("--set", "optimizer.iterations=9")  # a changed recipe redoes everything
    assert "3 done, 0 failed" in text
    text = run("--set", "optimizer.iterations=9", "--force")
    assert "3 done, 0 failed" in text


@pytest.mark.slow
def test_a_changed_style_image_redoes_the_outputs(tmp_path, photos, style_image):
    path = write_recipe(tmp_path / "style.toml", f'''
[task]
name = "style"
style = "{style_image}"
[optimizer]
iterations = 3
[output]
size = 24
''')
    out = tmp_path / "out"
    args = ["run", str(path), "-i", str(photos), "-o", str(out)]
    assert "2 done" in CliRunner().invoke(cli, args).output
    assert "0 done, 0 failed, 2 already done" in CliRunner().invoke(cli, args).output
    write_sample(style_image, "rocket", 48)
    assert "2 done, 0 failed in" in CliRunner().invoke(cli, args).output


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_image_and_a_rerun_finishes_the_rest(tmp_path):
    inputs, out, log = folder(tmp_path, 6), tmp_path / "out", tmp_path / "log.jsonl"
    path = recipe(tmp_path, 40, 48)
    proc = start(path, "-i", inputs, "-o", out, "--devices", "cpu", "--workers", "2", "--log-file", log)
    wait_for(lambda: any(e["event"] == "image_done" for e in events(log)))
    pid = next(e["pid"] for e in events(log) if e["event"] == "worker_ready")
    os.kill(pid, signal.SIGKILL)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, text
    assert "a worker process died" in text
    finished = outputs(out)
    assert 1 <= len(finished) < 6
    assert check_complete_or_absent(out, inputs) == len(finished)

    code, text = rvgen(path, "-i", inputs, "-o", out, "--log-file", log)
    assert code == 0, text
    assert f"{6 - len(finished)} done, 0 failed, {len(finished)} already done" in text
    after = outputs(out)
    assert len(after) == 6 and all(after[k] == v for k, v in finished.items())  # nothing redone


@pytest.mark.slow
def test_kill_9_at_a_random_moment_leaves_only_complete_files(tmp_path):
    inputs, out = folder(tmp_path, 4), tmp_path / "out"
    path = recipe(tmp_path, 15, 40)
    rng = random.Random(os.getpid())
    for _ in range(2):
        proc = start(path, "-i", inputs, "-o", out)
        time.sleep(rng.uniform(2.0, 5.0))
        proc.kill()
        proc.communicate(timeout=60)
        check_complete_or_absent(out, inputs)
    code, text = rvgen(path, "-i", inputs, "-o", out)
    assert code == 0, text
    assert check_complete_or_absent(out, inputs) == 4
    assert not list(out.rglob("*.tmp"))  # leftovers of the killed runs are cleared


@pytest.mark.parametrize(("sig", "code", "name", "workers"),
                         [(signal.SIGTERM, 143, "SIGTERM", 2), (signal.SIGINT, 130, "SIGINT", 1)])
@pytest.mark.slow
def test_sigterm_and_sigint_stop_cleanly_with_a_summary(tmp_path, sig, code, name, workers):
    inputs, out, log = folder(tmp_path, 4), tmp_path / "out", tmp_path / "log.jsonl"
    proc = start(recipe(tmp_path, 300, 48), "-i", inputs, "-o", out, "--devices", "cpu", "--workers", workers,
                 "--log-file", log)
    wait_for(lambda: sum(e["event"] == "image_started" for e in events(log)) >= workers)
    proc.send_signal(sig)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, text
    assert f"interrupted ({name}): 0 done, 0 failed, {workers} abandoned, {4 - workers} not started" in text
    assert "abandoned:" in text and "Traceback" not in text
    end = events(log)[-1]
    assert end["event"] == "run_end" and end["exit_code"] == code and end["signal"] == name
    assert not list(out.rglob("*.png"))


def test_a_second_run_on_the_same_folder_exits_75_unless_it_waits(tmp_path):
    inputs, out = folder(tmp_path, 1), tmp_path / "out"
    path = recipe(tmp_path, 2)
    lock = OutputLock(out).acquire()
    result = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(out)])
    assert result.exit_code == 75
    assert result.output == (f"Error: another rvgen run (pid {os.getpid()}) is writing to {out}; "
                             "exiting (use --wait to wait for it)\n")
    assert not list(out.rglob("*.png"))
    threading.Timer(1.0, lock.release).start()
    began = time.monotonic()
    result = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(out), "--wait"])
    assert result.exit_code == 0 and time.monotonic() - began >= 0.9
    assert "1 done" in result.output


def test_shards_cover_every_job_exactly_once(tmp_path):
    jobs = [Job(f"/in/{i}.jpg", f"{i // 10}/{i}.jpg", Path(f"/out/{i}.png"), v) for i in range(300) for v in range(2)]
    for n in (1, 3, 8):
        shards = [select_shard(jobs, k, n) for k in range(1, n + 1)]
        key = lambda j: (j.rel, j.variation)  # noqa: E731
        assert sorted(map(key, (j for s in shards for j in s))) == sorted(map(key, jobs))  # once each
        if n > 1:
            assert min(map(len, shards)) > len(jobs) / n * 0.6  # roughly even
    # the same job lands in the same shard whatever else is in the folder
    assert select_shard(jobs[:7], 2, 3) == [j for j in select_shard(jobs, 2, 3) if j in jobs[:7]]

    inputs, out = folder(tmp_path, 5), tmp_path / "out"
    path = recipe(tmp_path, 2)
    made = []
    for k in (1, 2):
        log = tmp_path / f"shard{k}.jsonl"
        result = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(out), "--shard", f"{k}/2",
                                          "--log-file", str(log)])
        assert result.exit_code == 0, result.output
        made += [e["input"] for e in events(log) if e["event"] == "image_done"]
    assert sorted(made) == sorted(f"{n}.png" for n in NAMES[:5])


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    inputs, out = folder(tmp_path, 3), tmp_path / "out"
    (inputs / "readme.txt").write_text("hi")
    path = recipe(tmp_path, 2)
    assert CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(out), "--shard", "1/1"]).exit_code == 0
    (out / "coffee.png.json").unlink()
    result = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(out), "--dry-run",
                                      "--devices", "cpu", "--workers", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  to make:      1" in lines and any(line.startswith("  already done: 2") for line in lines)
    assert "  ignored:      1: readme.txt (not an image format)" in lines
    assert any(line.startswith("  workers:      cpu#1") for line in lines)
    assert f"  coffee.png -> {out / 'coffee.png'}" in lines
    assert not (out / "coffee.png.json").exists()


def test_cpu_workers_run_each_image_with_the_same_threads_and_fill_the_cores_by_default():
    def specs(*args, **kwargs):
        return [(s.name, s.threads) for s in worker_specs(*args, **kwargs)]

    assert specs(["cpu"], 2, cpu_count=16) == [("cpu#1", 2), ("cpu#2", 2)]
    assert specs(["cpu"], 1, cpu_count=16) == [("cpu", 2)]  # not 16: the pixels would differ from --workers 2
    assert specs(["cpu"], cpu_count=16) == [(f"cpu#{i}", 2) for i in range(1, 9)]  # the default fills the cores
    assert specs(["cpu"], cpu_count=2) == [("cpu#1", 1), ("cpu#2", 1)]  # one thread an image up to 8 cores
    assert specs(["cpu"], 3, cpu_count=2) == [("cpu#1", 1), ("cpu#2", 1), ("cpu#3", 1)]
    assert specs(["cpu"], cpu_count=16, threads=16) == [("cpu", 16)]
    assert specs(["cuda:0", "cpu"], cpu_count=4) == [("cuda:0", None)] + [(f"cpu#{i}", 1) for i in (1, 2, 3, 4)]
    assert specs(["cuda:0", "cuda:1"], cpu_count=8) == [("cuda:0", None), ("cuda:1", None)]


@pytest.mark.slow
def test_the_dask_backend_makes_the_same_images_as_local_workers(tmp_path):
    distributed = pytest.importorskip("distributed")
    inputs = folder(tmp_path, 2)
    path = recipe(tmp_path, 6)
    local = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    (inputs / "broken.png").write_bytes(b"nope")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={"RVGEN_LOAD_PLUGINS": "", "PYTHONPATH": str(ROOT)}) as cluster:
        result = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(tmp_path / "dask"),
                                          "--backend", "dask", "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 1, result.output
    assert "2 done, 1 failed" in result.output and "broken.png: not an image" in result.output
    for name in ("astronaut.png", "chelsea.png"):
        a = json.loads((tmp_path / "local" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "dask" / f"{name}.json").read_text())
        assert b["loss"]["final"] == pytest.approx(a["loss"]["final"], rel=1e-4)
        assert b["recipe"]["digest"] == a["recipe"]["digest"] and b["input"]["sha256"] == a["input"]["sha256"]


def test_dask_flags_are_checked(tmp_path):
    path = recipe(tmp_path, 2)
    result = CliRunner().invoke(cli, ["run", str(path), "--backend", "dask"])
    assert result.exit_code == 2 and "--backend dask needs --scheduler" in result.output
    result = CliRunner().invoke(cli, ["run", str(path), "--backend", "dask", "--scheduler", "tcp://x:1", "--gpus", "0"])
    assert result.exit_code == 2 and "a Dask cluster has its own workers" in result.output



@pytest.mark.slow
def test_a_worker_optimises_images_in_batches_like_one_at_a_time(tmp_path):
    inputs = tmp_path / "in"
    for name in ("astronaut", "camera", "coffee"):  # two squares batch together; coffee is 3:2
        write_sample(inputs / f"{name}.png", name, 40)
    (inputs / "broken.png").write_bytes(b"not a png")
    path = recipe(tmp_path, 10)
    logs = {}
    for batch in (1, 4):
        log = tmp_path / f"b{batch}.jsonl"
        result = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(tmp_path / f"b{batch}"),
                                          "--set", f"optimizer.batch_size={batch}", "--log-file", str(log)])
        assert result.exit_code == 1, result.output
        assert "3 done, 1 failed" in result.output and "broken.png: " in result.output
        logs[batch] = [(e["event"], e.get("input")) for e in events(log) if e["event"].startswith("image")]
    # batch 4: the two squares start together and finish together, then coffee on its own
    assert logs[4][2:] == [("image_started", "astronaut.png"), ("image_started", "camera.png"),
                           ("image_done", "astronaut.png"), ("image_done", "camera.png"),
                           ("image_started", "coffee.png"), ("image_done", "coffee.png")], logs[4]
    assert logs[4][:2] == [("image_started", "broken.png"), ("image_failed", "broken.png")]
    for name in ("astronaut.png", "camera.png", "coffee.png"):
        one = imageio.load_image(tmp_path / "b1" / name)
        four = imageio.load_image(tmp_path / "b4" / name)
        assert psnr(one, four) > 35, name  # the batch mates do not change the result


class Collect:
    """A reporter that keeps every event."""

    def __init__(self):
        self.events = []

    def start(self, run):
        pass

    def handle(self, event):
        self.events.append(event)

    def finish(self, summary):
        pass


def kept_images_match_outputs(done, out: Path) -> None:
    """Each ImageDone's image is the written PNG (within 1/255, and equal once quantised), and
    its losses are the sidecar's."""
    for event in done:
        image = event.image
        assert image is not None and image.dtype == torch.float32 and image.device.type == "cpu"
        png = imageio.load_image(event.job.output)
        assert image.shape == png.shape and image.dim() == 4 and image.shape[:2] == (1, 3)
        assert (image - png).abs().max().item() <= 1 / 255 + 1e-6
        assert torch.equal(imageio.from_pil(imageio.to_pil(image)), png)
        data = json.loads(event.job.sidecar.read_text())
        assert event.loss == data["loss"]["final"] and event.parts == data["loss"]["terms"]
        assert [list(p) for p in event.history] == data["history"] and data["history"]


@pytest.mark.slow
def test_run_jobs_keeps_each_image_for_the_caller_from_worker_processes(tmp_path):
    from rvgen.batch.events import ImageDone
    from rvgen.batch.jobs import plan_jobs
    from rvgen.batch.runner import prepare, run_jobs
    from rvgen.batch.sidecar import split_finished
    from rvgen.batch.summary import RunInfo
    from rvgen.recipe import load_recipe

    inputs, out = folder(tmp_path, 3), tmp_path / "out"
    parsed = load_recipe(recipe(tmp_path, 6, 24))
    plan = plan_jobs(str(inputs), out)
    reporter = Collect()
    summary = run_jobs(parsed, RunInfo(plan.jobs, 0, [], worker_specs(["cpu"], 2), str(out)), reporter,
                       keep_images=True)
    assert summary.exit_code == 0
    done = [e for e in reporter.events if isinstance(e, ImageDone)]
    assert sorted(e.job.rel for e in done) == sorted(j.rel for j in plan.jobs)  # one image per job
    kept_images_match_outputs(done, out)
    # the history is for readers: a rerun does not look at it
    sidecar = plan.jobs[0].sidecar
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "history": [[0, 123.0]]}))
    key = prepare(parsed)
    assert split_finished(plan.jobs, key) == ([], list(plan.jobs))
    # by default (here in this process) the events carry no image
    reporter = Collect()
    run_jobs(parsed, RunInfo(plan.jobs[:1], 0, [], worker_specs(["cpu"]), str(tmp_path / "again")), reporter, key)
    (event,) = [e for e in reporter.events if isinstance(e, ImageDone)]
    assert event.image is None and event.parts and event.history


def test_the_dask_backend_keeps_images_too(tmp_path):
    distributed = pytest.importorskip("distributed")
    from rvgen.batch.events import ImageDone
    from rvgen.batch.jobs import plan_jobs
    from rvgen.batch.runner import run_jobs
    from rvgen.batch.summary import RunInfo, WorkerSpec
    from rvgen.recipe import load_recipe

    inputs, out = folder(tmp_path, 1), tmp_path / "out"
    parsed = load_recipe(recipe(tmp_path, 4, 24))
    plan = plan_jobs(str(inputs), out)
    reporter = Collect()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={"RVGEN_LOAD_PLUGINS": "", "PYTHONPATH": str(ROOT)}) as cluster:
        info = RunInfo(plan.jobs, 0, [], [WorkerSpec("dask", cluster.scheduler_address)], str(out))
        summary = run_jobs(parsed, info, reporter, scheduler=cluster.scheduler_address, keep_images=True)
    assert summary.exit_code == 0
    done = [e for e in reporter.events if isinstance(e, ImageDone)]
    assert len(done) == 1
    kept_images_match_outputs(done, out)
