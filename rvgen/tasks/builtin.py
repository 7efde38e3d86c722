"""Built-in tasks: reconstruct, texture and style."""

from __future__ import annotations

import torch

from rvgen.engine.objective import Term
from rvgen.hookspecs import hookimpl
from rvgen.params import REQUIRED, Param
from rvgen.tasks import Task, white_noise

SEED = Param("seed", int, 0, "seed of the starting noise (variation k uses seed + k)")
TV_WEIGHT = Param("tv_weight", float, 0.0, "weight of total variation on the pixels (smoothness)", minimum=0.0)
WEIGHTING = Param("weighting", str, "auto",
                  "how the style layers share their weight: auto (the paper's gradient rule), equal, or a table",
                  kind="weighting")


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

    def terms(self) -> list[Term]:
        layer = self.options["layer"] or self.default_layers["reconstruct"][0]
        return [Term("content", "content", (layer,))] + tv_term(self.options["tv_weight"])


class Texture(Task):
    """Synthesise a texture: from white noise, match the input's Gram matrices."""

    name = "texture"
    description = "from white noise, match Gram matrices of the input at several layers (texture synthesis)"
    params = (
        Param("layers", list, None, "layers whose Gram matrices are matched (default: the backbone's style layers)",
              kind="layers", nullable=True),
        WEIGHTING,
        Param("size", list, None, "result size, [width, height] or long side; default: the input's",
              kind="size", nullable=True),
        Param("variations", int, 1, "how many different samples to make per input", minimum=1),
        Param("loss", str, "gram", "the loss that compares statistics (a loss plugin's name)", kind="loss"),
        TV_WEIGHT,
        SEED,
    )

    def terms(self) -> list[Term]:
        layers = tuple(self.layers_option("layers", "style"))
        return [Term("texture", self.options["loss"], layers, 1.0, "input", self.options["weighting"])] + tv_term(
            self.options["tv_weight"]
        )

    def variations(self) -> int:
        return self.options["variations"]

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
    """Gatys style transfer: keep the input's content, take the style image's statistics."""

    name = "style"
    description = "content of the input, Gram statistics of a style image (Gatys et al.)"
    params = (
        Param("style", str, REQUIRED, "style image, relative to the recipe (or skimage:NAME)", kind="path"),
        Param("style_size", int, None, "long side of the style image in pixels (default: output.size)",
              minimum=8, nullable=True),
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
        Param("init", str, "content", "starting image", choices=("content", "noise")),
        TV_WEIGHT,
        SEED,
    )

    def references(self) -> dict[str, tuple[str, int | None]]:
        return {"style": (self.options["style"], self.options["style_size"])}

    def terms(self) -> list[Term]:
        o = self.options
        terms = [
            Term("content", "content", tuple(self.layers_option("content_layers", "content")), o["content_weight"]),
            Term("style", o["style_loss"], tuple(self.layers_option("style_layers", "style")), o["style_weight"],
                 "style", o["weighting"]),
        ]
        return [t for t in terms if t.weight > 0] + tv_term(o["tv_weight"])

    def init(self, content: torch.Tensor, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        if self.options["init"] == "content":
            return content.detach().cpu().clone()
        return white_noise(shape, generator)


@hookimpl
def register_tasks(register):
    register(Reconstruct)
    register(Texture)
    register(Style)
