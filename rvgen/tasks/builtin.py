"""Built-in tasks: reconstruct, texture and style."""

from __future__ import annotations

import math

import torch

from collections.abc import Mapping

from rvgen import imageio, metrics
from rvgen.engine.guides import MODES, composite, feather
from rvgen.engine.objective import Term
from rvgen.engine.pyramid import resize
from rvgen.errors import RecipeError
from rvgen.hookspecs import hookimpl
from rvgen.params import MAX_SIZE, REQUIRED, SEED_RANGE, Param, clip
from rvgen.tasks import Metric, Task, masks, white_noise
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


MASK = Param("mask", str, None, "a grey mask per input, white where the style goes and black where the photo is "
             "kept: a path pattern with {stem} (the input's name without extension) and {relpath} (its folder "
             "under --input), relative to where rvgen runs, e.g. \"masks/{stem}.png\"", kind="pattern",
             nullable=True, digest_neutral=True)
MASK_RULE = Param("mask_rule", str, None, "a mask made from each photo by a rule instead of a file: thresholds on "
                  "luminance, saturation, value (0 to 1) and hue (degrees), e.g. \"luminance > 0.6\" or \"hue in "
                  "90..150 and saturation > 0.3\" (and, or, not, parentheses); thresholds, not segmentation",
                  nullable=True, digest_neutral=True)
MASK_MISSING = Param("mask_missing", str, "fail", "an input without its mask file: fail (that image fails, with "
                     "one line; the others go on) or whole (it is styled whole)", choices=("fail", "whole"),
                     digest_neutral=True)
MASK_PROPAGATION = Param("mask_propagation", str, "resize", "how a mask reaches each layer: resize (its mean over "
                         "each position's cell), inside (positions whose receptive field lies inside it) or all "
                         "(positions whose receptive field touches it; inside and all need a backbone that declares its geometry, the "
                         "VGGs: others resize)", choices=MODES, digest_neutral=True)


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
        MASK,
        MASK_RULE,
        MASK_MISSING,
        MASK_PROPAGATION,
        TV_WEIGHT,
        SEED,
    )

    def __init__(self, options, default_layers):
        super().__init__(options, default_layers)
        self._rule = _single_mask_rule(self.options)
        self.guide_mode = self.options.get("mask_propagation", "resize")

    @property
    def masked(self) -> bool:
        """Whether the texture is taken from a part of each input only (``mask``, ``mask_rule``)."""
        return bool(self.options.get("mask") or self.options.get("mask_rule"))

    def terms(self) -> list[Term]:
        layers = tuple(self.layers_option("layers", "style"))
        guide = "mask" if self.masked else None
        return [Term("texture", self.options["loss"], layers, 1.0, "input", self.options["weighting"],
                     target_guide=guide)] + tv_term(self.options["tv_weight"])

    def guides(self, rel: str, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """The texture is taken from the input under its mask (the canvas is all texture)."""
        if not self.masked:
            return {}
        m = masks.input_mask(self.options.get("mask"), self._rule, rel, content, "task.mask",
                             self.options["mask_missing"])
        if m is None or float(m.amax()) <= 0:
            if m is not None:
                raise RecipeError("task.mask: this input's mask is all black, so there is no texture to take")
            m = torch.ones_like(content[:, :1])
        return {"mask": m}

    def guide_patterns(self) -> dict[str, str]:
        return {"mask": self.options["mask"]} if self.options.get("mask") else {}

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


REGION_PARAMS = (
    Param("mask", str, None, "the region's mask per input, a path pattern as task.mask", kind="pattern", nullable=True),
    Param("color", str, None, "the region's colour in task.labels, as \"#rrggbb\"", nullable=True),
    Param("rule", str, None, "the region from a rule on the photo, as task.mask_rule", nullable=True),
    Param("style", str, REQUIRED, "the region's style image, a list, or a folder (as task.style)", kind="images"),
    Param("style_mask", str, None, "a grey mask on the style image: the region takes the painting's statistics "
          "there only (default: the whole painting)", kind="path", nullable=True),
    Param("style_weight", float, None, "weight of the region's style term (default: task.style_weight)",
          minimum=0.0, nullable=True),
)


def _single_mask_rule(options: Mapping) -> masks.Rule | None:
    """The parsed ``mask_rule`` (None without one); a recipe error when ``mask`` is set too."""
    if options.get("mask") and options.get("mask_rule"):
        raise RecipeError("task.mask_rule: give either mask (files) or mask_rule, not both")
    rule = options.get("mask_rule")
    return masks.parse_rule(rule, "task.mask_rule") if rule else None


class Style(Task):
    """Gatys style transfer: keep the input's content, take the style image's statistics.

    Several style images (a list, or a folder) blend into one style term: its target at each
    layer is the mean of the images' normalised Gram matrices, weighted by ``style_weights``
    (for a squared distance, the sum of the distances to each image is, up to a constant,
    the distance to their mean), so a folder costs about one image and is weighted once. A
    style loss that is not ``blendable`` gets one term per image instead, each with its
    share of ``style_weight``. The images are named ``style``, ``style2``, ... as references.

    With a mask (``mask``, a file per input; ``mask_rule``, a rule on the photo) the style
    term compares guided Gram matrices under it (:mod:`rvgen.engine.guides`) and
    :meth:`finish` puts the photo back where the mask is black, through the mask feathered
    by ``feather`` pixels. With ``regions`` each region is a style term of its own, guided by
    its mask, against its own painting (``region1``, ``region1_2``, ... as references; its
    ``style_mask`` is ``region1_mask``); ``style``, if set, styles what no region covers."""

    name = "style"
    description = "content of the input, Gram statistics of a style image (Gatys et al.)"
    params = (
        Param("style", str, None, "style image, relative to the recipe (or skimage:NAME); a list of images, "
              "or a folder for all its images, blends them; required unless regions are given (then it styles "
              "what no region covers)", kind="images", nullable=True),
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
        MASK,
        MASK_RULE,
        Param("regions", list, None, "regions of each input, each with its own style: [[task.regions]] tables "
              "(keys below); pixels no region covers get task.style if it is set, else stay the photo",
              kind="tables", nullable=True, digest_neutral=True, fields=REGION_PARAMS),
        Param("labels", str, None, "one label image per input whose colours are the regions (a region's color), "
              "a path pattern as mask", kind="pattern", nullable=True, digest_neutral=True),
        MASK_MISSING,
        MASK_PROPAGATION,
        Param("feather", float, 3.0, "pixels over which the styled part fades into the kept photo at a mask's edge",
              minimum=0.0, maximum=64.0, digest_neutral=True),
        TV_WEIGHT,
        SEED,
    )

    metrics = (GRAM, STRUCTURE, COLOUR, Metric("content_ssim", "content SSIM", True))

    def __init__(self, options, default_layers):
        super().__init__(options, default_layers)
        self._init_image: torch.Tensor | None = None
        o = self.options
        self._rule = _single_mask_rule(o)
        self.regions: list[dict] = list(o.get("regions") or [])
        self.guide_mode = o.get("mask_propagation", "resize")
        if o.get("style") is None and not self.regions:
            raise RecipeError("task.style: required (the style image, a list of them or a folder), unless "
                              "task.regions give each region its own")
        if self.regions and (o.get("mask") or o.get("mask_rule")):
            raise RecipeError("task.regions: give either regions or a mask (mask, mask_rule), not both")
        self._region_rules: dict[int, masks.Rule] = {}
        self._region_colours: dict[int, tuple[int, int, int]] = {}
        for k, region in enumerate(self.regions):
            where = f"task.regions[{k}]"
            given = [key for key in ("mask", "color", "rule") if region.get(key)]
            if len(given) != 1:
                raise RecipeError(f"{where}: give one of mask (a file pattern), color (in task.labels) or rule, "
                                  f"got {', '.join(given) or 'none'}")
            if region.get("rule"):
                self._region_rules[k] = masks.parse_rule(region["rule"], f"{where}.rule")
            if region.get("color"):
                if not o.get("labels"):
                    raise RecipeError(f"{where}.color: needs task.labels, the label image per input with that colour")
                self._region_colours[k] = masks.parse_colour(region["color"], f"{where}.color")
            if region.get("style_mask") and not isinstance(region["style"], str):
                raise RecipeError(f"{where}.style_mask: a painting's mask needs one style image, not a list or folder")
        if o.get("labels") and not self._region_colours:
            raise RecipeError("task.labels: no region of task.regions names a color of it")

    @property
    def masked(self) -> bool:
        """Whether each input has guides: a mask (file or rule) or regions."""
        o = self.options
        return bool(o.get("mask") or o.get("mask_rule") or self.regions)

    def styles(self) -> list[tuple[str, str, float]]:
        """(reference name, source, blend weight) of every image of ``task.style``, weights
        summing to 1; empty when regions alone give the styles."""
        if self.options.get("style") is None:
            return []
        return _blend(self.options["style"], self.options.get("style_weights"), "style")

    def region_styles(self, k: int) -> list[tuple[str, str, float]]:
        """:meth:`styles` of region ``k`` (from 0): references ``region1``, ``region1_2``, ..."""
        return _blend(self.regions[k]["style"], None, f"region{k + 1}")

    def _all_styles(self) -> list[tuple[str, str, float]]:
        return self.styles() + [s for k in range(len(self.regions)) for s in self.region_styles(k)]

    def references(self) -> dict[str, tuple[str, int | float | None]]:
        o = self.options
        scale = o.get("style_scale", 1.0)
        long_side = o["style_size"] if o["style_size"] is not None else (scale if scale != 1.0 else None)
        refs = {name: (source, long_side) for name, source, _ in self._all_styles()}
        for k, region in enumerate(self.regions):
            if region.get("style_mask"):  # at the painting's size: it is laid over the painting
                refs[f"region{k + 1}_mask"] = (region["style_mask"], long_side)
        if o["init"] not in ("content", "noise"):
            refs["init"] = (o["init"], None)  # so its hash is in the sidecar and a changed file redoes the image
        return refs

    def adapted_references(self) -> frozenset[str]:
        if self.options.get("colors") == "match":
            return frozenset(name for name, _, _ in self._all_styles())
        return frozenset()

    def prepare_reference(self, name: str, image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return match_colors(image, content)

    def check_references(self, images: Mapping[str, torch.Tensor]) -> None:
        for k, region in enumerate(self.regions):
            name = f"region{k + 1}_mask"
            if name in images:
                masks.check_not_black(masks.grey(images[name]), f"task.regions[{k}].style_mask")

    def guides(self, rel: str, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """``mask`` (or ``region1``, ``region2``, ...; ``rest``, what no region covers, when
        ``task.style`` styles it) for the style terms, and ``styled``: where the result is
        kept, feathered, for :meth:`finish` (absent when all of it is styled)."""
        if not self.masked:
            return {}
        o = self.options
        shape = tuple(content.shape[-2:])
        radius = o.get("feather", 0.0)
        if not self.regions:
            m = masks.input_mask(o.get("mask"), self._rule, rel, content, "task.mask", o["mask_missing"])
            m = torch.ones(1, 1, *shape) if m is None else m
            return {"mask": m, "styled": feather(m, radius)}
        labels = None
        if self._region_colours:
            labels = masks.read(masks.mask_path(o["labels"], rel), "label image")
        out = {}
        for k, region in enumerate(self.regions):
            where = f"task.regions[{k}]"
            if k in self._region_colours:
                m = masks.resize_to(masks.label_mask(labels, self._region_colours[k]), shape)
            else:
                m = masks.input_mask(region.get("mask"), self._region_rules.get(k), rel, content, f"{where}.mask",
                                     o["mask_missing"])
                m = torch.zeros(1, 1, *shape) if m is None else m  # missing, mask_missing = "whole": left out
            out[f"region{k + 1}"] = m
        union = torch.stack(list(out.values())).sum(0).clamp(0, 1)
        if self.styles():
            out["rest"] = 1 - union
        else:
            out["styled"] = feather(union, radius)
        return out

    def guide_patterns(self) -> dict[str, str]:
        o = self.options
        files = {"mask": o["mask"]} if o.get("mask") else {}
        if self._region_colours:
            files["labels"] = o["labels"]
        files.update({f"region{k + 1}": region["mask"] for k, region in enumerate(self.regions) if region.get("mask")})
        return files

    def finish(self, result: torch.Tensor, content: torch.Tensor,
               guides: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        if self.options.get("colors") == "content":
            result = keep_colors(result, content)
        if guides and "styled" in guides:  # the kept part is the photo, fading in over the feathered edge
            result = composite(result, content, guides["styled"])
        return result

    def score(self, result: torch.Tensor, content: torch.Tensor,
              references: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Scored against the style image of the largest blend weight (the first of equals), or
        with regions alone, the first region's."""
        name = max(self.styles() or self.region_styles(0), key=lambda s: s[2])[0]
        return {**statistics_scores(result, references[name]), "content_ssim": metrics.ssim(result, content)}

    def terms(self) -> list[Term]:
        o = self.options
        style_layers = tuple(self.layers_option("style_layers", "style"))
        terms = [Term("content", "content", tuple(self.layers_option("content_layers", "content")), o["content_weight"])]
        parts = []  # (styles, weight, guide, target guide)
        if self.styles():
            guide = "rest" if self.regions else "mask" if self.masked else None
            parts.append((self.styles(), o["style_weight"], guide, None))
        for k, region in enumerate(self.regions):
            weight = o["style_weight"] if region.get("style_weight") is None else region["style_weight"]
            parts.append((self.region_styles(k), weight, f"region{k + 1}",
                          f"region{k + 1}_mask" if region.get("style_mask") else None))
        for styles, weight, guide, target_guide in parts:
            blend = tuple((name, share) for name, _, share in styles) if len(styles) > 1 else ()
            terms.append(Term("style", o["style_loss"], style_layers, weight, styles[0][0], o["weighting"], blend,
                              guide, target_guide))
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


def _blend(style: str | list[str], weights: list | None, first: str) -> list[tuple[str, str, float]]:
    """(reference name, source, blend weight) of each image of a style value, weights summing to
    1; the names are ``first``, then ``first2``... for ``style`` (as before regions), else
    ``first_2``..."""
    sources = [style] if isinstance(style, str) else list(style)
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
    sep = "" if first == "style" else "_"
    names = [first] + [f"{first}{sep}{k + 1}" for k in range(1, len(sources))]
    return [(name, src, w / total) for name, src, w in zip(names, sources, weights)]


@hookimpl
def register_tasks(register):
    register(Reconstruct)
    register(Texture)
    register(Style)
