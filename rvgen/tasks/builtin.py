"""Built-in tasks: reconstruct, texture and style."""

from __future__ import annotations

import math

import torch

from collections.abc import Mapping

from rvgen import imageio, metrics
from rvgen.engine.objective import Term
from rvgen.engine.pyramid import resize
from rvgen.errors import RecipeError
from rvgen.hookspecs import hookimpl
from rvgen.params import MAX_SIZE, REQUIRED, SEED_RANGE, Param, clip
from rvgen.tasks import Metric, Task, white_noise
from rvgen.tasks.colors import keep_colors, match_colors

MAX_VARIATIONS = 1000  # results per input a recipe may ask for

SEED = Param("seed", int, 0, "seed of the starting noise (variation k draws from seed + 7919 k)",
             minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
TV_WEIGHT = Param("tv_weight", float, 0.0, "weight of total variation on the pixels (smoothness)", minimum=0.0)
WEIGHTING = Param("weighting", str, "auto",
                  "how the style layers share their weight: auto (the paper's gradient rule), equal, or a table",
                  kind="weighting")


GRAM = Metric("gram", "Gram dist", False)
STRUCTURE = Metric("structure", "structure dist", False)
COLOUR = Metric("colour", "colour dist", False)


def statistics_scores(result: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """How far a texture or style's statistics are from ``target``'s (lower is closer): the
    Gram distance on an independent network, long-range structure and colour."""
    return {
        "gram": metrics.gram_distance(result, target),
        "structure": metrics.structure_distance(result, target),
        "colour": metrics.colour_distance(result, target),
    }


def tv_term(weight: float) -> list[Term]:
    return [Term("tv", "tv", ("pixels",), weight, target=None)] if weight > 0 else []


class Reconstruct(Task):
    """Invert one layer: from white noise, match the input's feature maps there."""

    name = "reconstruct"
    description = "from white noise, match one layer's feature maps of the input (what the layer keeps)"
    params = (
        Param("layer", str, None, "layer to invert (default: the backbone's, relu3_1 for VGG)",
              kind="layer", nullable=True),
        TV_WEIGHT,
        SEED,
    )
    metrics = (Metric("psnr", "PSNR dB", True, 2), Metric("ssim", "SSIM", True))
    layer_option = "layer"

    def terms(self) -> list[Term]:
        layer = self.options["layer"] or self.default_layers["reconstruct"][0]
        return [Term("content", "content", (layer,))] + tv_term(self.options["tv_weight"])

    def score(self, result: torch.Tensor, content: torch.Tensor,
              references: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return {"psnr": metrics.psnr(result, content), "ssim": metrics.ssim(result, content)}


class Texture(Task):
    """Synthesise a texture: from white noise, match the input's Gram matrices."""

    name = "texture"
    description = "from white noise, match Gram matrices of the input at several layers (texture synthesis)"
    params = (
        Param("layers", list, None, "layers whose Gram matrices are matched (default: the backbone's style layers)",
              kind="layers", nullable=True),
        WEIGHTING,
        Param("size", list, None, "result size, [width, height] or long side; default: the input's",
              kind="size", minimum=8, maximum=MAX_SIZE, nullable=True),
        Param("variations", int, 1, "how many different samples to make per input", minimum=1,
              maximum=MAX_VARIATIONS),
        Param("loss", str, "gram", "the loss that compares statistics (a loss plugin's name)", kind="loss"),
        TV_WEIGHT,
        SEED,
    )

    def terms(self) -> list[Term]:
        layers = tuple(self.layers_option("layers", "style"))
        return [Term("texture", self.options["loss"], layers, 1.0, "input", self.options["weighting"])] + tv_term(
            self.options["tv_weight"]
        )

    metrics = (GRAM, STRUCTURE, COLOUR)

    def variations(self) -> int:
        return self.options["variations"]

    def score(self, result: torch.Tensor, content: torch.Tensor,
              references: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return statistics_scores(result, content)

    def canvas(self, content: torch.Tensor) -> tuple[int, int]:
        size = self.options["size"]
        h, w = content.shape[-2:]
        if size is None:
            return h, w
        if isinstance(size, int):
            scale = size / max(h, w)
            return max(1, round(h * scale)), max(1, round(w * scale))
        return size[1], size[0]


class Style(Task):
    """Gatys style transfer: keep the input's content, take the style image's statistics.

    Several style images (a list, or a folder) blend into one style term: its target at each
    layer is the mean of the images' normalised Gram matrices, weighted by ``style_weights``
    (for a squared distance, the sum of the distances to each image is, up to a constant,
    the distance to their mean), so a folder costs about one image and is weighted once. A
    style loss that is not ``blendable`` gets one term per image instead, each with its
    share of ``style_weight``. The images are named ``style``, ``style2``, ... as references."""

    name = "style"
    description = "content of the input, Gram statistics of a style image (Gatys et al.)"
    params = (
        Param("style", str, REQUIRED, "style image, relative to the recipe (or skimage:NAME); a list of images, "
              "or a folder for all its images, blends them", kind="images"),
        Param("style_weights", list, None, "blend weights of the style images, one per image (default: equal); "
              "normalised to sum to 1", nullable=True, digest_neutral=True),
        Param("style_size", int, None, "long side of the style image in pixels (default: output.size); "
              "wins over style_scale", minimum=8, maximum=MAX_SIZE, nullable=True),
        Param("style_scale", float, 1.0, "long side of the style image relative to output.size, when style_size "
              "is not set", minimum=0.01, maximum=16.0, digest_neutral=True),
        Param("content_layers", list, None, "layers whose features keep the content (default: relu2_1 and relu4_2 for VGG)",
              kind="layers", nullable=True),
        Param("style_layers", list, None, "layers whose Gram matrices carry the style (default: relu1_1..relu5_1)",
              kind="layers", nullable=True),
        Param("content_weight", float, 1.0, "weight of the content term", minimum=0.0),
        Param("style_weight", float, 20.0, "weight of the style term (20: the painting's strokes and colours "
              "across the picture; 5 left the photo with a fine texture over it)", minimum=0.0),
        WEIGHTING,
        Param("style_loss", str, "gram", "the loss that compares style statistics (a loss plugin's name)",
              kind="loss"),
        Param("colors", str, "style", "style: the style's colours; content: keep the photo's (the result's "
              "luminance with the photo's chroma, YCbCr); match: the style image's colour mean and covariance "
              "moved to the photo's before optimising", choices=("style", "content", "match"),
              digest_neutral=True),
        Param("init", str, "content", "starting image: content, noise, or an image file (stretched to the "
              "result's size)", choices=("content", "noise"), kind="path"),
        TV_WEIGHT,
        SEED,
    )

    metrics = (GRAM, STRUCTURE, COLOUR, Metric("content_ssim", "content SSIM", True))

    def __init__(self, options, default_layers):
        super().__init__(options, default_layers)
        self._init_image: torch.Tensor | None = None

    def styles(self) -> list[tuple[str, str, float]]:
        """(reference name, source, blend weight) of every style image, weights summing to 1."""
        style = self.options["style"]
        sources = [style] if isinstance(style, str) else list(style)
        weights = self.options.get("style_weights")
        if weights is None:
            weights = [1.0] * len(sources)
        if len(weights) != len(sources):
            raise RecipeError(f"task.style_weights: {len(weights)} weights for {len(sources)} style images")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                   for w in weights):
            raise RecipeError(f"task.style_weights: expected finite numbers >= 0, got {clip(repr(weights))}")
        total = float(sum(weights))
        if total <= 0:
            raise RecipeError("task.style_weights: at least one weight must be above 0")
        names = ["style"] + [f"style{k + 1}" for k in range(1, len(sources))]
        return [(name, src, w / total) for name, src, w in zip(names, sources, weights)]

    def references(self) -> dict[str, tuple[str, int | float | None]]:
        o = self.options
        scale = o.get("style_scale", 1.0)
        long_side = o["style_size"] if o["style_size"] is not None else (scale if scale != 1.0 else None)
        refs = {name: (source, long_side) for name, source, _ in self.styles()}
        if o["init"] not in ("content", "noise"):
            refs["init"] = (o["init"], None)  # so its hash is in the sidecar and a changed file redoes the image
        return refs

    def adapted_references(self) -> frozenset[str]:
        if self.options.get("colors") == "match":
            return frozenset(name for name, _, _ in self.styles())
        return frozenset()

    def prepare_reference(self, name: str, image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return match_colors(image, content)

    def finish(self, result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        if self.options.get("colors") == "content":
            return keep_colors(result, content)
        return result

    def score(self, result: torch.Tensor, content: torch.Tensor,
              references: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Scored against the style image of the largest blend weight (the first of equals)."""
        name = max(self.styles(), key=lambda s: s[2])[0]
        return {**statistics_scores(result, references[name]), "content_ssim": metrics.ssim(result, content)}

    def terms(self) -> list[Term]:
        o = self.options
        style_layers = tuple(self.layers_option("style_layers", "style"))
        terms = [Term("content", "content", tuple(self.layers_option("content_layers", "content")), o["content_weight"])]
        styles = self.styles()
        blend = tuple((name, share) for name, _, share in styles) if len(styles) > 1 else ()
        terms.append(Term("style", o["style_loss"], style_layers, o["style_weight"], styles[0][0], o["weighting"],
                          blend))
        return [t for t in terms if t.weight > 0] + tv_term(o["tv_weight"])

    def init(self, content: torch.Tensor, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        mode = self.options["init"]
        if mode == "content":
            return content.detach().cpu().clone()
        if mode == "noise":
            return white_noise(shape, generator)
        if self._init_image is None:  # read once, resized to each level's canvas
            self._init_image = imageio.load_image(mode)
        return resize(self._init_image, tuple(shape))


@hookimpl
def register_tasks(register):
    register(Reconstruct)
    register(Texture)
    register(Style)
