"""The import contracts of docs/architecture.md (pyproject.toml's [tool.importlinter]) hold,
and they would catch an import that breaks them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True))"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_an_import_of_the_recipe_layer_into_the_engine_breaks_them(tmp_path):
    shutil.copytree(ROOT / "rvgen", tmp_path / "rvgen", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    objective = tmp_path / "rvgen" / "engine" / "objective.py"
    objective.write_text(objective.read_text() + "\nfrom rvgen.recipe import Recipe  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The engine is a leaf" in result.stdout and "BROKEN" in result.stdout
    assert "rvgen.engine.objective -> rvgen.recipe" in result.stdout
