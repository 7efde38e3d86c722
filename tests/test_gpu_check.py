"""benchmarks/gpu_check.py where there is no GPU: the dry run, the refusal, and the report writer."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check(*args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT), RVGEN_LOAD_PLUGINS="")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=env, text=True,
                          capture_output=True, timeout=120)


def test_dry_run_prints_every_step_with_its_command_and_budget_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    proc = check(out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    gc = load()
    for step in gc.STEPS:
        assert f"{step.name}: {step.title} (budget {step.budget} s" in text
    assert "-m pytest -m gpu -q" in text
    for case in ("style-512", "folder-256", "tflops-512", "memory-512"):
        assert f"--case {case}" in text
    assert sum(step.budget for step in gc.STEPS) <= gc.TOTAL_BUDGET <= 480
    assert "goal <= 0.2" in text and "goal >= 15" in text and "goal >= 250" in text
    assert not out.exists(), "a dry run writes nothing"


def test_without_cuda_a_real_run_exits_2_with_one_line(tmp_path):
    out = tmp_path / "out"
    proc = check(out)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA device: "), proc.stderr
    assert not out.exists()


FAKE = {
    "started": "2025-01-01 12:00:00 UTC",
    "seconds": 431.4,
    "quick": False,
    "environment": {"device": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "torch": "2.11.0+cu128",
                    "torchvision": "0.26.0", "cuda": "12.8", "cudnn": 91002, "python": "3.12.3"},
    "steps": [
        {"name": "tests", "title": "GPU tests (pytest -m gpu)", "goal": "all pass", "unit": "",
         "value": "12 passed in 61.2s", "met": True, "notes": "output in tests.txt"},
        {"name": "style-512", "title": "one 512 px image", "goal": "<= 0.2", "unit": "x", "value": 0.1234,
         "met": True, "notes": "rvgen 1.00 s | baseline 8.10 s"},
        {"name": "folder-256", "title": "64 images", "goal": ">= 15", "unit": "x", "value": 9.5, "met": False,
         "notes": "slow"},
        {"name": "tflops-512", "title": "TFLOP/s", "goal": ">= 250", "unit": "TFLOP/s",
         "error": "RuntimeError: CUDA error: an illegal memory access was encountered"},
        {"name": "memory-512", "title": "memory", "goal": "", "unit": "images/s", "value": 41.0, "met": None,
         "notes": "batch 64"},
    ],
}


def test_the_writer_makes_the_table_and_the_json(tmp_path):
    gc = load()
    text = gc.write_report(FAKE, tmp_path / "report")
    assert (tmp_path / "report" / "gpu_check.md").read_text() == text
    assert json.loads((tmp_path / "report" / "gpu_check.json").read_text()) == FAKE
    lines = text.splitlines()
    assert lines[0] == "# rvgen GPU check"
    assert "- device: NVIDIA H100 80GB HBM3 (79.1 GiB)" in lines
    assert "- torch 2.11.0+cu128, torchvision 0.26.0, CUDA 12.8, cuDNN 91002, Python 3.12.3" in lines
    table = lines[lines.index("| check | measured | goal | met | notes |"):]
    assert table[1] == "| --- | ---: | ---: | :---: | --- |"
    assert table[2:] == [
        "| GPU tests (pytest -m gpu) | 12 passed in 61.2s | all pass | yes | output in tests.txt |",
        "| one 512 px image | 0.123 x | <= 0.2 | yes | rvgen 1.00 s \\| baseline 8.10 s |",
        "| 64 images | 9.5 x | >= 15 | no | slow |",
        "| TFLOP/s | error | >= 250 | no | RuntimeError: CUDA error: an illegal memory access was encountered |",
        "| memory | 41 images/s | - | - | batch 64 |",
    ]


def test_goals_and_the_pytest_summary_are_read_right():
    gc = load()
    assert gc._met(0.2, "<= 0.2") is True and gc._met(0.21, "<= 0.2") is False
    assert gc._met(15.0, ">= 15") is True and gc._met(14.9, ">= 15") is False
    assert gc._met(3.0, "") is None and gc._met(None, ">= 1") is None
    output = "....s.\n=== short test summary ===\nSKIPPED [1] x\n5 passed, 1 skipped, 300 deselected in 40.12s\n"
    assert gc.pytest_summary(output) == "5 passed, 1 skipped, 300 deselected in 40.12s"
