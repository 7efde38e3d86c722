"""The one path from a recipe and images to results, and rvgen's Python API.

A :class:`Pipeline` is a recipe built on one device: the task, the backbone, the losses and
the reference images' targets (the style's Grams), made once. :meth:`Pipeline.results` runs
any number of images through the engine in batches (the batch-size rule of
:meth:`rvgen.engine.Synthesizer.batch_size`, with the out-of-memory fallback); ``rvgen
run``'s workers and ``rvgen compare`` both go through it. From Python::

    from rvgen import Pipeline

    pipe = Pipeline.from_recipe("recipes/starry_night.toml", ["output.size=128"])
    (out,) = pipe.run([PIL.Image.open("photo.jpg")])  # an RGBA input gives an RGBA out.image
    out.image.save("painted.png"); print(out.loss, out.parts)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rvgen import imageio
from rvgen.engine import Progress, Result, iter_with_fallback
from rvgen.engine.pyramid import scaled
from rvgen.errors import ImageError, RecipeError, RvgenError
from rvgen.plugins import Registry
from rvgen.recipe import Recipe, load_recipe

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

    @classmethod
    def of(cls, result: Result, variation: int = 0, alpha: Image.Image | None = None) -> Output:
        """``alpha`` (the input's transparency, mode ``L``) makes ``image`` RGBA; ``tensor`` stays RGB."""
        tensor = result.image.detach().float().cpu()
        image = imageio.to_pil(tensor)
        if alpha is not None:
            image.putalpha(alpha.resize(image.size, Image.Resampling.LANCZOS) if alpha.size != image.size else alpha)
        return cls(image, tensor, result.loss, result.initial_loss, dict(result.parts),
                   result.iterations, result.seconds, list(result.history), variation)


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
    image opens and keeps enough pixels at every level (:func:`check_references`), and
    ``optimizer.tile_size`` is a multiple of the stride of the deepest layer used (tiles
    start on that grid). A recipe that needs neither builds no network here."""
    references = load_references(recipe.references(registry))
    recipe.build_task(registry).check_references(references)
    tile = recipe.execution.tile_size
    if not references and tile is None:
        return
    synth = recipe.build("cpu", registry)
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


class Pipeline:
    """A recipe built on ``device``. ``references`` (name -> image tensor) skips reading the
    task's reference images from disk (a Dask worker gets them sent)."""

    def __init__(self, recipe: Recipe, device: str = "cpu", registry: Registry | None = None,
                 references: Mapping[str, torch.Tensor] | None = None):
        self.recipe = recipe
        self.synth = recipe.build(device, registry)
        self.device = self.synth.device
        if references is None:
            references = load_references(recipe.references(registry))
        self.synth.task.check_references(references)
        self.synth.set_references(references)
        self.reference_shapes = {name: tuple(image.shape[-2:]) for name, image in references.items()
                                 if name in self.synth.reference_names}
        check_references(self.synth, self.reference_shapes, self.size)

    @classmethod
    def from_recipe(cls, recipe: str | Path, overrides: Sequence[str] = (), device: str = "cpu",
                    registry: Registry | None = None) -> Pipeline:
        """Load a recipe file with ``KEY=VALUE`` overrides (as ``--set``) and build it."""
        return cls(load_recipe(recipe, overrides, registry), device, registry)

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
            t = image.detach().float().cpu()
            t = t.unsqueeze(0) if t.dim() == 3 else t
            if t.dim() != 4 or t.shape[:2] != (1, 3):
                raise ImageError(f"expected a (3, H, W) or (1, 3, H, W) tensor, got {tuple(image.shape)}")
            return self.check_size(imageio.from_pil(imageio.to_pil(t), self.size) if max(t.shape[-2:]) != self.size
                                   else t)
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

    def run(self, images: Sequence[ImageLike], callback: Callable[[int, Progress], None] | None = None) -> list[Output]:
        """Every variation the recipe asks for of every image, in order (image by image, then
        variation). Raises the first image's :class:`~rvgen.errors.RvgenError`, if one fails."""
        contents = [self.load(image) for image in images]
        guides = [self.guides(input_name(image), content) for image, content in zip(images, contents)]
        count = self.recipe.variations
        expanded = [c for c in contents for _ in range(count)]
        variations = [v for _ in contents for v in range(count)]
        alphas = [self.alpha(image) for image in images for _ in range(count)]
        outputs: list[Any] = [None] * len(expanded)
        for index, outcome in self.results(expanded, variations, callback,
                                           guides=[g for g in guides for _ in range(count)]):
            outputs[index] = outcome
        for outcome in outputs:
            if isinstance(outcome, RvgenError):
                raise outcome
        return [Output.of(result, variation, alpha) for result, variation, alpha in zip(outputs, variations, alphas)]
