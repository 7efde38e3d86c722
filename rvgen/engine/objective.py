"""An objective: weighted loss terms over a backbone's named layers.

A :class:`Term` says which loss compares which layers with which reference image, and how
its layers are weighted. :class:`Objective` runs the backbone once per evaluation for all
layers of all terms and all images of a batch, and holds the target statistics so they are
computed once per reference image (the style image's Grams once per run, the inputs' once
per batch).

Everything is per image: a batch of B images gives B losses, B sets of automatic layer
weights and B independent gradients, so an image's result does not depend on which images
share its batch. The backbone may run in reduced precision (``autocast``, see
:mod:`rvgen.engine.precision`); losses always see float32 features.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn



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


class PerImage(tuple):
    """Targets of a loss that is not ``batched``: one prepared target per image."""


class Objective(nn.Module):
    def __init__(self, backbone: nn.Module, terms: Sequence[Term], losses: Sequence[nn.Module]):
        """``backbone(x, layers)`` returns named features (a :class:`rvgen.backbones.Backbone`);
        ``losses[i]`` compares term ``i``'s features (a :class:`rvgen.losses.Loss`)."""
        super().__init__()
        if len(terms) != len(losses):
            raise ValueError("one loss module per term")
        self.backbone = backbone
        self.terms = list(terms)
        self.losses = nn.ModuleList(losses)
        self.layers = sorted({layer for t in self.terms for layer in t.layers})
        self.targets: dict[tuple[int, str], Any] = {}
        # A float (the same for every image) or a (B,) tensor (automatic, per image).
        self.layer_weights: list[dict[str, float | torch.Tensor]] = [self._static_weights(t) for t in self.terms]
        self.autocast: torch.dtype | None = None  # dtype of the backbone's autocast region
        self.channels_last = False
        self._subset: tuple | None = None  # the last subset's rows, targets and weights
        self.per_image: set[str] = {"input"}
        """Targets set with one image per image being optimised (the inputs; references a task
        adapts to each input); the others are shared by the whole batch."""

    @staticmethod
    def _static_weights(term: Term) -> dict[str, float | torch.Tensor]:
        if isinstance(term.weighting, Mapping):
            return {layer: float(term.weighting[layer]) for layer in term.layers}
        return {layer: 1.0 / len(term.layers) for layer in term.layers}

    @property
    def target_names(self) -> set[str]:
        return {t.target for t in self.terms if t.target is not None}

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """The backbone's activations, in the objective's precision and memory layout."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        region = (torch.autocast(x.device.type, dtype=self.autocast) if self.autocast is not None
                  else nullcontext())
        with region:
            return self.backbone(x, layers)

    @torch.no_grad()
    def set_targets(self, images: Mapping[str, torch.Tensor]) -> None:
        """Compute the target statistics of every term that compares with one of ``images``.

        An image may be a batch (the inputs of a batch, one per image being optimised).
        """
        self._subset = None
        for name, image in images.items():
            idx = [i for i, t in enumerate(self.terms) if t.target == name]
            if not idx:
                continue
            feats = self.features(image, sorted({layer for i in idx for layer in self.terms[i].layers}))
            for i in idx:
                loss = self.losses[i]
                for layer in self.terms[i].layers:
                    f = feats[layer]
                    if loss.batched or f.shape[0] == 1:
                        self.targets[(i, layer)] = loss.prepare(f)
                    else:
                        self.targets[(i, layer)] = PerImage(loss.prepare(part) for part in f.split(1))

    def _loss(self, i: int, features: torch.Tensor, target: Any) -> torch.Tensor:
        loss = self.losses[i]
        if isinstance(target, PerImage):
            return torch.cat([loss(f, t) for f, t in zip(features.split(1), target)])
        if not loss.batched and features.shape[0] > 1:
            return torch.cat([loss(f, target) for f in features.split(1)])
        return loss(features, target)

    def layer_losses(self, x: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
        """Every term's loss at every one of its layers, each of shape (B,)."""
        feats = self.features(x, self.layers)
        out = {}
        for i, term in enumerate(self.terms):
            for layer in term.layers:
                target = self.targets[(i, layer)] if term.target is not None else None
                out[(i, layer)] = self._loss(i, feats[layer], target)
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

    @contextmanager
    def subset(self, rows: Sequence[int] | None) -> Iterator[None]:
        """Within the block, evaluate only the images ``rows`` of the batch the per-image
        targets and weights were set for (the optimiser drops images that have finished)."""
        if rows is None:
            yield
            return
        targets, weights = self.targets, self.layer_weights
        if self._subset is None or self._subset[0] != tuple(rows):
            index = torch.tensor(list(rows), dtype=torch.long)
            picked = {key: _take(value, rows, index) if self.terms[key[0]].target in self.per_image else value
                      for key, value in targets.items()}
            picked_weights = [{layer: w.index_select(0, index.to(w.device)) if torch.is_tensor(w) else w
                               for layer, w in term.items()} for term in weights]
            self._subset = (tuple(rows), picked, picked_weights)
        _, self.targets, self.layer_weights = self._subset
        try:
            yield
        finally:
            self.targets, self.layer_weights = targets, weights

    def reset_weights(self) -> None:
        self._subset = None
        self.layer_weights = [self._static_weights(t) for t in self.terms]

    def auto_weight(self, x0: torch.Tensor) -> None:
        """The paper's automatic layer weighting, for every term with ``weighting = "auto"``.

        Each layer's weight is inversely proportional to the norm of the gradient of that
        layer's loss with respect to the starting image, so every layer pulls on the pixels
        equally hard at the start; the weights of a term sum to 1. Computed once, before
        optimising, for each image of the batch ``x0`` on its own: the weights are (B,)
        tensors. Because the losses are scale-free, so are the weights: networks whose
        layers differ only by a constant factor (a different init scale) get the same ones.
        """
        auto = [i for i, t in enumerate(self.terms) if t.weighting == "auto"]
        if not auto:
            return
        self._subset = None
        x = x0.detach().clone().requires_grad_(True)
        per_layer = self.layer_losses(x)
        for i in auto:
            layers = self.terms[i].layers
            # Images are independent, so the gradient of the batch's sum holds each image's own.
            norms = torch.stack([
                torch.autograd.grad(per_layer[(i, layer)].sum(), x, retain_graph=True)[0].float().flatten(1).norm(dim=1)
                for layer in layers
            ], dim=1).double().cpu()  # (B, layers)
            weights = torch.stack([self._auto_row(row.tolist()) for row in norms])
            self.layer_weights[i] = {
                layer: weights[:, j].to(device=x0.device, dtype=torch.float32) for j, layer in enumerate(layers)
            }

    @staticmethod
    def _auto_row(norms: list[float]) -> torch.Tensor:
        """One image's weights from its layers' gradient norms (equal if nothing pulls)."""
        usable = [g for g in norms if math.isfinite(g) and g > 0]
        if not usable:
            return torch.full((len(norms),), 1.0 / len(norms), dtype=torch.float64)
        # A layer already at its optimum (zero gradient) gets the median pull.
        median = sorted(usable)[len(usable) // 2]
        inverse = torch.tensor([1.0 / (g if math.isfinite(g) and g > 0 else median) for g in norms],
                               dtype=torch.float64)
        return inverse / inverse.sum()


def _take(target: Any, rows: Sequence[int], index: torch.Tensor) -> Any:
    """The rows of a per-image target: a :class:`PerImage` entry each, or the rows of every
    tensor in a batched loss's target (tensors with a batch dimension of 1 are shared)."""
    if isinstance(target, PerImage):
        return PerImage(target[i] for i in rows)
    if torch.is_tensor(target):
        return target.index_select(0, index.to(target.device)) if target.dim() and target.shape[0] > 1 else target
    if isinstance(target, (tuple, list)):
        return type(target)(_take(t, rows, index) for t in target)
    if isinstance(target, dict):
        return {k: _take(v, rows, index) for k, v in target.items()}
    return target

