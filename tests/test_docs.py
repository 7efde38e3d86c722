"""The docs cannot drift from the code: the recipe key reference is generated from the
declared parameters, and the plugin guide names every public member of the base classes."""

import inspect
import re
from pathlib import Path

from click.testing import CliRunner
from torch import nn

from rvgen.backbones import Backbone
from rvgen.cli import cli
from rvgen.losses import Loss
from rvgen.tasks import Task

ROOT = Path(__file__).resolve().parents[1]


def test_recipe_reference_matches_the_declared_parameters():
    # conftest sets RVGEN_LOAD_PLUGINS="", so only the built-ins are listed, as in the file.
    result = CliRunner().invoke(cli, ["plugins", "--markdown"])
    assert result.exit_code == 0, result.output
    assert (ROOT / "docs" / "recipes.md").read_text() == result.stdout, (
        "docs/recipes.md differs from the declared parameters: regenerate with "
        "`rvgen plugins --markdown > docs/recipes.md` (with RVGEN_LOAD_PLUGINS= so only the built-ins appear)"
    )


def test_recipe_reference_lists_a_plugins_keys(monkeypatch):
    import rvgen.plugins
    from rvgen import hookimpl
    from rvgen.params import Param

    class Sharpness(Loss):
        name = "sharpness"
        description = "a test loss"
        params = (Param("radius", int, 2, "blur radius in pixels", minimum=1),)

        def forward(self, features, target):
            return (features - target).pow(2).flatten(1).mean(1)

    class Plugin:
        @hookimpl
        def register_losses(self, register):
            register(Sharpness)

    registry = rvgen.plugins.registry_with([Plugin()])
    monkeypatch.setattr(rvgen.plugins, "get_registry", lambda: registry)
    result = CliRunner().invoke(cli, ["plugins", "--markdown"])
    assert result.exit_code == 0, result.output
    assert "### `[losses.sharpness]`" in result.output
    assert "| `radius` | int | `2` | ≥ 1 | blur radius in pixels |" in result.output


def test_recipe_reference_names_every_builtin_key():
    text = (ROOT / "docs" / "recipes.md").read_text()
    for key in ("iterations", "batch_size", "size", "style_weight", "variations", "pooling", "stacked_candidates",
                "weights", "target", "weighting"):
        assert f"`{key}`" in text


def public_members(cls: type) -> set[str]:
    """Public names defined on ``cls`` or the classes it inherits from, except nn.Module and
    object: class attributes, annotated class variables, methods, and attributes its code
    assigns on ``self``."""
    skip = set(nn.Module.__mro__)
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in skip:
            continue
        names |= set(vars(klass)) | set(vars(klass).get("__annotations__", {}))
        names |= set(re.findall(r"\bself\.([A-Za-z]\w*)\s*=", inspect.getsource(klass)))
    return {n for n in names if not n.startswith("_")}


def mentioned(name: str, text: str) -> bool:
    """``name`` in backquotes: `name`, `name(...)`, `self.name` or `rvgen.module.name(...)`."""
    return re.search(rf"`(?:[\w.]*\.)?{re.escape(name)}[`(]", text) is not None


def test_plugin_guide_documents_every_public_member_of_the_base_classes():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    missing = []
    for cls in (Backbone, Loss, Task):
        members = public_members(cls)
        assert {"name", "description", "params", "forward" if cls is not Task else "init"} <= members
        missing += [f"{cls.__name__}.{n}" for n in sorted(members) if not mentioned(n, guide)]
    assert not missing, f"docs/plugins.md does not mention these as `name`: {', '.join(missing)}"


def test_plugin_guide_documents_the_helpers():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    for helper in ("full_precision", "feature_scale", "image_scale", "gram_matrix", "white_noise", "pixels"):
        assert mentioned(helper, guide), f"{helper} is not documented in docs/plugins.md"


def test_readme_is_short_and_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in ("architecture", "benchmarks", "research", "plugins", "recipes"):
        assert f"(docs/{page}.md)" in readme, page
    # the two set-up commands CI runs
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && " \
           "rvgen run recipes/starry_night.toml" in readme
    assert ".venv/bin/python -m pytest -q" in readme


def test_doc_links_point_at_files():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if target == "docs/architecture.md":  # written separately
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def command_lines(text: str) -> list[str]:
    """Each ``rvgen ...`` command written in ``text``'s code blocks (indented continuation lines
    of a usage joined, shell lines split at ``&&`` and ``;``, comments and variables dropped)
    and inline code."""
    commands: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            if re.match(r"\s+[\[-]", line) and commands and commands[-1] is not None:
                commands[-1] += " " + line.strip()
                continue
            commands.append(None)  # a line that is no rvgen command ends the one before
            for part in re.split(r"&&|;|\s#|\s{3,}", line):
                words = [w for w in part.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
                if words and words[0].rsplit("/", 1)[-1] == "rvgen":
                    commands.append(" ".join(["rvgen", *words[1:]]))
    commands += re.findall(r"`(rvgen [^`]+)`", text)
    return [c for c in commands if c is not None]


def test_every_command_and_flag_the_docs_write_exists():
    """README.md and docs/*.md name no command or flag that rvgen lacks (e.g. ``rvgen run -v``:
    ``-v`` belongs before the command)."""
    known: dict[str, set[str]] = {}
    for name, command in cli.commands.items():
        known[name] = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")}
    top = {opt for p in cli.params for opt in p.opts} | {"-h", "--help"}
    checked = 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in command_lines(page.read_text()):
            words = [w.strip("[]|,") for w in line.replace("|", " ").split()[1:]]
            while words and words[0] in top:
                words.pop(0)
            if not words or words[0].startswith("-") or words[0] not in known and words[0][:1].isupper():
                continue  # `rvgen --version`, `rvgen COMMAND`
            assert words[0] in known, f"{page.name}: `{line}`: rvgen has no command {words[0]!r}"
            flags = {w.split("=")[0] for w in words[1:] if re.fullmatch(r"--?[a-z][a-z-]*(=\S*)?", w)}
            wrong = flags - known[words[0]] - {"-h", "--help"}
            assert not wrong, f"{page.name}: `{line}`: rvgen {words[0]} has no {', '.join(sorted(wrong))}"
            checked += 1
    assert checked > 20


def test_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "rvgen").rglob("*.py"))
               if path.name not in ("__init__.py", "__main__.py") and f"`{path.name}`" not in text
               and f"`{path.relative_to(ROOT / 'rvgen')}`" not in text and f"`rvgen/{path.relative_to(ROOT / 'rvgen')}`" not in text]
    assert not missing, f"docs/architecture.md does not name {', '.join(missing)}"
