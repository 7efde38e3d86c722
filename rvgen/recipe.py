"""Recipes: TOML in, a validated :class:`Recipe` out, or one error line naming the key;
and from a recipe, the built objects the engine runs (:meth:`Recipe.build`).

Everything is checked before any work starts: unknown tables and keys (with the nearest
name suggested), value types, choices, plugin names, layer names and files. Paths are
relative to the recipe file; values given with ``--set`` are relative to the working folder.

The recipe digest (:meth:`Recipe.digest`) says whether an earlier result is still valid.
It hashes the resolved recipe, leaving out keys declared ``digest_neutral`` while they hold
their default: a key added later whose default reproduces earlier results changes no digest.
:func:`recipe_toml` writes a resolved recipe back as TOML that loads into the same recipe.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rvgen import imageio, stacked
from rvgen.backbones import PIXELS, Backbone
from rvgen.engine import ExecutionConfig, Objective, OptimizerConfig, PyramidConfig, Synthesizer, Term
from rvgen.engine.lbfgs import TOLERANCE_WINDOW
from rvgen.engine.objective import ANCHOR
from rvgen.engine.parametrize import PARAMETRIZATIONS
from rvgen.engine.precision import LAYOUTS, PRECISIONS
from rvgen.engine.synth import VARIATION_SEED_STRIDE
from rvgen.errors import PluginError, RecipeError, RvgenError
from rvgen.params import MAX_SIZE, REQUIRED, SEED_RANGE, Context, Param, describe, suggest, unknown, validate
from rvgen.plugins import BUILTIN_SOURCE, Entry, Registry, get_registry
from rvgen.shipped import resolve as resolve_recipe

MAX_ITERATIONS = 100_000  # optimisation steps per image (and per pyramid level) a recipe may ask for
MAX_DEPTH = 32  # how deeply a recipe's tables and arrays may nest
SECTIONS = ("description", "task", "backbone", "optimizer", "output", "video", "losses", "terms")
MAX_UNBLENDED = 16  # reference images a term may blend when its loss cannot (each is then a term of its own)
BLEND_MEAN = "blend: one term, the mean of the normalised targets"  # Recipe.made_as, since a blend is one term


def plugin_fault(entry: Entry, problem: str) -> PluginError:
    """A plugin's fault found while a recipe is checked, in one line naming where it comes from."""
    return PluginError(f"{entry.kind} {entry.name!r} ({entry.source}) {problem}")


def call_plugin(entry: Entry, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, code of the plugin ``entry``: an exception it raises (not
    rvgen's own one-line errors) becomes a :class:`~rvgen.errors.PluginError` naming the plugin, its
    distribution and ``what`` raised, so a recipe check never ends in an internal error. The
    built-ins' exceptions are rvgen's bugs and pass through."""
    try:
        return function(*args, **kwargs)
    except RvgenError:
        raise
    except Exception as exc:
        if entry.source == BUILTIN_SOURCE:
            raise
        text = textwrap.shorten(" ".join(str(exc).split()), 200, placeholder="...")
        raise plugin_fault(entry, f"failed: its {what} raised {type(exc).__name__}" + (f": {text}" if text else "")
                           + "; fix the plugin") from exc


OPTIMIZER_PARAMS = (
    Param("name", str, "lbfgs", "optimiser of the pixels", choices=("lbfgs", "adam")),
    Param("iterations", int, 300, "optimisation steps per image", minimum=1,
          maximum=MAX_ITERATIONS),
    Param("lr", float, None, "step size (default: 1.0 for lbfgs, 0.02 for adam)", minimum=0.0, nullable=True),
    Param("history", int, 50, "L-BFGS history size", minimum=1, maximum=1000),
    Param("line_search", bool, True, "L-BFGS strong-Wolfe line search: without it, starts from noise can stall"),
    Param("parametrization", str, "pixels", "what the optimiser moves: the pixels, or fourier (a colour-decorrelated, "
          "1/f-scaled image; the same minima, another path)", choices=PARAMETRIZATIONS, digest_neutral=True),
    Param("tolerance", float, 0.0, "L-BFGS stops an image once its loss fell by less than this fraction over the "
          f"last {TOLERANCE_WINDOW} iterations (0: it runs all its iterations)", minimum=0.0, maximum=1.0,
          digest_neutral=True),
    Param("precision", str, "auto", "backbone precision: auto (bf16 on CUDA and on CPUs with native bf16, "
          "AVX512-BF16 or AMX; fp32 elsewhere), fp32 (TF32 on CUDA) or bf16; Grams and losses are always fp32",
          choices=PRECISIONS),
    Param("layout", str, "auto", "memory layout of the backbone's activations: auto (channels_last on CUDA and the "
          "CPU, where it is faster), channels_last or contiguous; the pixels differ only by float rounding",
          choices=LAYOUTS, digest_neutral=True),
    Param("batch_size", int, None, "images optimised at once (default: as many as fit in free memory on a GPU, "
          "one at a time on a CPU)", minimum=1, maximum=1024, nullable=True),
    Param("scales", int, 1, "levels of the multi-scale pyramid, each 1/scale_step the size of the next; 1 = single "
          "scale up to 1024 px (a larger image still starts from coarser levels, halving down to 1024 px)",
          minimum=1, maximum=16),
    Param("min_size", int, 64, "smallest long side of a pyramid level in pixels", minimum=8, maximum=MAX_SIZE),
    Param("scale_iterations", int, None, "iterations at each level below the output size: one number for all, or "
          "a list from the coarsest level up to the one below the output size (default: the same as iterations)",
          minimum=1, maximum=MAX_ITERATIONS, nullable=True, kind="counts"),
    Param("scale_step", float, 2.0, "size ratio between neighbouring pyramid levels (2: each half the next; "
          "1.414: more, closer levels)", minimum=1.1, maximum=4.0, digest_neutral=True),
    Param("upsample_detail", bool, False, "start each finer pyramid level from the coarser result plus the fine "
          "detail of the task's starting image (the photo, for style from the content) that upsampling loses",
          digest_neutral=True),
    Param("tile_size", int, None, "evaluate images whose long side exceeds this many pixels in tiles of it, "
          "exactly (default: only when a whole image does not fit in memory); a multiple of 16 for VGG",
          minimum=16, maximum=MAX_SIZE, nullable=True, digest_neutral=True),
)
OUTPUT_PARAMS = (
    Param("size", int, 512, "long side of the result in pixels; inputs are resized to it (at most 8192; "
          "large images are evaluated in tiles)", minimum=8, maximum=MAX_SIZE),
    Param("format", str, "png", "file format of the results", choices=("png", "jpg", "webp")),
    Param("quality", int, 95, "JPEG/WebP quality", minimum=1, maximum=100),
    Param("save_every", int, 0, "also write the image every N iterations as STEM.iterNNN.FORMAT beside the result "
          "(0: never; not with --backend dask)", minimum=0, maximum=MAX_ITERATIONS, result_neutral=True),
    Param("keep_steps", bool, True, "keep the images save_every wrote once the result is written; false removes them "
          "(and those a killed run left, when the next run starts)", result_neutral=True),
)
MAX_PASSES = 32  # sweeps over a shot (Ruder et al.'s artistic-videos makes 15 by default)
VIDEO_CODECS = {"libx264": "mp4", "libx265": "mp4", "libvpx-vp9": "webm"}
"""The encoders a clip's result may use, and the container (the output's suffix) each goes in."""
VIDEO_PARAMS = (  # clips (rvgen.batch.clip); every default reproduces what a recipe without [video] makes
    Param("temporal_weight", float, 200.0, "weight of the temporal loss: each frame stays near the previous result "
          "warped by the input's optical flow, where the flow is reliable (0: frame by frame)", minimum=0.0,
          digest_neutral=True),
    Param("long_term", int, [1], "earlier frames each frame is held to, by offset: [1] the previous one (always "
          "included); [1, 2, 4] also those before, each pixel taking the nearest one that sees it reliably", minimum=1, maximum=64,
          kind="counts", digest_neutral=True),
    Param("passes", int, 1, "sweeps over each shot (Ruder et al.'s multi-pass): the first forward, then backward "
          "and forward by turns, each frame starting from its result of the sweep before blended with its "
          "neighbour's, video.iterations a frame a sweep", minimum=1, maximum=MAX_PASSES, digest_neutral=True),
    Param("first_frame_iterations", int, None, "iterations at the output size for the first frame of each shot "
          "(default: the recipe's optimizer.iterations; the pyramid's coarser levels as the recipe says)",
          minimum=1, maximum=MAX_ITERATIONS, nullable=True, digest_neutral=True),
    Param("iterations", int, 10, "iterations for each later frame, at the output size only, starting from the "
          "previous result warped", minimum=1, maximum=MAX_ITERATIONS, digest_neutral=True),
    Param("frames", str, None, "which frames to make, a Python-style range START:STOP (\"0:48\"; default: all)",
          nullable=True, digest_neutral=True),
    Param("fps", float, None, "resample the clip to this frame rate (default: keep the input's timestamps)",
          minimum=0.1, maximum=1000.0, nullable=True, digest_neutral=True),
    Param("codec", str, "libx264", "encoder of the result: libx264 (H.264 in .mp4), libx265 (HEVC in .mp4), "
          "libvpx-vp9 (VP9 in .webm)", choices=tuple(VIDEO_CODECS), digest_neutral=True),
    Param("crf", int, 18, "the encoder's constant rate factor: lower is better and larger", minimum=0, maximum=63,
          digest_neutral=True),
    Param("keep_frames", bool, False, "also write every result frame as PNG in NAME.frames/ beside the clip",
          result_neutral=True),
)
TERM_PARAMS = (
    Param("loss", str, REQUIRED, "the loss plugin", kind="loss"),
    Param("layers", list, REQUIRED, "layers it compares", kind="layers"),
    Param("weight", float, 1.0, "weight of the term", minimum=0.0),
    Param("target", str, None, "image it compares with: input, a task reference (style) or none "
          "(default: input, or none for losses without a target such as tv)", nullable=True),
    Param("weighting", str, "equal", "auto, equal or a table of layer weights", kind="weighting"),
    Param("name", str, None, "label in progress and sidecars (default: the loss name)", nullable=True),
)


OPTIMIZER_FIELDS = ("name", "iterations", "lr", "history", "line_search", "parametrization", "tolerance")
EXECUTION_FIELDS = ("precision", "batch_size", "tile_size", "layout")
PYRAMID_FIELDS = ("scales", "min_size", "scale_iterations", "scale_step", "upsample_detail")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. The ``[optimizer]`` table is held as three settings: the
    optimiser's own, where it runs (``execution``) and the coarse-to-fine ``pyramid``."""

    task: dict[str, Any]
    backbone: dict[str, Any]
    optimizer: OptimizerConfig
    output: dict[str, Any]
    losses: dict[str, dict[str, Any]]
    terms: tuple[Term, ...]
    source: str = "<recipe>"
    description: str = ""
    variations: int = 1  # results per input, as the task says
    execution: ExecutionConfig = ExecutionConfig()
    pyramid: PyramidConfig = PyramidConfig()
    neutral_defaults: frozenset[str] = frozenset()
    """Dotted keys left out of the digest: at a ``digest_neutral`` default, or ``result_neutral``."""
    made_as: tuple[str, ...] = ()
    """How results are made where that changed for the same resolved recipe (a blend of style
    images as one term, :data:`BLEND_MEAN`); part of the digest, so those results are redone."""
    video: Mapping[str, Any] = field(default_factory=lambda: {p.name: p.default for p in VIDEO_PARAMS})
    """How clips are made (the ``[video]`` table, defaults filled in)."""
    video_table: bool = False
    """Whether the recipe has a ``[video]`` table: an animated GIF is then a clip, not an image."""

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (defaults filled in, paths absolute)."""
        return {
            "description": self.description,
            "task": self.task,
            "backbone": self.backbone,
            "optimizer": {**asdict(self.optimizer), **asdict(self.execution), **asdict(self.pyramid)},
            "output": self.output,
            "video": dict(self.video),
            "losses": self.losses,
            "terms": [term_dict(t) for t in self.terms],
        }

    def to_toml(self) -> str:
        """The resolved recipe as a recipe file (:func:`recipe_toml`)."""
        return recipe_toml(self.to_dict())

    def options(self, section: str) -> dict[str, Any]:
        """The validated options of the ``task`` or ``backbone`` table, without its ``name``."""
        return {k: v for k, v in getattr(self, section).items() if k != "name"}

    def build_task(self, registry: Registry | None = None) -> Any:
        """The task plugin instance this recipe describes, with its backbone's default layers."""
        registry = registry or get_registry()
        backbone = registry.get("backbone", self.backbone["name"], "backbone.name").cls
        task_cls = registry.get("task", self.task["name"], "task.name").cls
        return task_cls(self.options("task"), backbone.default_layers)

    def references(self, registry: Registry | None = None) -> dict[str, tuple[str, int]]:
        """The reference images the task needs besides the input: name -> (source, long side),
        the long side defaulting to the output size (a float is a fraction of it). Builds no
        network."""
        size = self.output["size"]
        return {name: (src, max(1, round(long_side * size)) if isinstance(long_side, float) else long_side or size)
                for name, (src, long_side) in self.build_task(registry).references().items()}

    def plugins(self, registry: Registry | None = None) -> dict[str, str]:
        """{distribution: version} of the installed plugins whose task, backbone or losses this
        recipe uses (the built-ins and plugins registered through the API have none): what
        its results record, and what a changed version makes them be redone for."""
        registry = registry or get_registry()
        return registry.packages([registry.get("task", self.task["name"], "task.name"),
                                  registry.get("backbone", self.backbone["name"], "backbone.name"),
                                  *(registry.get("loss", name, f"losses.{name}") for name in self.losses)])

    def files(self, registry: Registry | None = None) -> list[tuple[str, str]]:
        """(dotted key, path) of every file this recipe reads besides the inputs: the values of
        its ``path`` and ``images`` keys (a style image, each image of a style folder, an init
        image, a weights file) and the patterns of its per-input masks, also in tables such as
        ``[[task.regions]]``; keywords and scikit-image samples left out."""
        registry = registry or get_registry()
        tables = [("task", self.task, registry.get("task", self.task["name"], "task.name").cls.params),
                  ("backbone", self.backbone, registry.get("backbone", self.backbone["name"], "backbone.name").cls.params)]
        tables += [(f"losses.{name}", options, registry.get("loss", name, f"losses.{name}").cls.params)
                   for name, options in self.losses.items()]
        found = []
        while tables:
            section, values, params = tables.pop(0)
            for p in params:
                value = values.get(p.name)
                if p.kind == "tables" and value:  # [[task.regions]]: their files too, in order
                    tables[:0] = [(f"{section}.{p.name}[{i}]", item, p.fields) for i, item in enumerate(value)]
                if p.kind not in ("path", "images", "pattern") or value is None:
                    continue
                for path in [value] if isinstance(value, str) else value:
                    if not (imageio.is_sample(path) or (p.choices and path in p.choices)):
                        found.append((f"{section}.{p.name}", str(path)))
        return found

    def build(self, device: str = "cpu", registry: Registry | None = None, clips: bool = False) -> Synthesizer:
        """The engine's :class:`~rvgen.engine.Synthesizer` for this recipe on ``device``: the task,
        the losses, the backbone (built to the deepest layer used, stacked if asked) and the
        objective over them. References are not loaded here (see ``set_references``).
        ``clips``: for the frames of clips, with the temporal term (``video.temporal_weight``)
        on the pixels, whose target is each frame's anchor (the previous result, warped)."""
        registry = registry or get_registry()
        task_entry = registry.get("task", self.task["name"], "task.name")
        task = call_plugin(task_entry, "__init__()", self.build_task, registry)
        terms = expand_blends(call_plugin(task_entry, "terms()", task.terms), registry) + list(self.terms)
        if clips and self.video["temporal_weight"] > 0:
            terms.append(Term("temporal", "temporal", (PIXELS,), self.video["temporal_weight"], ANCHOR))
        losses = []
        for term in terms:  # a plugin's exception names that plugin, whichever of them raised
            entry = registry.get("loss", term.loss, "loss")
            losses.append(call_plugin(entry, "__init__()", entry.cls, **self.losses.get(term.loss, {})))
        layers = {layer for t in terms for layer in t.layers}
        backbone_entry = registry.get("backbone", self.backbone["name"], "backbone.name")
        backbone = call_plugin(backbone_entry, "__init__()", backbone_entry.cls, self.options("backbone"), layers)
        stacked.apply(backbone)
        objective = Objective(backbone.eval().requires_grad_(False), terms, losses)
        return Synthesizer(task, objective, self.optimizer, self.pyramid, self.execution, device,
                           snapshot_every=self.output["save_every"])

    def digest(self) -> str:
        """A hash of everything that changes results (not the description)."""
        data = copy.deepcopy(self.to_dict())  # its tables are the recipe's own: popping must not change them
        data.pop("description")
        if self.made_as:
            data["made_as"] = list(self.made_as)
        for key in self.neutral_defaults:  # "task.x", "losses.gram.x": the table's path, then the key
            *path, name = key.split(".")
            table = data
            for part in path:
                table = table.get(part, {})
            table.pop(name, None)
        if not data.get("video"):  # [video] at its defaults changes no digest
            data.pop("video", None)
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def term_dict(term: Term) -> dict[str, Any]:
    """A ``[[terms]]`` term as the resolved recipe holds it: its fields, the guides left out
    while unset (a recipe's terms take none; their digests stay as they were)."""
    data = asdict(term)
    for name in ("guide", "target_guide"):
        if data[name] is None:
            del data[name]
    return data


def depth(value: Any) -> int:
    """How deeply tables and arrays nest in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level + 1)
            if deepest > MAX_DEPTH:
                break
            stack.extend((child, level + 1) for child in children)
    return deepest


def _loads(text: str, where: str) -> dict[str, Any]:
    """TOML text parsed, at most MAX_DEPTH levels deep; raises TOMLDecodeError as tomllib does."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        data = None
    if data is None or depth(data) > MAX_DEPTH:
        raise RecipeError(f"{where}: tables and arrays nested more than {MAX_DEPTH} levels deep")
    return data


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")) if not math.isfinite(value) \
            else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def _toml_table(values: Mapping[str, Any]) -> list[str]:
    ordered = sorted(values.items(), key=lambda item: item[0] != "name")  # the plugin's name first
    return [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in ordered if v is not None]


def recipe_toml(resolved: Mapping[str, Any]) -> str:
    """A resolved recipe (:meth:`Recipe.to_dict`, or a sidecar's ``recipe.resolved``) as TOML.

    Keys left unset (``None``, the default of every nullable key) are left out, so the text
    loads (:func:`parse_recipe`) into a recipe with the same digest."""
    lines = [f"description = {_toml_value(resolved['description'])}"] if resolved.get("description") else []
    for section in ("task", "backbone", "optimizer", "output", "video"):
        if resolved.get(section):
            lines += ["", f"[{section}]", *_toml_table(resolved[section])]
    for name, options in (resolved.get("losses") or {}).items():
        lines += ["", f"[losses.{_toml_key(name)}]", *_toml_table(options)]
    for term in resolved.get("terms") or []:
        lines += ["", "[[terms]]", *_toml_table(term)]
    return "\n".join(lines).lstrip("\n") + "\n"


def parse_value(text: str, key: str = "value") -> Any:
    """A ``--set`` value: TOML if it parses (numbers, booleans, arrays, quoted strings), else a string."""
    try:
        return _loads(f"v = {text}", f"--set {key}")["v"]
    except tomllib.TOMLDecodeError:
        return text


Overrides = Sequence[str] | Mapping[str, Any]
"""Recipe overrides: ``KEY=VALUE`` strings (as ``--set``), a dict of dotted keys
(``{"output.size": 384}``) or a nested dict (``{"output": {"size": 384}}``)."""


def override_items(overrides: Overrides, flag: str = "--set") -> list[tuple[str, Any]]:
    """``overrides`` as (dotted key, value) pairs in order: strings are parsed as ``--set``
    parses them (TOML values, else text); a dict's values are taken as they are, and a
    nested dict stands for the dotted keys under it."""
    if isinstance(overrides, Mapping):
        return list(_flatten(overrides, "", flag))
    if isinstance(overrides, (str, bytes)):
        raise RecipeError(f"{flag}: expected a list of KEY=VALUE strings or a dict, got one string "
                          f"{overrides!r}; wrap it in a list")
    items = []
    for item in overrides:
        if not isinstance(item, str):
            raise RecipeError(f"{flag} {item!r}: expected a KEY=VALUE string (or give a dict of keys)")
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"{flag} {item!r}: expected KEY=VALUE, e.g. optimizer.iterations=50")
        items.append((key, parse_value(text.strip(), key)))
    return items


def _flatten(mapping: Mapping[str, Any], prefix: str, flag: str) -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if not isinstance(key, str) or not key.strip():
            raise RecipeError(f"{flag}: keys are dotted names such as 'output.size', got {key!r}")
        path = f"{prefix}{key.strip()}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, path + ".", flag)
        else:
            yield path, value


def apply_overrides(data: dict[str, Any], overrides: Overrides, flag: str = "--set") -> tuple[dict[str, Any], frozenset[str]]:
    """Apply overrides (see :data:`Overrides`); returns the new data and the keys set.
    ``flag`` names them in errors: ``--set`` on the command line, ``overrides`` in Python."""
    data = copy.deepcopy(data)
    keys = set()
    for key, value in override_items(overrides, flag):
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{flag} {key}: {'.'.join(parts[: i + 1])} is not a table")
        node[parts[-1]] = copy.deepcopy(value)
        keys.add(key)
    return data, frozenset(keys)


def load_recipe(recipe: str | Path, overrides: Overrides = (), registry: Registry | None = None,
                flag: str = "--set") -> Recipe:
    """A recipe file, or a shipped recipe by name (``"starry_night"``, see ``rvgen recipes``),
    with overrides applied (see :data:`Overrides`), validated."""
    path = resolve_recipe(recipe)
    data, cwd_keys = read_recipe_data(path, overrides, flag)
    return parse_recipe(data, base_dir=path.resolve().parent, registry=registry, cwd_keys=cwd_keys,
                        source=str(path))


def read_recipe_data(path: Path, overrides: Overrides = (), flag: str = "--set") -> tuple[dict[str, Any], frozenset[str]]:
    """A recipe file's TOML with overrides applied, not yet validated, and the keys set."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    try:
        data = _loads(text, str(path))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    return apply_overrides(data, overrides, flag)


def _name(table: Mapping[str, Any], section: str, default: str | None = None) -> str:
    """The ``name`` of a table, which picks a plugin: a string."""
    name = table.get("name", default)
    if not isinstance(name, str):
        raise RecipeError(f"{section}.name: expected a name (a string), got {describe(name)}")
    return name


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RecipeError(f"{key}: expected a table ([{key}]), got {type(value).__name__}")
    return value


def parse_recipe(
    data: Mapping[str, Any],
    base_dir: Path | None = None,
    registry: Registry | None = None,
    cwd_keys: frozenset[str] = frozenset(),
    source: str = "<recipe>",
) -> Recipe:
    """Validate recipe data (as parsed from TOML) into a :class:`Recipe`."""
    registry = registry or get_registry()
    for key in data:
        if key not in SECTIONS:
            raise RecipeError(f"{key}: unknown table{suggest(key, SECTIONS)}; allowed: {', '.join(SECTIONS)}")
    ctx = Context(base_dir=base_dir or Path.cwd(), cwd_keys=cwd_keys, losses=registry.names("loss"),
                  find_loss=lambda name, key: registry.get("loss", name, key))

    backbone_name, backbone, backbone_opts = _parse_backbone(_table(data, "backbone"), ctx, registry)
    losses = _parse_losses(_table(data, "losses"), ctx, registry)
    task_entry, task_opts, task = _parse_task(_table(data, "task"), ctx, registry, backbone)
    task_cls = task_entry.cls
    targets = _task_targets(task, task_entry)

    terms = _parse_terms(data.get("terms", []), targets, ctx, registry)
    task_terms = _task_terms(task, task_entry, targets)
    for term in task_terms:
        _check_term(term, registry, "task")
    for i, term in enumerate(terms):
        _check_term(term, registry, f"terms[{i}]")
    for term in [*task_terms, *terms]:  # every loss used gets its defaults filled in
        if term.loss not in losses:
            losses[term.loss] = validate(f"losses.{term.loss}", {}, registry.get("loss", term.loss, "loss").cls.params, ctx)

    optimizer = validate("optimizer", _table(data, "optimizer"), OPTIMIZER_PARAMS, ctx)
    output = validate("output", _table(data, "output"), OUTPUT_PARAMS, ctx)
    video = validate("video", _table(data, "video"), VIDEO_PARAMS, ctx)
    video["frames"] = video["frames"] if video["frames"] is None else _frame_range(video["frames"])
    description = data.get("description", "")
    if not isinstance(description, str):
        raise RecipeError("description: expected a string")
    if video["passes"] > 1 and video["temporal_weight"] == 0:
        raise RecipeError("video.passes: more than one pass ties frames to their neighbours; with "
                          "video.temporal_weight = 0 each frame is painted on its own (set passes = 1)")
    if optimizer["tolerance"] and optimizer["name"] != "lbfgs":
        raise RecipeError(f"optimizer.tolerance: only lbfgs stops on it; {optimizer['name']} runs all its iterations")
    if optimizer["tile_size"] is not None:
        _check_tileable([*task_terms, *terms], backbone, backbone_name, registry)
    neutral = set().union(*(neutral_defaults(section, values, params) for section, values, params in (
        ("task", task_opts, task_cls.params), ("backbone", backbone_opts, backbone.params),
        ("optimizer", optimizer, OPTIMIZER_PARAMS), ("output", output, OUTPUT_PARAMS), ("video", video, VIDEO_PARAMS),
        *((f"losses.{name}", opts, registry.get("loss", name, "loss").cls.params) for name, opts in losses.items()))))
    recipe = Recipe(
        task={"name": task_cls.name, **task_opts},
        backbone={"name": backbone_name, **backbone_opts},
        optimizer=OptimizerConfig(**{k: optimizer[k] for k in OPTIMIZER_FIELDS}),
        execution=ExecutionConfig(**{k: optimizer[k] for k in EXECUTION_FIELDS}),
        pyramid=PyramidConfig(**{k: tuple(optimizer[k]) if isinstance(optimizer[k], list) else optimizer[k]
                                 for k in PYRAMID_FIELDS}),
        output=output,
        losses=losses,
        terms=tuple(terms),
        source=source,
        description=description,
        variations=call_plugin(task_entry, "variations()", task.variations),
        neutral_defaults=frozenset(neutral),
        video=video,
        video_table="video" in data,
        made_as=(BLEND_MEAN,) if any(t.blend and registry.get("loss", t.loss, "loss").cls.blendable
                                     for t in task_terms) else (),
    )
    _check_seeds_and_sizes(recipe, task_entry, registry)
    return recipe


def _parse_backbone(table: dict[str, Any], ctx: Context, registry: Registry) -> tuple[str, type[Backbone], dict]:
    """The ``[backbone]`` table: (name, class, validated options); tells ``ctx`` its layers."""
    name = _name(table, "backbone", "random-vgg19")
    entry = registry.get("backbone", name, "backbone.name")
    backbone = entry.cls
    options = validate("backbone", table, backbone.params, ctx, extra=lambda k: k == "name")
    call_plugin(entry, "check()", backbone.check, options)
    ctx.layers = call_plugin(entry, "layer_names()", backbone.layer_names, options)
    ctx.backbone = name
    return name, backbone, options


def _parse_losses(table: dict[str, Any], ctx: Context, registry: Registry) -> dict[str, dict[str, Any]]:
    """The ``[losses.NAME]`` tables: each loss's validated options."""
    losses: dict[str, dict[str, Any]] = {}
    for name, options in table.items():
        loss = registry.get("loss", name, f"losses.{name}").cls
        if not isinstance(options, dict):
            raise RecipeError(f"losses.{name}: expected a table of the loss's options")
        losses[name] = validate(f"losses.{name}", options, loss.params, ctx)
    return losses


def _parse_task(table: dict[str, Any], ctx: Context, registry: Registry, backbone: type[Backbone]):
    """The ``[task]`` table: (its registry entry, validated options, the task built from them)."""
    if "name" not in table:
        raise RecipeError(f"task.name: required; installed tasks: {', '.join(registry.names('task'))}")
    entry = registry.get("task", _name(table, "task"), "task.name")
    options = validate("task", table, entry.cls.params, ctx, extra=lambda k: k == "name")
    return entry, options, call_plugin(entry, "__init__()", entry.cls, options, backbone.default_layers)


def _check_seeds_and_sizes(recipe: Recipe, task_entry: Any, registry: Registry) -> None:
    """Every variation has a seed in range, and no reference image is asked larger than
    :data:`MAX_SIZE`."""
    seed = recipe.task.get("seed")
    if isinstance(seed, int) and seed + VARIATION_SEED_STRIDE * (recipe.variations - 1) > SEED_RANGE[1]:
        raise RecipeError(f"task.seed: {seed} leaves no seed for {recipe.variations} variations (variation k draws "
                          f"from seed + {VARIATION_SEED_STRIDE} k, at most {SEED_RANGE[1]}); use a smaller seed")
    for name, (_, long_side) in call_plugin(task_entry, "references()", recipe.references, registry).items():
        if long_side > MAX_SIZE:
            raise RecipeError(f"task.{name}: the image would be {long_side} px on its long side, more than "
                              f"{MAX_SIZE}; ask for a smaller one")


def _frame_range(text: str) -> str:
    """``video.frames`` checked: ``START:STOP`` (either may be left out), 0 <= START < STOP;
    returned as written, normalised (``"0:48"``)."""
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    start, stop = (match[1], match[2]) if match else (None, None)
    if match is None or (stop and int(stop) <= int(start or 0)):
        raise RecipeError(f"video.frames: expected START:STOP with START < STOP (frames from 0), e.g. \"0:48\", "
                          f"got {text!r}")
    return f"{int(start or 0)}:{stop}"


def frame_range(text: str | None) -> range | None:
    """``video.frames`` as a range (``"10:"``: from frame 10 to the end, as far as 2**31)."""
    if text is None:
        return None
    start, stop = text.split(":")
    return range(int(start), int(stop) if stop else 2**31)


def neutral_defaults(section: str, values: Mapping[str, Any], params: Sequence[Param]) -> set[str]:
    """Dotted keys of ``section`` left out of the digest: those declared ``digest_neutral``
    whose value is their default, and those declared ``result_neutral`` whatever it is."""
    return {f"{section}.{p.name}" for p in params if p.name in values
            and (p.result_neutral or (p.digest_neutral and values[p.name] == p.default))}


def _task_targets(task: Any, entry: Entry) -> list[str]:
    """What a term may compare with: the input, the task's references and its derived targets."""
    references = call_plugin(entry, "references()", task.references)
    derived = call_plugin(entry, "derived_references()", task.derived_references)
    if not isinstance(references, Mapping) or not all(
            isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in references.values()):
        raise plugin_fault(entry, "is at fault: references() must return {name: (path or \"skimage:NAME\", long side)}")
    both = sorted(set(references) & set(derived))
    if both:
        raise plugin_fault(entry, f"is at fault: {both[0]!r} is both a reference and a derived reference; "
                                  "give them different names")
    return ["input", *references, *sorted(derived)]


def _task_terms(task: Any, entry: Entry, targets: Sequence[str]) -> list[Term]:
    """The task's own terms, each one checked to be a Term that compares with something the
    task has (a misspelt reference would fail only in a worker)."""
    terms = call_plugin(entry, "terms()", task.terms)
    if not isinstance(terms, (list, tuple)) or not all(isinstance(t, Term) for t in terms):
        raise plugin_fault(entry, "is at fault: terms() must return a list of rvgen.engine.Term, "
                                  f"not {type(terms).__name__}")
    for term in terms:
        for target in term.targets:
            if target not in targets:
                raise plugin_fault(entry, f"is at fault: its term {term.name!r} compares with {target!r}, which is "
                                          f"not one of its targets{suggest(target, targets)} ({', '.join(targets)}); "
                                          "fix Term(target=...) or declare it in references() or derived_references()")
    return list(terms)


def _parse_terms(items: Any, task_targets: Sequence[str], ctx: Context, registry: Registry) -> list[Term]:
    """Extra objective terms from ``[[terms]]`` tables, added to the task's own. A term's
    target is one of ``task_targets`` (the input and what the task has), or ``none``."""
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise RecipeError("terms: expected an array of tables ([[terms]])")
    targets = [*task_targets, "none"]
    terms = []
    for i, item in enumerate(items):
        if item.get("blend") in ([], ()):  # a resolved recipe (a sidecar's, --from) writes each term's empty blend
            item = {k: v for k, v in item.items() if k != "blend"}
        opts = validate(f"terms[{i}]", item, TERM_PARAMS, ctx)
        if opts["target"] is None:
            opts["target"] = "input" if registry.get("loss", opts["loss"], f"terms[{i}].loss").cls.needs_target else "none"
        if opts["target"] not in targets:
            raise unknown("target", f"terms[{i}].target", opts["target"], targets)
        terms.append(Term(
            name=opts["name"] or opts["loss"],
            loss=opts["loss"],
            layers=tuple(opts["layers"]),
            weight=opts["weight"],
            target=None if opts["target"] == "none" else opts["target"],
            weighting=opts["weighting"],
        ))
    return terms


def _check_tileable(terms: Sequence[Term], backbone: Any, backbone_name: str, registry: Registry) -> None:
    """``optimizer.tile_size`` needs losses that are sums over positions and a backbone that
    says how its layers sit on the pixel grid."""
    for term in terms:
        if not registry.get("loss", term.loss, "loss").cls.tiled:
            raise RecipeError(f"optimizer.tile_size: loss {term.loss!r} cannot be evaluated in tiles (it does not "
                              "declare tiled = True); leave tile_size unset")
    if backbone.tile_geometry is Backbone.tile_geometry:
        raise RecipeError(f"optimizer.tile_size: backbone {backbone_name!r} cannot be evaluated in tiles "
                          "(it declares no tile geometry); leave tile_size unset")


def expand_blends(terms: Sequence[Term], registry: Registry) -> list[Term]:
    """``terms`` as the objective gets them: a blend of reference images whose loss is not
    ``blendable`` (not a squared distance) is one term per image, each with its share of the
    weight; a blendable one stays one term, whose target is the mean of theirs."""
    out = []
    for term in terms:
        if term.blend and not registry.get("loss", term.loss, "loss").cls.blendable:
            out += [replace(term, weight=term.weight * share, target=name, blend=())
                    for name, share in term.blend if share > 0]
        else:
            out.append(term)
    return out


def _check_term(term: Term, registry: Registry, where: str) -> None:
    loss = registry.get("loss", term.loss, f"{where}.loss").cls
    if term.blend and not loss.blendable and len(term.blend) > MAX_UNBLENDED:
        raise RecipeError(f"{where}: {len(term.blend)} reference images for loss {term.loss!r}, which cannot blend them "
                          f"into one target (it does not declare blendable = True), so each is its own term: at most "
                          f"{MAX_UNBLENDED}; use fewer images or a blendable loss such as gram")
    if (term.guide is not None or term.target_guide is not None) and not loss.guidable:
        raise RecipeError(f"{where}: loss {term.loss!r} cannot take a mask (it does not declare guidable = True); "
                          "use gram")
    if loss.needs_target and term.target is None:
        raise RecipeError(f"{where}.target: loss {term.loss!r} compares with an image; set target = \"input\"")
    if not loss.needs_target and term.target is not None:
        raise RecipeError(f"{where}.target: loss {term.loss!r} compares with no image; set target = \"none\"")
    if isinstance(term.weighting, dict) and set(term.weighting) != set(term.layers):
        missing = sorted(set(term.layers) - set(term.weighting))
        extra = sorted(set(term.weighting) - set(term.layers))
        detail = f"no weight for {', '.join(missing)}" if missing else f"weights for layers not used: {', '.join(extra)}"
        raise RecipeError(f"{where}.weighting: {detail}")
