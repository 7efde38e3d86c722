"""Recipe digests decide what a rerun redoes, so they are a promise: today's shipped recipes
keep their digests, a key added later at a default that reproduces earlier results changes
none, and a value that changes results changes it."""

import shutil
from pathlib import Path

import pytest

from rvgen import hookimpl
from rvgen.params import Param
from rvgen.plugins import registry_with
from rvgen.recipe import load_recipe, parse_recipe
from rvgen.tasks.builtin import Reconstruct

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# Paths in a resolved recipe are absolute, so the recipes are pinned at one fixed place.
PINNED_AT = Path("/tmp/rvgen-digest-pin/recipes")
PINNED = {  # the style recipes changed on purpose with their schedules (CHANGELOG, Unreleased)
    "great_wave.toml": "41f7b0bc8675ef7d",
    "monet.toml": "7b7f2a47692b272f",
    "reconstruct.toml": "d6f42100426fb4f3",
    "scream.toml": "d5253f8208d031a2",
    "starry_night.toml": "c9134420ef6c6e12",
    "texture.toml": "9274eb5645fe72fe",
    "video.toml": "233fede75707e38d",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_recipes_keep_their_digests(name):
    shutil.copytree(RECIPES, PINNED_AT, dirs_exist_ok=True)
    assert load_recipe(PINNED_AT / name).digest() == PINNED[name], (
        f"{name}: its digest changed, so every result made with it will be redone. If a default changed "
        "results on purpose, update PINNED and say so in CHANGELOG.md; if a new key reproduces today's "
        "results at its default, declare it Param(..., digest_neutral=True)."
    )


class Later(Reconstruct):
    """Reconstruct with a key added after results were made; 0 reproduces the old results."""

    name = "later"
    params = Reconstruct.params + (Param("jitter", int, 0, "a later key", digest_neutral=True),)


class Plain(Reconstruct):
    name = "later"  # the same task as it was before the key existed


class Plugin:
    def __init__(self, cls):
        self.cls = cls

    @hookimpl
    def register_tasks(self, register):
        register(self.cls)


def digest(cls, **task):
    return parse_recipe({"task": {"name": "later", **task}}, registry=registry_with([Plugin(cls)])).digest()


def test_a_neutral_key_at_its_default_changes_no_digest_and_any_other_value_does():
    before = digest(Plain)
    assert digest(Later) == before
    assert digest(Later, jitter=0) == before
    assert digest(Later, jitter=3) != before
    assert digest(Plain, layer="relu2_1") != before  # an ordinary key changes it as always
