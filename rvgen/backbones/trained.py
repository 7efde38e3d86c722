"""trained-vgg19: the ranVGG architecture with torchvision's ImageNet weights, the paper's baseline.

The layers and their names are random-vgg19's, so the two compare layer for layer. The
weights are torchvision's ``vgg19`` checkpoint (``vgg19-dcbb9e9d.pth``), read from the path
the recipe gives or from torch hub's cache, where ``torchvision.models.vgg19(weights=
"IMAGENET1K_V1")`` puts it. rvgen never downloads during a run: a missing file is an error
that says where to put it and how to get it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from rvgen.backbones.vgg import POOLING, VGGFeatures
from rvgen.errors import RecipeError
from rvgen.hookspecs import hookimpl
from rvgen.params import Param

WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"


def default_weights_path() -> Path:
    """Where torchvision caches its vgg19 weights: ``torch.hub.get_dir()/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def weights_path(options: Mapping[str, Any]) -> Path:
    return Path(options["weights"]) if options.get("weights") else default_weights_path()


def check_weights_file(path: Path) -> None:
    """One line saying where to put the weights and how to get them, if they are not there."""
    if not path.is_file():
        raise RecipeError(
            f"backbone trained-vgg19: weights not found at {path}; download {WEIGHTS_URL} to that path "
            "(or run python -c \"import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')\" "
            "where there is network), or set backbone.weights to the file"
        )


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """A checkpoint's tensors, or one line saying why the file is not a vgg19 state dict."""
    check_weights_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"backbone trained-vgg19: {path} is not a PyTorch weights file ({reason[:160]})") from None
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise RecipeError(f"backbone trained-vgg19: {path} holds no state dict of tensors (expected torchvision's "
                          f"vgg19 weights, {WEIGHTS_FILE})")
    return data


class TrainedVGG19(VGGFeatures):
    name = "trained-vgg19"
    description = "VGG-19 with torchvision's ImageNet weights (the paper's baseline); same layers as random-vgg19"
    cfg_key = "E"
    params = (
        Param("weights", str, None, f"torchvision's vgg19 checkpoint ({WEIGHTS_FILE}); default: torch hub's cache, "
              f"{{torch.hub.get_dir()}}/checkpoints/{WEIGHTS_FILE}", kind="path", nullable=True),
        POOLING,
    )

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        check_weights_file(weights_path(options))

    def __init__(self, options: Mapping[str, Any], layers: Iterable[str]):
        super().__init__({**options, "normalize": "imagenet"}, layers)
        path = weights_path(options)
        state = read_state_dict(path)
        with torch.no_grad():
            for index, conv in self.convs():
                for part in ("weight", "bias"):
                    key = f"features.{index}.{part}"
                    value = state.get(key)
                    if value is None:
                        raise RecipeError(f"backbone trained-vgg19: {path} has no {key}; expected torchvision's "
                                          f"vgg19 weights ({WEIGHTS_FILE})")
                    target = getattr(conv, part)
                    if tuple(value.shape) != tuple(target.shape):
                        raise RecipeError(
                            f"backbone trained-vgg19: {path}: {key} has shape {tuple(value.shape)}, vgg19 needs "
                            f"{tuple(target.shape)}; expected torchvision's vgg19 weights ({WEIGHTS_FILE})"
                        )
                    target.copy_(value.float())


@hookimpl
def register_backbones(register):
    register(TrainedVGG19)
