"""The same recipe, seed and device give the same pixels whatever the number of workers.

A CPU result depends on the number of torch threads (reductions, convolutions and matrix
products split their sums by thread), and ``--workers 2`` used to split the cores, so it
gave other pixels than ``--workers 1`` (4 of 6 images, by up to 45/255) under the same
recipe digest. Every CPU worker now runs each image with the same threads, recorded in the
sidecar."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_recipe
from PIL import Image
from test_batch import folder

from rvgen.batch.runner import cpu_threads
from rvgen.cli import cli

STYLE = '''
[task]
name = "style"
style = "skimage:hubble_deep_field"

[optimizer]
iterations = 20

[output]
size = 48
'''


def pixels(out) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}


@pytest.mark.slow
def test_one_worker_and_two_workers_make_the_same_pixels(tmp_path):
    inputs, path = folder(tmp_path, 2), write_recipe(tmp_path / "style.toml", STYLE)
    made = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = CliRunner().invoke(cli, ["run", str(path), "-i", str(inputs), "-o", str(out), "--devices", "cpu",
                                          "--workers", str(workers)])
        assert result.exit_code == 0 and "2 done, 0 failed" in result.output, result.output
        made[workers] = pixels(out)
        for sidecar in out.glob("*.json"):
            data = json.loads(sidecar.read_text())
            assert data["threads"] == cpu_threads() and data["device"] == "cpu"
    assert sorted(made[1]) == sorted(made[2]) == ["astronaut.png", "chelsea.png"]
    for name, image in made[1].items():
        assert max(image.shape[:2]) == 48 and image.shape[2] == 3
        assert np.array_equal(image, made[2][name]), (name, int(np.abs(image.astype(int) - made[2][name]).max()))
