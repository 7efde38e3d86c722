"""The one path from a recipe and images to results, and rvgen's Python API.

A :class:`Pipeline` is a recipe built on one device: the task, the backbone, the losses and
the reference images' targets (the style's Grams), made once. :meth:`Pipeline.results` runs
any number of images through the engine in batches (the batch-size rule of
:meth:`rvgen.engine.Synthesizer.batch_size`, with the out-of-memory fallback); ``rvgen
run``'s workers and ``rvgen compare`` both go through it. From Python::

    import rvgen

    out = rvgen.stylize("photo.jpg", "painting.jpg", size=384)  # one call, the common options
    out.image.save("painted.png"); print(out.loss, out.parts)

    pipe = rvgen.Pipeline.from_recipe("starry_night", {"output.size": 128})  # built once
    outs = pipe.run([PIL.Image.open("photo.jpg"), "skimage:chelsea"])  # an RGBA input gives an RGBA image
    for i, out in enumerate(outs):  # a failed image says why in its place; the others survive
        if out.ok:
            out.image.save(f"painted-{i}.png")
        else:
            print(out.error)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from rvgen import imageio
from rvgen.engine import Progress, Result, iter_with_fallback
from rvgen.engine.pyramid import resize, scaled
from rvgen.engine.tiling import Window
from rvgen.errors import ImageError, RecipeError, RvgenError
from rvgen.plugins import BUILTIN_SOURCE, Registry, get_registry
from rvgen.recipe import Overrides, Recipe, call_plugin, load_recipe, plugin_fault

PROBE_SIDE = 32  # px: the random images a plugin's backbone, loss and task are tried on before any work

ImageLike = Image.Image | torch.Tensor | str | Path


@dataclass
class Output:
    """One result: the image (PIL and tensor) and how it was reached."""

    image: Image.Image
    tensor: torch.Tensor  # (1, 3, H, W) in [0, 1], on the CPU
    loss: float
    initial_loss: float
    parts: dict[str, float]
    iterations: int
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)
    variation: int = 0
    ok: ClassVar[bool] = True

    @classmethod
    def of(cls, result: Result, variation: int = 0, alpha: Image.Image | None = None) -> Output:
        """``alpha`` (the input's transparency, mode ``L``) makes ``image`` RGBA; ``tensor`` stays RGB."""
        tensor = result.image.detach().float().cpu()
        image = imageio.to_pil(tensor)
        if alpha is not None:
            image.putalpha(alpha.resize(image.size, Image.Resampling.LANCZOS) if alpha.size != image.size else alpha)
        return cls(image, tensor, result.loss, result.initial_loss, dict(result.parts),
                   result.iterations, result.seconds, list(result.history), variation)


@dataclass
class Failure:
    """An image that gave no result, in :meth:`Pipeline.run`'s list where its :class:`Output`
    would be: ``error`` says why, in one line. Reading its ``image`` or ``tensor`` raises it."""

    error: RvgenError
    variation: int = 0
    ok: ClassVar[bool] = False

    @property
    def image(self) -> Image.Image:
        raise self.error

    @property
    def tensor(self) -> torch.Tensor:
        raise self.error

    def __str__(self) -> str:
        return str(self.error)


def load_references(sources: Mapping[str, tuple[str, int]]) -> dict[str, torch.Tensor]:
    """The task's reference images (name -> (source, long side)); one that cannot be read is a
    recipe error."""
    images = {}
    for name, (source, long_side) in sources.items():
        try:
            images[name] = imageio.load_image(source, long_side)
        except ImageError as exc:
            raise RecipeError(f"task.{name}: {exc}") from None
    return images


def check_references(synth: Any, shapes: Mapping[str, tuple[int, int]], size: int) -> None:
    """A recipe error unless every reference image of ``shapes`` (name -> (H, W), at the size it
    is used at) keeps :attr:`Synthesizer.min_side` pixels on each side at the pyramid's
    smallest level for an input at output size ``size`` (a square one, which has the most
    levels): otherwise every image would fail as too small."""
    min_side = synth.min_side
    canvas = tuple(synth.task.canvas(torch.zeros(1, 3, size, size)))
    factor = synth.pyramid.levels(canvas, min_side)[0]
    for name, shape in shapes.items():
        small = scaled(shape, factor)
        if min(small) < min_side:
            level = (f", {small[1]}x{small[0]} px at the pyramid's smallest level (1/{round(1 / factor)})"
                     if factor < 1 else "")
            raise RecipeError(f"task.{name}: image too small: {shape[1]}x{shape[0]} px{level}, and the layers used "
                              f"need at least {min_side} px on each side; use a larger image or size"
                              + (", or fewer optimizer.scales" if factor < 1 else ""))


def preflight(recipe: Recipe, registry: Registry | None = None) -> None:
    """The checks that need the recipe's network, made once before any work: every reference
    image opens and keeps enough pixels at every level (:func:`check_references`),
    ``optimizer.tile_size`` is a multiple of the stride of the deepest layer used (tiles
    start on that grid), and every task and loss a plugin provides keeps its contract
    (:func:`check_plugin_task`, :func:`check_plugin_losses`). A recipe that needs none of
    these builds no network here."""
    registry = registry or get_registry()
    references = load_references(recipe.references(registry))
    recipe.build_task(registry).check_references(references)
    task = registry.get("task", recipe.task["name"], "task.name")
    if task.source != BUILTIN_SOURCE:
        check_plugin_task(task, recipe.build_task(registry), references)
    tile = recipe.execution.tile_size
    plugin_losses = any(registry.get("loss", name, f"losses.{name}").source != BUILTIN_SOURCE for name in recipe.losses)
    backbone = registry.get("backbone", recipe.backbone["name"], "backbone.name")
    if not references and tile is None and not plugin_losses and backbone.source == BUILTIN_SOURCE:
        return
    synth = recipe.build("cpu", registry)
    if backbone.source != BUILTIN_SOURCE:
        check_plugin_backbone(backbone, synth)
    if plugin_losses:
        check_plugin_losses(synth, registry)
    geometry = synth.objective.geometry if tile is not None else None
    if geometry is not None and tile % geometry.stride:
        deepest = max(geometry.strides, key=geometry.strides.get)
        lower, upper = tile // geometry.stride * geometry.stride, -(-tile // geometry.stride) * geometry.stride
        choices = f"{lower} or {upper}" if lower else str(upper)
        raise RecipeError(f"optimizer.tile_size: {tile} is not a multiple of {geometry.stride}, the network's stride at "
                          f"{deepest} (tiles start on that grid); use {choices}")
    check_references(synth, {name: tuple(image.shape[-2:]) for name, image in references.items()
                             if name in synth.reference_names}, recipe.output["size"])


def input_name(image: ImageLike) -> str:
    """The name masks are found by for an input given to :meth:`Pipeline.run`: a file's name,
    ``NAME.png`` for ``skimage:NAME`` (as ``rvgen run`` names it), empty for an image in memory."""
    if isinstance(image, (str, Path)):
        text = str(image)
        return text[len(imageio.SAMPLE_PREFIX):] + ".png" if imageio.is_sample(text) else Path(text).name
    return ""


def check_plugin_task(entry: Any, task: Any, references: Mapping[str, torch.Tensor]) -> None:
    """Call each method of a plugin's task that a run calls, once, on a small random input
    (``PROBE_SIDE`` px): a one-line :class:`~rvgen.errors.PluginError` naming the plugin when
    one raises or returns the wrong shape (``canvas`` two positive ints; ``init``, ``finish``
    and ``prepare_reference`` an image of the size they were given), rather than every image
    of the run failing the same way."""
    content = torch.rand(1, 3, PROBE_SIDE, PROBE_SIDE, generator=torch.Generator().manual_seed(0))

    def image(what: str, value: Any, shape: tuple[int, ...]) -> None:
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise plugin_fault(entry, f"is at fault: {what} returned {got}; it must return an image of shape {shape}")

    canvas = call_plugin(entry, "canvas()", task.canvas, content)
    if not (isinstance(canvas, (tuple, list)) and len(canvas) == 2
            and all(isinstance(side, int) and side > 0 for side in canvas)):
        raise plugin_fault(entry, f"is at fault: canvas() returned {canvas!r:.100}; it must return (height, width), "
                                  "two positive ints")
    shape = (1, 3, *canvas)
    image("init()", call_plugin(entry, "init()", task.init, content, tuple(canvas), torch.Generator().manual_seed(0)),
          shape)
    image("finish()", call_plugin(entry, "finish()", task.finish, torch.rand(shape), content), shape)
    for name in sorted(task.derived_references()):
        image(f"prepare_reference({name!r}) of a derived reference", call_plugin(
            entry, "prepare_reference()", task.prepare_reference, name, content, content), tuple(content.shape))
    for name in sorted(set(task.adapted_references()) & set(references)):
        reference = references[name]
        image(f"prepare_reference({name!r})", call_plugin(
            entry, "prepare_reference()", task.prepare_reference, name, reference, content), tuple(reference.shape))


def check_plugin_backbone(entry: Any, synth: Any) -> None:
    """Run a plugin's backbone once on a small random image, and once on PyTorch's ``meta``
    device as the memory estimate does: a one-line :class:`~rvgen.errors.PluginError` naming
    the plugin when ``features`` raises or leaves out a layer the recipe uses."""
    objective = synth.objective
    side = max(PROBE_SIDE, synth.min_side)
    with torch.no_grad():
        feats = call_plugin(entry, "features()", objective.features, torch.rand(1, 3, side, side), objective.layers)
    missing = [layer for layer in objective.layers if not isinstance(feats.get(layer), torch.Tensor)
               or feats[layer].dim() != 4 or feats[layer].shape[0] != 1]
    if missing:
        raise plugin_fault(entry, f"is at fault: features(x, layers) returned no (B, C, H, W) tensor for "
                                  f"{', '.join(missing)} of a {side} px image; return {{layer: tensor}} for every "
                                  "layer asked for")
    call_plugin(entry, "features() on the meta device (memory estimate; no .item() or decisions on values)",
                synth.memory_estimate_at, (side, side))


def check_plugin_losses(synth: Any, registry: Registry) -> None:
    """Try every loss a plugin provides once, at each layer its terms use, on the features of
    random images (the built-ins are tested): a one-line :class:`~rvgen.errors.PluginError`
    naming the plugin unless ``forward`` returns one finite loss per image, shape (B,), that
    depends on the features through autograd, and, for a ``tiled`` loss, ``finish(statistic(f,
    t, whole image), t)`` equals ``forward(f, t)``. Otherwise such a loss would run and report
    success: a scalar broadcasts over the batch, a detached value moves no pixel."""
    objective = synth.objective
    side = max(PROBE_SIDE, synth.min_side)
    images = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(0)).to(synth.device)
    with torch.no_grad():
        feats = objective.features(images, objective.layers)
    checked = set()
    for term, loss in zip(objective.terms, objective.losses):
        entry = registry.get("loss", term.loss, "loss")
        if entry.source == BUILTIN_SOURCE:
            continue
        batch = 2 if loss.batched else 1
        for layer in term.layers:
            if (term.loss, layer, term.target is None) in checked:
                continue
            checked.add((term.loss, layer, term.target is None))
            where = f"at layer {layer}, for {batch} image{'s' if batch > 1 else ''}"
            with torch.no_grad():
                target = (call_plugin(entry, "prepare()", loss.prepare, feats[layer][2:2 + batch])
                          if term.target is not None else None)
            current = feats[layer][:batch].detach().requires_grad_(True)
            with torch.enable_grad():
                value = call_plugin(entry, "forward()", loss, current, target)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch,):
                got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise plugin_fault(entry, f"is at fault: forward() returned {got} {where}; return one loss per image, "
                                          "shape (B,): reduce every dimension but the first (.flatten(1).mean(1)), "
                                          "never the batch")
            if not value.requires_grad:
                raise plugin_fault(entry, f"is at fault: forward()'s value {where} does not depend on the features "
                                          "through autograd (detached, or computed with .item() or numpy), so no "
                                          "pixel would move; compute it with torch operations on the features")
            if not torch.isfinite(value).all():
                raise plugin_fault(entry, f"is at fault: forward() returned {value.tolist()} {where}; make it finite")
            if loss.tiled:
                _check_tiled(entry, loss, current.detach(), target, value.detach(), where)


def _check_tiled(entry: Any, loss: Any, features: torch.Tensor, target: Any, value: torch.Tensor, where: str) -> None:
    """A ``tiled`` loss's promise, on a whole image as one tile: finish(statistic) == forward."""
    h, w = features.shape[-2:]
    with torch.no_grad():
        statistic = call_plugin(entry, "statistic()", loss.statistic, features, target,
                                Window(slice(0, h), slice(0, w), 0, 0, h, w))
        if not isinstance(statistic, torch.Tensor):
            raise plugin_fault(entry, f"is at fault: statistic() returned {type(statistic).__name__} {where}; it must "
                                      "return one tensor, batch first, that the tiles' shares add up to")
        whole = call_plugin(entry, "finish()", loss.finish, statistic, target)
    if not isinstance(whole, torch.Tensor) or whole.shape != value.shape or not torch.allclose(
            whole.float(), value.float(), rtol=1e-3, atol=1e-6 * float(value.abs().max()) + 1e-12):
        shown = [round(v, 6) for v in whole.flatten().tolist()] if isinstance(whole, torch.Tensor) else whole
        raise plugin_fault(entry, f"is at fault: it declares tiled = True, but finish(statistic(features, target, "
                                  f"whole image)) = {shown} where forward(features, target) = "
                                  f"{[round(v, 6) for v in value.tolist()]} {where}; make them agree, or set "
                                  "tiled = False")


class Pipeline:
    """A recipe built on ``device``. ``references`` (name -> image tensor) skips reading the
    task's reference images from disk (a Dask worker gets them sent). ``clips``: built for the
    frames of clips, with the temporal term (:meth:`Recipe.build`)."""

    def __init__(self, recipe: Recipe, device: str = "cpu", registry: Registry | None = None,
                 references: Mapping[str, torch.Tensor] | None = None, clips: bool = False):
        self.recipe = recipe
        self.synth = recipe.build(device, registry, clips)
        self.device = self.synth.device
        if references is None:
            references = load_references(recipe.references(registry))
        self.synth.task.check_references(references)
        self.synth.set_references(references)
        self.reference_shapes = {name: tuple(image.shape[-2:]) for name, image in references.items()
                                 if name in self.synth.reference_names}
        check_references(self.synth, self.reference_shapes, self.size)

    @classmethod
    def from_recipe(cls, recipe: str | Path, overrides: Overrides = (), device: str = "cpu",
                    registry: Registry | None = None) -> Pipeline:
        """A recipe file or a shipped recipe's name (``"starry_night"``), with ``overrides``
        (``["output.size=384"]`` as ``--set`` takes them, ``{"output.size": 384}`` or
        ``{"output": {"size": 384}}``), built on ``device``."""
        return cls(load_recipe(recipe, overrides, registry, flag="overrides"), device, registry)

    @property
    def size(self) -> int:
        """The long side inputs are resized to (``output.size``)."""
        return self.recipe.output["size"]

    def load(self, image: ImageLike) -> torch.Tensor:
        """An input as (1, 3, H, W) in [0, 1] at the output size: a PIL image, a path (or
        ``skimage:NAME``), or a tensor (3, H, W) or (1, 3, H, W) in [0, 1]. An image too small
        for the layers used (see :meth:`check_size`) is an :class:`~rvgen.errors.ImageError`."""
        if isinstance(image, Image.Image):
            return self.check_size(imageio.from_pil(image, self.size))
        if isinstance(image, torch.Tensor):
            return self.check_size(to_long_side(_as_batch(image).clamp(0, 1), self.size))
        return self.check_size(imageio.load_image(image, self.size))

    @property
    def min_side(self) -> int:
        """The shortest side in pixels an image needs (see :attr:`Synthesizer.min_side`)."""
        return self.synth.min_side

    def check_size(self, content: torch.Tensor) -> torch.Tensor:
        """``content`` (at the output size) if the network can see it: the input, the result's
        canvas and the references, at every level of the pyramid, must keep :attr:`min_side`
        pixels on each side; an :class:`~rvgen.errors.ImageError` naming the minimum if not."""
        canvas = tuple(self.synth.task.canvas(content))
        factor = self.synth.pyramid.levels(canvas, self.min_side)[0]  # the smallest level
        shapes = {"the image": tuple(content.shape[-2:]), "the result": canvas, **self.reference_shapes}
        for name, shape in shapes.items():
            small = scaled(shape, factor)
            if min(small) < self.min_side:
                level = f" at the pyramid's smallest level ({small[1]}x{small[0]} px)" if factor < 1 else ""
                what = {"the image": f"the image is {shape[1]}x{shape[0]} px at output.size {self.size}",
                        "the result": f"the result is {shape[1]}x{shape[0]} px"}.get(
                    name, f"the {name} image is {shape[1]}x{shape[0]} px")
                raise ImageError(
                    f"too small: {what}{level}; the layers "
                    f"used need at least {self.min_side} px on each side (a larger output.size or shallower "
                    "layers would fit)")
        return content

    def guides(self, rel: str, content: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The guides (masks) of the input named ``rel`` (relative to ``--input``; a file's name
        for a single image), given it loaded (:meth:`load`); ``None`` when the recipe uses
        none. A mask that is missing or cannot be read is an :class:`~rvgen.errors.ImageError`."""
        return self.synth.task.guides(rel, content) or None

    @staticmethod
    def alpha(image: ImageLike) -> Image.Image | None:
        """An input's alpha channel (mode ``L``, at its own size), or ``None`` when it is opaque
        or a tensor: results are written (``rvgen run``) or returned (:meth:`run`) with it."""
        if isinstance(image, Image.Image):
            return imageio.alpha_of(image)
        if isinstance(image, (str, Path)):
            return imageio.load_alpha(image)
        return None

    def batch_size(self, jobs: int) -> int:
        """Jobs to take at once (square inputs at the output size): the engine's one rule."""
        return self.synth.batch_size((self.size, self.size), jobs)

    def results(
        self,
        contents: Sequence[torch.Tensor],
        variations: Sequence[int] | None = None,
        callback: Callable[[int, Progress], None] | None = None,
        on_batch: Callable[[list[int]], None] | None = None,
        guides: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    ) -> Iterator[tuple[int, Result | RvgenError]]:
        """``(index, Result or the error that ended it)`` for each of ``contents`` (loaded
        with :meth:`load`; with ``guides``, each one's :meth:`guides`), as each batch
        finishes. A stop raised by ``callback`` propagates."""
        extra = {"guides": list(guides)} if guides is not None and any(g for g in guides) else {}
        return iter_with_fallback(self.synth, contents, variations, callback, on_batch=on_batch, **extra)

    def run(self, images: Sequence[ImageLike], callback: Callable[[int, Progress], None] | None = None, *,
            raise_errors: bool = False) -> list[Output | Failure]:
        """Every variation the recipe asks for of every image, in order (image by image, then
        variation). An image that cannot be read or made gives a :class:`Failure` in its
        places, saying why, and the others go on; with ``raise_errors`` the first image's
        :class:`~rvgen.errors.RvgenError` is raised instead, once every image is done."""
        count = self.recipe.variations
        places: list[Output | Failure | None] = []
        contents, variations, alphas, guides, slots = [], [], [], [], []
        for image in images:
            try:
                content, alpha = self.load(image), self.alpha(image)
                guide = self.guides(input_name(image), content)  # masks found by the file's name
            except RvgenError as exc:
                places += [Failure(exc, v) for v in range(count)]
                continue
            for v in range(count):
                slots.append(len(places))
                places.append(None)
                contents.append(content)
                variations.append(v)
                alphas.append(alpha)
                guides.append(guide)
        for index, outcome in self.results(contents, variations, callback, guides=guides):
            v = variations[index]
            places[slots[index]] = (Failure(outcome, v) if isinstance(outcome, RvgenError)
                                    else Output.of(outcome, v, alphas[index]))
        if raise_errors:
            for place in places:
                if isinstance(place, Failure):
                    raise place.error
        return places


def to_long_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] with its long side at ``long_side``, resized as a tensor by the
    engine's own resampling (no 8-bit rounding on the way)."""
    h, w = image.shape[-2:]
    width, height = imageio.fit_long_side((w, h), long_side)
    return resize(image, (height, width))


Painting = str | Path | Image.Image | torch.Tensor


def stylize(
    photo: ImageLike,
    painting: Painting | Sequence[str | Path] | None = None,
    *,
    recipe: str | Path = "starry_night",
    size: int | None = None,
    style_weight: float | None = None,
    content_weight: float | None = None,
    tv_weight: float | None = None,
    iterations: int | None = None,
    colors: str | None = None,
    init: str | None = None,
    seed: int | None = None,
    device: str = "cpu",
    overrides: Overrides = (),
    callback: Callable[[Progress], None] | None = None,
) -> Output:
    """``photo`` painted in the style of ``painting``, in one call: the path ``rvgen run`` takes.

    ``painting`` is a file, ``skimage:NAME``, a list of files (blended), a PIL image or a
    (3, H, W) / (1, 3, H, W) tensor in [0, 1]; None keeps the recipe's own painting.
    ``recipe`` (a shipped name or a file) gives every setting not named here; the keyword
    options set the common keys: ``size`` (``output.size``, the long side in pixels),
    ``style_weight``, ``content_weight``, ``tv_weight``, ``colors`` (``"style"``,
    ``"content"`` or ``"match"``), ``init`` (``"content"``, ``"noise"`` or a file) — all
    ``task.*`` — ``iterations`` (``optimizer.iterations``: at full size, after the coarser
    levels of the recipe's pyramid) and ``seed`` (``backbone.seed``: which random network).
    ``overrides`` sets any other key as :meth:`Pipeline.from_recipe` takes them; ``callback``
    is called with the engine's :class:`~rvgen.engine.Progress` as the optimisation goes.
    Raises the image's one-line :class:`~rvgen.errors.RvgenError` if it fails.
    """
    from rvgen.recipe import override_items

    keys: dict[str, Any] = dict(override_items(overrides, "overrides"))
    named = {"output.size": size, "task.style_weight": style_weight, "task.content_weight": content_weight,
             "task.tv_weight": tv_weight, "task.colors": colors, "task.init": init,
             "optimizer.iterations": iterations, "backbone.seed": seed}
    keys.update({key: value for key, value in named.items() if value is not None})
    progress = None if callback is None else (lambda _index, p: callback(p))
    with _painting_file(painting) as style:
        if style is not None:
            keys["task.style"] = style
        pipe = Pipeline.from_recipe(recipe, keys, device)
    (out,) = pipe.run([photo], progress, raise_errors=True)
    return out


@contextmanager
def _painting_file(painting: Painting | Sequence[str | Path] | None) -> Iterator[str | list[str] | None]:
    """``task.style`` for ``painting``: files as absolute paths; an image in memory written to a
    temporary PNG that lives while the pipeline reads it."""
    if painting is None or isinstance(painting, (str, Path)):
        yield None if painting is None else _style_path(painting)
    elif isinstance(painting, (Image.Image, torch.Tensor)):
        with tempfile.TemporaryDirectory(prefix="rvgen-") as folder:
            path = Path(folder) / "painting.png"
            image = painting if isinstance(painting, Image.Image) else imageio.to_pil(_as_batch(painting))
            image.save(path)
            yield str(path)
    else:
        yield [_style_path(p) for p in painting]


def _style_path(source: str | Path) -> str:
    return str(source) if imageio.is_sample(source) else str(Path(source).expanduser().resolve())


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    t = image.detach().float().cpu()
    t = t.unsqueeze(0) if t.dim() == 3 else t
    if t.dim() != 4 or t.shape[:2] != (1, 3):
        raise ImageError(f"expected a (3, H, W) or (1, 3, H, W) tensor, got {tuple(image.shape)}")
    return t
