"""Nothing lost: which files a run reads, writes and deletes.

An output is never an input, never outside --output (links followed), and never shared by
two jobs; cleaning up removes only rvgen's own temporary files; what the input folder holds
but gives no job is listed with the reason.
"""

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_RECONSTRUCT, write_recipe, write_sample

from rvgen import imageio
from rvgen.batch.jobs import find_inputs, plan_jobs
from rvgen.batch.runner import remove_leftovers
from rvgen.cli import cli
from rvgen.errors import UsageError

RECIPE = TINY_RECONSTRUCT


def run(tmp_path: Path, *args) -> tuple[int, str]:
    recipe = write_recipe(tmp_path / "recipe.toml", RECIPE)
    result = CliRunner().invoke(cli, ["run", str(recipe), "--devices", "cpu", *map(str, args)])
    return result.exit_code, result.output


def names(plan, out: Path) -> list[str]:
    return [job.output.relative_to(out).as_posix() for job in plan.jobs]


def test_a_single_input_inside_output_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "out"
    photo = write_sample(out / "astronaut.png", "astronaut", 40)
    before = photo.read_bytes()
    code, text = run(tmp_path, "--input", photo, "--output", out)
    assert code == 2, text
    assert text.strip().splitlines()[-1] == (
        f"Error: the result of astronaut.png ({photo}) would overwrite the input {photo}; rvgen never "
        "overwrites an input: choose an --output apart from the inputs")
    assert photo.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png"]  # nothing written, not even the lock


def test_an_input_folder_inside_output_may_not_hold_what_a_result_replaces(tmp_path):
    out = tmp_path / "out"
    inner = write_sample(out / "sub" / "a.png", "coffee", 40)  # input "a.png": its result is out/a.png
    write_sample(out / "sub" / "sub" / "a.png", "chelsea", 40)  # input "sub/a.png": its result is out/sub/a.png
    before = inner.read_bytes()
    with pytest.raises(UsageError, match=r"the result of sub/a\.png .* would overwrite the input .*sub/a\.png"):
        plan_jobs(str(out / "sub"), out)
    code, text = run(tmp_path, "-i", out / "sub", "-o", out)
    assert code == 2 and "would overwrite the input" in text
    assert inner.read_bytes() == before and not (out / "a.png").exists()


def test_an_input_folder_inside_output_is_read_when_nothing_clashes(tmp_path):
    out = tmp_path / "out"
    photo = write_sample(out / "photos" / "a.jpg", "coffee", 40)
    before = photo.read_bytes()
    code, text = run(tmp_path, "-i", out / "photos", "-o", out)
    assert code == 0, text
    assert "1 done, 0 failed" in text
    assert (out / "a.png").is_file() and photo.read_bytes() == before
    assert sorted(p.name for p in (out / "photos").iterdir()) == ["a.jpg"]


def test_input_and_output_one_folder_is_refused(tmp_path):
    folder = tmp_path / "photos"
    write_sample(folder / "a.png", "coffee", 40)
    (tmp_path / "link").symlink_to(folder)
    code, text = run(tmp_path, "-i", folder, "-o", tmp_path / "link")
    assert code == 2
    assert text.strip().splitlines()[-1] == (
        f"Error: --input {folder} is also the output folder; results would land among the inputs: "
        "choose another --output")


def test_an_input_named_like_another_inputs_result_gets_its_own_output(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_sample(folder / "a.jpg", "coffee", 40)
    write_sample(folder / "a.jpg.png", "chelsea", 40)
    write_sample(folder / "a.png", "astronaut", 40)
    plan = plan_jobs(str(folder), out)
    assert [(job.rel, job.output.name) for job in plan.jobs] == [
        ("a.jpg", "a.jpg.png"), ("a.jpg.png", "a.jpg.png.png"), ("a.png", "a.png.png")]
    code, text = run(tmp_path, "-i", folder, "-o", out)
    assert code == 0 and "3 done, 0 failed" in text, text
    assert sorted(p.name for p in out.glob("*.png")) == ["a.jpg.png", "a.jpg.png.png", "a.png.png"]
    code, text = run(tmp_path, "-i", folder, "-o", out)
    assert code == 0 and "0 image(s) to make (3 already done)" in text, text  # a rerun redoes nothing


def test_variations_of_clashing_inputs_get_their_own_outputs(tmp_path):
    folder = tmp_path / "in"
    for name in ("a.jpg", "a.jpg.png", "a.png"):
        write_sample(folder / name, "coffee", 24)
    plan = plan_jobs(str(folder), tmp_path / "out", variations=2)
    assert names(plan, tmp_path / "out") == ["a.jpg.v0.png", "a.jpg.v1.png", "a.jpg.png.v0.png", "a.jpg.png.v1.png",
                                             "a.png.v0.png", "a.png.v1.png"]


def test_an_input_named_like_another_results_step_image_gets_its_own_output(tmp_path):
    folder = tmp_path / "in"
    write_sample(folder / "a.jpg", "coffee", 24)  # output.save_every writes a.iter5.png beside a.png
    write_sample(folder / "a.iter5.png", "chelsea", 24)
    write_sample(folder / "b.iter5.png", "rocket", 24)  # no b.png: keeps its name
    plan = plan_jobs(str(folder), tmp_path / "out")
    assert names(plan, tmp_path / "out") == ["a.iter5.png.png", "a.jpg.png", "b.iter5.png"]
    assert plan.jobs[1].step(5, 10) == tmp_path / "out" / "a.jpg.iter05.png"


def test_names_differing_only_in_case_keep_their_extension_or_are_refused(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_sample(folder / "IMG_1.JPG", "coffee", 24, fmt="JPEG")
    write_sample(folder / "img_1.png", "chelsea", 24)
    write_sample(folder / "Trip" / "a.jpg", "rocket", 24)
    write_sample(folder / "trip" / "a.png", "camera", 24)
    assert names(plan_jobs(str(folder), out), out) == ["IMG_1.JPG.png", "Trip/a.jpg.png", "img_1.png.png",
                                                      "trip/a.png.png"]
    write_sample(folder / "img_1.jpg", "astronaut", 24)  # IMG_1.JPG.png and img_1.jpg.png: one file on macOS
    with pytest.raises(UsageError) as err:
        plan_jobs(str(folder), out)
    assert str(err.value) == ("inputs IMG_1.JPG and img_1.jpg would make outputs whose names differ only in case "
                              "(IMG_1.JPG.png, img_1.jpg.png), one file on macOS and Windows: rename one of them")


def test_only_rvgens_own_temporary_files_are_removed(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    mine = [out / "notes" / ".draft.tmp", out / ".a.png.abcdefgh.tmp", out / "x.tmp", out / ".rvgen-notes.tmp",
            elsewhere / ".rvgen-a.png.abcd1234.tmp"]
    left = [out / ".rvgen-a.png.k3j_x9ab.tmp", out / "2024" / ".rvgen-b.png.json.0a1b2c3d.tmp"]
    for path in mine + left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (out / "link").symlink_to(elsewhere)
    (out / ".rvgen-b.png.abcd1234.tmp").symlink_to(elsewhere / ".rvgen-a.png.abcd1234.tmp")  # a link: kept
    assert remove_leftovers(out) == 2
    assert all(path.exists() for path in mine) and not any(path.exists() for path in left)


def test_a_killed_write_leaves_a_name_only_rvgen_makes(tmp_path):
    seen = []

    def write(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        imageio._atomic_write(tmp_path / ("long" * 60 + ".png"), write)
    assert len(seen) == 1 and imageio.is_temporary(seen[0]) and seen[0].startswith(".rvgen-long")
    assert len(seen[0].encode()) <= 130
    assert not imageio.is_temporary(".draft.tmp") and not imageio.is_temporary(".rvgen.lock")


def test_a_run_keeps_the_users_hidden_tmp_files(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_sample(folder / "a.png", "coffee", 40)
    draft = out / "notes" / ".draft.tmp"
    draft.parent.mkdir(parents=True)
    draft.write_text("my notes")
    leftover = out / ".rvgen-a.png.abcd1234.tmp"
    leftover.write_text("half")
    code, text = run(tmp_path, "-i", folder, "-o", out)
    assert code == 0, text
    assert draft.read_text() == "my notes" and not leftover.exists()


def test_a_folder_link_out_of_output_is_refused(tmp_path):
    folder, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    write_sample(folder / "2024" / "a.png", "coffee", 40)
    write_sample(folder / "b.png", "chelsea", 40)
    elsewhere.mkdir()
    out.mkdir()
    (out / "2024").symlink_to(elsewhere)
    code, text = run(tmp_path, "-i", folder, "-o", out)
    assert code == 2
    assert text.strip().splitlines()[-1] == (
        f"Error: {out / '2024'} is a link to {elsewhere}, outside --output {out}; rvgen writes only inside "
        "--output: remove the link or choose another --output")
    assert list(elsewhere.iterdir()) == [] and not (out / "b.png").exists()


def test_a_broken_folder_link_in_output_is_refused_and_one_inside_is_fine(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_sample(folder / "2024" / "a.png", "coffee", 24)
    write_sample(folder / "latest" / "a.png", "chelsea", 24)
    out.mkdir()
    (out / "2024").symlink_to(tmp_path / "missing")
    with pytest.raises(UsageError, match="is a link to .*missing, outside --output"):
        plan_jobs(str(folder), out)
    (out / "2024").unlink()
    (out / "2024").mkdir()
    (out / "latest").symlink_to(out / "2024")  # inside --output, but both results would be one file
    with pytest.raises(UsageError) as err:
        plan_jobs(str(folder), out)
    assert str(err.value) == (f"inputs 2024/a.png and latest/a.png would both write {out / 'latest' / 'a.png'} "
                              "(a link makes their folders one): remove the link or rename one of them")
    (out / "latest").unlink()
    (out / "latest").symlink_to("2024/..")  # a link that stays inside --output and makes no clash
    assert names(plan_jobs(str(folder), out), out) == ["2024/a.png", "latest/a.png"]


def test_links_and_files_that_give_no_job_are_listed_with_the_reason(tmp_path):
    folder, other = tmp_path / "in", tmp_path / "other"
    write_sample(folder / "a.png", "coffee", 24)
    write_sample(other / "b.png", "chelsea", 24)
    (folder / "notes.txt").write_text("x")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.csv").write_text("x")
    (folder / "broken.png").symlink_to(tmp_path / "missing.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "more").symlink_to(other)
    (folder / "b.png").symlink_to(other / "b.png")  # a link to an image is an input
    os.mkfifo(folder / "pipe.png")
    (folder / ".hidden.txt").write_text("x")  # hidden: not listed
    images, ignored = find_inputs(str(folder))
    assert [str(rel) for _, rel in images] == ["a.png", "b.png"]
    assert ignored == ["broken.png (a broken link)", "loop.png (a link that loops)",
                       "more (a link to a folder, not followed)", "notes.txt (not an image format)",
                       "pipe.png (not a regular file)", "sub/data.csv (not an image format)"]
    code, text = run(tmp_path, "-i", folder, "-o", tmp_path / "out", "--dry-run")
    assert code == 0, text
    assert ("  ignored:      6: broken.png (a broken link), loop.png (a link that loops), more (a link to a folder, "
            "not followed), notes.txt (not an image format), pipe.png (not a regular file) ...") in text.splitlines()


def test_a_folder_that_cannot_be_read_is_listed(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    write_sample(folder / "a.png", "coffee", 24)
    write_sample(folder / "locked" / "b.png", "chelsea", 24)
    scandir = os.scandir

    def refuse(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    images, ignored = find_inputs(str(folder))
    assert [str(rel) for _, rel in images] == ["a.png"]
    assert ignored == ["locked (a folder that cannot be read: Permission denied)"]


def test_a_looping_folder_link_in_output_is_refused(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_sample(folder / "loop" / "a.png", "coffee", 24)
    out.mkdir()
    (out / "loop").symlink_to(out / "loop")
    with pytest.raises(UsageError) as err:
        plan_jobs(str(folder), out)
    assert str(err.value) == f"{out / 'loop'}: a link that loops; remove it"


def test_no_images_found_says_what_was_ignored(tmp_path):
    folder = tmp_path / "in"
    write_sample(tmp_path / "albums" / "a.png", "coffee", 24)
    folder.mkdir()
    (folder / "2024").symlink_to(tmp_path / "albums")
    (folder / "notes.txt").write_text("x")
    code, text = run(tmp_path, "-i", folder, "-o", tmp_path / "out")
    assert code == 2
    assert text.strip().splitlines()[-1] == (
        f"Error: --input {folder}: no images or clips found (looked for {imageio.FORMAT_NAMES} and video files); ignored: 2024 (a link "
        "to a folder, not followed), notes.txt (not an image format)")


def test_a_link_into_the_output_folder_is_listed_not_read(tmp_path):
    folder = tmp_path / "in"
    out = folder / "out"
    write_sample(folder / "a.png", "coffee", 24)
    write_sample(out / "a.png", "chelsea", 24)  # an earlier result
    (folder / "result.png").symlink_to(out / "a.png")
    plan = plan_jobs(str(folder), out)
    assert [job.rel for job in plan.jobs] == ["a.png"]
    assert plan.ignored == ["result.png (a link into the output folder)"]
