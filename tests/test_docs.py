"""The docs cannot drift from the code: the recipe key reference is generated from the
declared parameters, and the plugin guide names every public member of the base classes."""

from pathlib import Path

from click.testing import CliRunner

from rvgen.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def test_recipe_reference_matches_the_declared_parameters():
    # conftest sets RVGEN_LOAD_PLUGINS="", so only the built-ins are listed, as in the file.
    result = CliRunner().invoke(cli, ["plugins", "--markdown"])
    assert result.exit_code == 0, result.output
    assert (ROOT / "docs" / "recipes.md").read_text() == result.output, (
        "docs/recipes.md differs from the declared parameters: regenerate with "
        "`rvgen plugins --markdown > docs/recipes.md` (with RVGEN_LOAD_PLUGINS= so only the built-ins appear)"
    )


def test_recipe_reference_names_every_builtin_key():
    text = (ROOT / "docs" / "recipes.md").read_text()
    for key in ("iterations", "batch_size", "size", "style_weight", "variations", "pooling", "stacked_candidates",
                "weights", "target", "weighting"):
        assert f"`{key}`" in text
