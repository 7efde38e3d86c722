"""What rvgen reads and writes is trusted only as far as it should be (issue 25): no file of
the user's overwritten, nothing read from an edited sidecar, record or image's metadata
used unchecked or shown raw, and numbers out of range refused before any work."""

import json
from pathlib import Path

from click.testing import CliRunner
from conftest import write_recipe, write_sample

from rvgen.cli import cli
from rvgen.report.record import RECORD_NAME

RECONSTRUCT = '''
[task]
name = "reconstruct"
layer = "relu1_1"

[optimizer]
iterations = 2

[output]
size = 32
'''


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def a_sidecar(**changes) -> dict:
    """A sidecar as rvgen writes one, with ``changes``."""
    data = {
        "input": {"name": "x.jpg", "source": "/photos/x.jpg", "sha256": "0" * 16},
        "variation": 0,
        "recipe": {"source": "r.toml", "digest": "d" * 16, "resolved": {"task": {"name": "reconstruct"}}},
        "references": {},
        "loss": {"initial": 1.0, "final": 0.5, "terms": {"content": 0.5}},
        "history": [[0, 1.0], [2, 0.5]],
        "iterations": 2,
        "seconds": 0.5,
        "device": "cpu",
    }
    data.update(changes)
    return data


def test_a_users_index_html_is_kept_and_the_page_is_written_as_rvgen_html(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = "<html><body>my own page</body></html>"
    (out / "index.html").write_text(mine)
    result = run("report", out)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").read_text() == mine
    page = (out / "rvgen.html").read_text()
    assert '<meta name="generator" content="rvgen">' in page
    assert f"{out / 'index.html'} is not rvgen's page, so the folder's page is {out / 'rvgen.html'}" in result.stderr
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    result = run("run", recipe, "-i", "skimage:coffee", "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").read_text() == mine and (out / "coffee.png").is_file()
    assert "coffee.png" in (out / "rvgen.html").read_text()
    assert result.stderr.count("is not rvgen's page") == 1
    # rvgen's own page (and one written before pages said so) is rewritten as index.html
    (out / "index.html").unlink()
    (out / "rvgen.html").unlink()
    assert run("report", out).exit_code == 0 and (out / "index.html").is_file() and not (out / "rvgen.html").exists()
    assert run("report", out).exit_code == 0 and not (out / "rvgen.html").exists()


def test_a_sidecar_of_the_wrong_types_is_skipped_with_one_line_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    write_sample(out / "old.png", "brick", 32)
    (out / "old.png.json").write_text(json.dumps(a_sidecar(iterations="many")))
    result = run("report", out)
    assert result.exit_code == 0, result.output
    assert "Warning: old.png.json: iterations: expected an integer, got the text \"many\"; left out" in result.stderr
    assert "internal error" not in result.output
    page = (out / "index.html").read_text()
    assert "Not read (1)" in page and "old.png.json: iterations: expected an integer" in page
    recipe = write_recipe(tmp_path / "r.toml", RECONSTRUCT)
    result = run("run", recipe, "-i", "skimage:coffee", "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "coffee.png").is_file() and (out / "coffee.png.json").is_file()
    assert result.stderr.count("old.png.json") == 1


def test_record_entries_of_the_wrong_types_are_left_out_never_written_as_markup(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    good = {"started": "2026-01-01T00:00:00+00:00", "seconds": 1.0, "recipe": "r.toml", "digest": "d", "done": 1,
            "failed": 0, "not_started": 0, "already_done": 0, "devices": {"cpu": 1}, "signal": None}
    bad = {**good, "done": "<script>alert(1)</script>", "not_started": "<b>x</b>"}
    (out / RECORD_NAME).write_text(json.dumps({"failures": {"a.png": {"input": "<script>", "variation": "0"}},
                                               "pending": [], "runs": [good, bad]}))
    result = run("report", out)
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "<script" not in page and "<b>x</b>" not in page
    assert "runs[1].done: expected an integer" in result.stderr
    assert "failures['a.png'].variation: expected an integer" in result.stderr
    assert "pending: expected an object, got a list" in result.stderr
    assert "runs[1].done: expected an integer" in page
