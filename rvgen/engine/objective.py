"""An objective: weighted loss terms over a backbone's named layers.

A :class:`Term` says which loss compares which layers with which reference image, and how
its layers are weighted. :class:`Objective` runs the backbone once per evaluation for all
layers of all terms, and holds the target statistics so they are computed once per
reference image (the style image's Grams once per run, the input's once per image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rvgen.backbones import Backbone
from rvgen.losses import Loss


@dataclass(frozen=True)
class Term:
    """One summand of the objective.

    ``target`` names the reference image the loss compares against (``"input"``, a task's
    reference such as ``"style"``) or is ``None`` for losses without a target (``tv``).
    ``weighting`` spreads ``weight`` over the layers: ``"equal"``, ``"auto"`` (the paper's
    rule, see :meth:`Objective.auto_weight`) or explicit weights per layer.
    """

    name: str
    loss: str
    layers: tuple[str, ...]
    weight: float = 1.0
    target: str | None = "input"
    weighting: str | Mapping[str, float] = "equal"


class Objective(nn.Module):
    def __init__(self, backbone: Backbone, terms: Sequence[Term], losses: Sequence[Loss]):
        super().__init__()
        if len(terms) != len(losses):
            raise ValueError("one loss module per term")
        self.backbone = backbone
        self.terms = list(terms)
        self.losses = nn.ModuleList(losses)
        self.layers = sorted({layer for t in self.terms for layer in t.layers})
        self.targets: dict[tuple[int, str], Any] = {}
        self.layer_weights: list[dict[str, float]] = [self._static_weights(t) for t in self.terms]

    @staticmethod
    def _static_weights(term: Term) -> dict[str, float]:
        if isinstance(term.weighting, Mapping):
            return {layer: float(term.weighting[layer]) for layer in term.layers}
        return {layer: 1.0 / len(term.layers) for layer in term.layers}

    @property
    def target_names(self) -> set[str]:
        return {t.target for t in self.terms if t.target is not None}

    @torch.no_grad()
    def set_targets(self, images: Mapping[str, torch.Tensor]) -> None:
        """Compute the target statistics of every term that compares with one of ``images``."""
        for name, image in images.items():
            idx = [i for i, t in enumerate(self.terms) if t.target == name]
            if not idx:
                continue
            feats = self.backbone(image, {layer for i in idx for layer in self.terms[i].layers})
            for i in idx:
                for layer in self.terms[i].layers:
                    self.targets[(i, layer)] = self.losses[i].prepare(feats[layer])

    def layer_losses(self, x: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
        """Every term's loss at every one of its layers, each of shape (B,)."""
        feats = self.backbone(x, self.layers)
        out = {}
        for i, term in enumerate(self.terms):
            for layer in term.layers:
                target = self.targets[(i, layer)] if term.target is not None else None
                out[(i, layer)] = self.losses[i](feats[layer], target)
        return out

    def combine(self, per_layer: Mapping[tuple[int, str], torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        for i, term in enumerate(self.terms):
            weights = self.layer_weights[i]
            value = sum(weights[layer] * per_layer[(i, layer)] for layer in term.layers)
            parts[term.name] = parts.get(term.name, 0) + term.weight * value
        total = sum(parts.values())
        return total, parts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss per image (B,) and each term's weighted share of it."""
        return self.combine(self.layer_losses(x))

    def reset_weights(self) -> None:
        self.layer_weights = [self._static_weights(t) for t in self.terms]

    def auto_weight(self, x0: torch.Tensor) -> None:
        """The paper's automatic layer weighting, for every term with ``weighting = "auto"``.

        Each layer's weight is inversely proportional to the norm of the gradient of that
        layer's loss with respect to the starting image, so every layer pulls on the pixels
        equally hard at the start; the weights of a term sum to 1. Computed once, before
        optimising. Because the losses are scale-free, so are the weights: networks whose
        layers differ only by a constant factor (a different init scale) get the same ones.
        """
        auto = [i for i, t in enumerate(self.terms) if t.weighting == "auto"]
        if not auto:
            return
        x = x0.detach().clone().requires_grad_(True)
        per_layer = self.layer_losses(x)
        for i in auto:
            layers = self.terms[i].layers
            norms = []
            for layer in layers:
                (grad,) = torch.autograd.grad(per_layer[(i, layer)].sum(), x, retain_graph=True)
                norms.append(float(grad.float().norm()))
            usable = [g for g in norms if math.isfinite(g) and g > 0]
            if not usable:  # nothing pulls: leave the term equally weighted
                continue
            # A layer already at its optimum (zero gradient) gets the median pull.
            median = sorted(usable)[len(usable) // 2]
            inverse = [1.0 / (g if math.isfinite(g) and g > 0 else median) for g in norms]
            total = sum(inverse)
            self.layer_weights[i] = {layer: w / total for layer, w in zip(layers, inverse)}
