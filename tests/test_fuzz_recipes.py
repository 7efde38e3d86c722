"""Recipes fuzzed: whatever a recipe file or a ``--set`` holds, ``rvgen run --dry-run`` ends
with exit 0 (a plan), 1 or 2, and a failure is one error line: never a traceback, never an
"internal error". Recipes are built over the real tables and keys (every declared Param of
the core and the built-in plugins), with values of every TOML type, odd strings, extreme
numbers and deep nesting, and some are not TOML at all."""

import math
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rvgen.cli import cli
from rvgen.plugins import get_registry
from rvgen.recipe import OPTIMIZER_PARAMS, OUTPUT_PARAMS, TERM_PARAMS

REGISTRY = get_registry()
NAMES = {kind: sorted(entries) for kind, entries in REGISTRY.entries.items()}
KEYS = {
    "task": ["name", *sorted({p.name for e in REGISTRY.entries["task"].values() for p in e.params})],
    "backbone": ["name", *sorted({p.name for e in REGISTRY.entries["backbone"].values() for p in e.params})],
    "optimizer": [p.name for p in OPTIMIZER_PARAMS],
    "output": [p.name for p in OUTPUT_PARAMS],
    "terms": [p.name for p in TERM_PARAMS],
}
TABLES = ["backbone", "optimizer", "output", "terms", "losses", "description"]
NEAR_MISSES = ["loss", "tasks", "Task", "optimiser"]
LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_2", "relu5_1", "pixels", "conv1_1", "stem", "layer1.0"]

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)  # no surrogates here: see recipes()
odd_text = st.one_of(
    TEXT,
    st.sampled_from(["", " ", "\x00", "a\x00b", "~nouser/x.png", "~", "..", "/", "a\nb", "\t", "skimage:coffee",
                     "skimage:nope", "skimage:", "auto", "equal", "input", "none", "content", "noise", "gram",
                     "nan", "inf", "\\", "\"", "'", "[", "{", "é" * 3, "\u202e", "\x7f", "\U0001f600"]),
    st.integers(1, 6000).map(lambda n: "a" * n),
    st.sampled_from([*LAYERS, *[n for names in NAMES.values() for n in names]]),
)
numbers = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 2, 7, 8, 15, 16, 100, 8192, 8193, 10**9, 2**63 - 1, -1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.005, 0.5, 16.0, 16.5, math.inf, -math.inf, math.nan]),
)
values = st.recursive(
    st.one_of(numbers, st.booleans(), odd_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from([*LAYERS, "a", "name"]), inner, max_size=3)),
    max_leaves=8,
)
deep = st.integers(1, 700).map(lambda n: "[" * n + "]" * n)  # tomllib gives up near 500 levels


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    escaped = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c for c in text)
    return f'"{escaped}"'


def toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) and key.isascii() else toml_string(key)


def toml_value(value) -> str:
    """``value`` as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def _likely(key: str, table: str) -> st.SearchStrategy:
    """Values of the right kind for a key: names, layers, images, small numbers."""
    if key == "name":
        return st.sampled_from(NAMES["task" if table == "task" else "backbone"])
    if key in ("layer", "loss", "style_loss", "target"):
        return st.sampled_from([*LAYERS, *NAMES["loss"], "input", "none", "style"])
    if key.endswith("layers"):
        return st.lists(st.sampled_from(LAYERS), max_size=4)
    if key in ("style", "init", "stacked_reference", "weights"):
        return st.sampled_from(["skimage:coffee", "skimage:brick", "content", "noise"])
    return st.one_of(st.integers(0, 20), st.floats(0, 50))


VALUES = {(table, key): st.one_of(_likely(key, table), numbers, values).map(toml_value)
          for table, keys in [*KEYS.items(), ("other", ["name"])] for key in keys}
OTHER_VALUE = st.one_of(numbers, values).map(toml_value)
TABLE_KEYS = {table: st.lists(st.one_of(st.sampled_from(keys), TEXT), max_size=5, unique=True)
              for table, keys in [*KEYS.items(), ("other", ["name", "a", *NAMES["loss"]])]}
TASK_KEYS = st.lists(st.sampled_from(KEYS["task"][1:]), max_size=4, unique=True)
ODD_LINE = st.one_of(TEXT, deep.map(lambda d: f"deep = {d}"), st.just('bad = "\ud800"'))


def body(draw, table: str, keys: list[str]) -> list[str]:
    return [f"{toml_key(key)} = {draw(VALUES.get((table, key), OTHER_VALUE))}" for key in keys]


@st.composite
def recipes(draw) -> str:
    lines = []
    if draw(st.integers(0, 4)):  # mostly a task that parses, so the other tables are looked at
        task = draw(st.sampled_from(NAMES["task"]))
        keys = [k for k in draw(TASK_KEYS) if k != "style"]
        first = [f'name = "{task}"' if draw(st.integers(0, 5)) else f"name = {draw(VALUES[('task', 'name')])}"]
        if task == "style":
            first.append(f"style = {draw(VALUES[('task', 'style')])}" if draw(st.booleans())
                         else 'style = "skimage:coffee"')
        lines.append("\n".join(["[task]", *first, *body(draw, "task", keys)]))
    tables = draw(st.lists(st.sampled_from(TABLES), max_size=5))
    if draw(st.integers(0, 9)) == 3:
        tables.append(draw(st.sampled_from(NEAR_MISSES)))
    for table in tables:
        if table != "terms" and f"[{table}" in "\n".join(lines):
            continue  # TOML declares a table once
        if table == "description":  # a top-level key: before the first table
            if not lines or not lines[0].startswith("description"):
                lines.insert(0, f"description = {draw(OTHER_VALUE)}")
            continue
        kind = table if table in KEYS else "other"
        header = f"[[{table}]]" if table == "terms" else f"[{toml_key(table)}]"
        if table == "losses":
            header = f"[losses.{toml_key(draw(st.sampled_from([*NAMES['loss'], 'nope'])))}]"
        lines.append("\n".join([header, *body(draw, kind, draw(TABLE_KEYS[kind]))]))
    if draw(st.integers(0, 9)) == 5:  # now and then: text that is barely TOML, too deep to parse or not UTF-8
        lines.append(draw(ODD_LINE))
    return "\n".join(lines) + "\n"


SET_TABLES = [t for t in KEYS if t != "terms"]


@st.composite
def overrides(draw) -> list[str]:
    sets = []
    for _ in range(draw(st.integers(0, 4))):
        table = draw(st.sampled_from(SET_TABLES))
        name = draw(st.sampled_from(KEYS[table]))
        key = draw(odd_text) if draw(st.integers(0, 4)) == 2 else f"{table}.{name}"
        text = draw(st.one_of(VALUES[(table, name)], odd_text, deep))
        sets += ["--set", f"{key}={text}"]
    return sets


FOLDER = Path(tempfile.mkdtemp(prefix="rvgen-fuzz-"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipe=recipes(), sets=overrides())
def test_any_recipe_dry_run_is_a_plan_or_one_error_line(recipe, sets):
    path = FOLDER / "recipe.toml"
    path.write_text(recipe, encoding="utf-8", errors="surrogatepass")
    result = CliRunner().invoke(cli, ["run", str(path), "-i", "skimage:coffee", "-o", str(FOLDER / "out"),
                                      "--dry-run", *sets])
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    if result.exit_code == 0:
        assert result.output.startswith("plan for "), result.output
    else:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert not (FOLDER / "out").exists(), "a dry run makes nothing"
