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
import torch.nn.functional as F
from torch import nn

from rvgen.engine.guides import propagate, resize_guide, weighting
from rvgen.engine.tiling import TilePlan

ANCHOR = "anchor"
"""The target name of a per-image pixel anchor set with each batch (:meth:`Synthesizer.run_batch`'s
``anchors``): a (B, 4, H, W) image, RGB and a weight per pixel in [0, 1], for a loss on the
``pixels`` layer (the ``temporal`` loss of video frames: stay near the previous result, warped,
where it is reliable). A batch given no anchors gets weight 0 everywhere: the term is then 0."""


@dataclass(frozen=True)
class Term:
    """One summand of the objective.

    ``target`` names the reference image the loss compares against (``"input"``, a task's
    reference such as ``"style"``) or is ``None`` for losses without a target (``tv``).
    ``weighting`` spreads ``weight`` over the layers: ``"equal"``, ``"auto"`` (the paper's
    rule, see :meth:`Objective.auto_weight`) or explicit weights per layer. ``blend``, for
    a loss that is ``blendable``: (reference name, weight) pairs whose targets blend into
    this term's one, their weighted mean (a folder of style images is one term); ``target``
    is then the first of them.

    ``guide`` names a guide of the image being optimised (a mask handed to
    :meth:`Objective.set_guides`, one per image): the term then compares the statistics of
    the features weighted by it (:mod:`rvgen.engine.guides`; its loss must be ``guidable``).
    ``target_guide`` does the same for the target's features: for a reference target, the
    name of another reference image (its mask, read as grey); for the input, a guide of the
    input.
    """

    name: str
    loss: str
    layers: tuple[str, ...]
    weight: float = 1.0
    target: str | None = "input"
    weighting: str | Mapping[str, float] = "equal"
    blend: tuple[tuple[str, float], ...] = ()
    guide: str | None = None
    target_guide: str | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        """Every image the term compares with: its blend's, or its target."""
        if self.blend:
            return tuple(name for name, _ in self.blend)
        return () if self.target is None else (self.target,)

    @property
    def images(self) -> tuple[str, ...]:
        """Every image the term reads besides the one optimised: its targets and, for a
        reference target, the reference its target guide is."""
        guide = (self.target_guide,) if self.target_guide is not None and self.target != "input" else ()
        return self.targets + guide


class PerImage(tuple):
    """Targets of a loss that is not ``batched``: one prepared target per image."""


class Objective(nn.Module):
    def __init__(self, backbone: nn.Module, terms: Sequence[Term], losses: Sequence[nn.Module]):
        """``backbone(x, layers)`` returns named features (a :class:`rvgen.backbones.Backbone`);
        ``losses[i]`` compares term ``i``'s features (a :class:`rvgen.losses.Loss`)."""
        super().__init__()
        if len(terms) != len(losses):
            raise ValueError("one loss module per term")
        for t, loss in zip(terms, losses):
            if (t.guide is not None or t.target_guide is not None) and not getattr(loss, "guidable", False):
                raise ValueError(f"term {t.name!r}: loss {t.loss!r} cannot be guided (it does not declare guidable = True)")
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
        self.tile_size: int | None = None  # evaluate tile by tile (see rvgen.engine.tiling) when set
        self.halo: int | None = None  # None: the backbone's full halo (exact)
        self.per_image: set[str] = {"input", ANCHOR}
        """Targets set with one image per image being optimised (the inputs; references a task
        adapts to each input); the others are shared by the whole batch."""
        self.guide_mode = "resize"
        """How guides reach each layer's grid: resize, inside or all (:func:`~rvgen.engine.guides.propagate`)."""
        self._guides: dict[str, torch.Tensor] = {}  # name -> (B, 1, H, W), one per image being optimised
        self._reference_guides: dict[str, torch.Tensor] = {}  # the last seen of each reference that is a target guide
        self._guide_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._layer_geometry: dict[str, tuple[int, int] | None] = {}

    @staticmethod
    def _static_weights(term: Term) -> dict[str, float | torch.Tensor]:
        if isinstance(term.weighting, Mapping):
            return {layer: float(term.weighting[layer]) for layer in term.layers}
        return {layer: 1.0 / len(term.layers) for layer in term.layers}

    @property
    def target_names(self) -> set[str]:
        return {name for t in self.terms for name in t.images}

    @property
    def guide_names(self) -> set[str]:
        """The guides of the images being optimised that the terms use (:meth:`set_guides`)."""
        return ({t.guide for t in self.terms if t.guide is not None}
                | {t.target_guide for t in self.terms if t.target_guide is not None and t.target == "input"})

    # ---- guides (rvgen.engine.guides) ------------------------------------------------------

    def set_guides(self, guides: Mapping[str, torch.Tensor]) -> None:
        """The guides of the batch being optimised: name -> (B, 1, H, W) in [0, 1], one per image,
        at any size (each is resampled to the image the terms see, at every pyramid level)."""
        self._subset = None
        self._guides = {name: g.float() for name, g in guides.items()}
        self._guide_cache = {}

    def _geometry_of(self, layer: str) -> tuple[int, int] | None:
        """``layer``'s (stride, receptive-field margin) from the backbone's declared geometry."""
        if layer not in self._layer_geometry:
            get = getattr(self.backbone, "tile_geometry", None)
            geometry = get([layer]) if get is not None else None
            self._layer_geometry[layer] = None if geometry is None else (geometry.strides[layer], geometry.margin)
        return self._layer_geometry[layer]

    def _guide_at(self, guide: torch.Tensor, layer: str, pixels: tuple[int, int],
                  shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor, present) of ``guide`` for an image of ``pixels`` at ``layer``'s map ``shape``."""
        g = resize_guide(guide.float(), pixels)
        stride, margin = self._geometry_of(layer) or (None, None)
        return weighting(propagate(g, shape, self.guide_mode, stride, margin))

    def _guide_weights(self, name: str, layer: str, pixels: tuple[int, int],
                       shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Guide ``name`` of the images being optimised at ``layer``: the factor (B, 1, h, w) their
        features are multiplied by and whether the region is there (B,); cached."""
        key = (name, layer, tuple(pixels), tuple(shape))
        if key not in self._guide_cache:
            if name not in self._guides:
                raise ValueError(f"guide {name!r} not set (Objective.set_guides)")
            self._guide_cache[key] = self._guide_at(self._guides[name], layer, pixels, shape)
        return self._guide_cache[key]

    def _guided(self, term: Term, layer: str, features: torch.Tensor, pixels: tuple[int, int]):
        """The features a guided term's loss sees, and the region's presence (None: unguided)."""
        if term.guide is None:
            return features, None
        factor, present = self._guide_weights(term.guide, layer, pixels, tuple(features.shape[-2:]))
        return features.float() * factor, present

    def _target_features(self, i: int, image: torch.Tensor, feats: Mapping[str, torch.Tensor],
                         images: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Term ``i``'s layers of a target's features, weighted by its ``target_guide`` if it has one."""
        term = self.terms[i]
        if term.target_guide is None:
            return {layer: feats[layer] for layer in term.layers}
        # A reference's guide is a reference image (kept from the call that set it: an adapted
        # reference comes alone); the input's is a guide of the input.
        guide = (images.get(term.target_guide, self._reference_guides.get(term.target_guide))
                 if term.target != "input" else self._guides.get(term.target_guide))
        if guide is None:
            raise ValueError(f"target guide {term.target_guide!r} of term {term.name!r} not set")
        if guide.shape[1] != 1:  # a reference image read as colour: its grey
            guide = guide.float().mean(1, keepdim=True)
        out = {}
        for layer in term.layers:
            factor, _ = self._guide_at(guide.to(image.device), layer, tuple(image.shape[-2:]),
                                       tuple(feats[layer].shape[-2:]))
            out[layer] = feats[layer].float() * factor
        return out

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
        guides = {t.target_guide for t in self.terms if t.target_guide is not None and t.target != "input"}
        self._reference_guides.update({name: image for name, image in images.items() if name in guides})
        for name, image in images.items():
            idx = [i for i, t in enumerate(self.terms) if t.target == name and not t.blend]
            if not idx:
                continue
            feats = self._features_of(image, sorted({layer for i in idx for layer in self.terms[i].layers}))
            for i in idx:
                for layer, f in self._target_features(i, image, feats, images).items():
                    self.targets[(i, layer)] = self._prepare(i, f)
        for i, term in enumerate(self.terms):
            if term.blend and all(name in images for name in term.images):
                self._set_blend(i, images)

    def _features_of(self, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        plan = self.tile_plan(tuple(image.shape[-2:]))
        return self.features(image, layers) if plan is None else self.tiled_features(image, layers, plan)

    def _prepare(self, i: int, features: torch.Tensor) -> Any:
        loss = self.losses[i]
        if loss.batched or features.shape[0] == 1:
            return loss.prepare(features)
        return PerImage(loss.prepare(part) for part in features.split(1))

    def _set_blend(self, i: int, images: Mapping[str, torch.Tensor]) -> None:
        """Term ``i``'s target at each layer: the weighted mean of its blend's targets, folded in
        one image at a time (one image's features and one running mean alive at a time, so a
        folder of hundreds of style images costs about one; weights of 0 are left out)."""
        term, loss = self.terms[i], self.losses[i]
        means: dict[str, tuple[Any, float]] = {}
        for name, weight in term.blend:
            if weight <= 0:
                continue
            feats = self._target_features(i, images[name], self._features_of(images[name], term.layers), images)
            for layer in term.layers:
                target = self._prepare(i, feats[layer])
                if layer in means:
                    mean, total = means[layer]
                    if isinstance(target, PerImage):
                        target = PerImage(loss.mean_target([(m, total), (t, weight)]) for m, t in zip(mean, target))
                    else:
                        target = loss.mean_target([(mean, total), (target, weight)])
                    weight_so_far = total + weight
                else:
                    weight_so_far = weight
                means[layer] = (target, weight_so_far)
            del feats
        for layer, (target, _) in means.items():
            self.targets[(i, layer)] = target

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
        pixels = tuple(x.shape[-2:])
        out = {}
        for i, term in enumerate(self.terms):
            for layer in term.layers:
                target = self.targets[(i, layer)] if term.target is not None else None
                f, present = self._guided(term, layer, feats[layer], pixels)
                loss = self._loss(i, f, target)
                out[(i, layer)] = loss if present is None else loss * present
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
        """Total loss per image (B,) and each term's weighted share of it. When the image is
        evaluated in tiles, the values carry no autograd graph (use :meth:`value_and_grad`)."""
        plan = self.tile_plan(tuple(x.shape[-2:]))
        if plan is not None:
            total, parts, _ = self.tiled(x, plan, gradient=False)
            return total, parts
        return self.combine(self.layer_losses(x))

    # ---- tiled evaluation (rvgen.engine.tiling) --------------------------------------------

    @property
    def geometry(self):
        """The backbone's :class:`~rvgen.engine.tiling.TileGeometry` for the layers used, or None
        when it cannot be tiled."""
        get = getattr(self.backbone, "tile_geometry", None)
        return get(self.layers) if get is not None else None

    def untileable(self) -> list[str]:
        """Why this objective cannot be evaluated in tiles (empty when it can)."""
        reasons = [f"loss {t.loss!r} is not a sum over positions (it does not declare tiled = True)"
                   for t, loss in zip(self.terms, self.losses) if not getattr(loss, "tiled", False)]
        if self.geometry is None:
            reasons.append(f"backbone {getattr(self.backbone, 'name', '?')!r} does not declare its tile geometry")
        return list(dict.fromkeys(reasons))

    def tile_plan(self, shape: tuple[int, int]) -> TilePlan | None:
        """The tiles an image of ``shape`` is evaluated in, or None to evaluate it whole."""
        if self.tile_size is None or max(shape) <= self.tile_size:
            return None
        geometry = self.geometry
        halo = geometry.halo if self.halo is None else self.halo
        return TilePlan(tuple(shape), self.tile_size, halo, geometry)

    def _feature_shapes(self, shape: tuple[int, int], plan: TilePlan) -> dict[str, tuple[int, int]]:
        """Each layer's whole-image map size: floor(pixels / stride), as the pooling floors."""
        return {layer: (shape[0] // plan.geometry.strides[layer], shape[1] // plan.geometry.strides[layer])
                for layer in self.layers}

    @torch.no_grad()
    def tiled_features(self, x: torch.Tensor, layers: Sequence[str], plan: TilePlan) -> dict[str, torch.Tensor]:
        """The whole image's features at ``layers``, assembled from the tiles' interiors."""
        shapes = self._feature_shapes(tuple(x.shape[-2:]), plan)
        out: dict[str, torch.Tensor] = {}
        for tile in plan:
            rows, cols = tile.slices()
            feats = self.features(x[..., rows, cols], layers)
            for layer in layers:
                f = feats[layer]
                w = tile.window(plan.geometry.strides[layer], shapes[layer])
                if layer not in out:
                    out[layer] = f.new_zeros((*f.shape[:2], *shapes[layer]), dtype=f.dtype)
                out[layer][..., w.top:w.top + (w.rows.stop - w.rows.start),
                           w.left:w.left + (w.cols.stop - w.cols.start)] = f[..., w.rows, w.cols]
        return out

    def _statistics(self, feats: dict[str, torch.Tensor], tile, plan: TilePlan,
                    shapes: dict[str, tuple[int, int]], only=None) -> dict[tuple[int, str], torch.Tensor]:
        out = {}
        for i, term in enumerate(self.terms):
            for layer in term.layers:
                if only is not None and (i, layer) not in only:
                    continue
                stride = plan.geometry.strides[layer]
                window = tile.window(stride, shapes[layer])
                target = self.targets[(i, layer)] if term.target is not None else None
                f = feats[layer]
                if term.guide is not None:  # the whole map's factor, cut to this tile's map
                    factor, _ = self._guide_weights(term.guide, layer, plan.shape, shapes[layer])
                    top, left = tile.crop[0] // stride, tile.crop[2] // stride
                    part = factor[..., top:top + f.shape[-2], left:left + f.shape[-1]]
                    part = F.pad(part, (0, f.shape[-1] - part.shape[-1], 0, f.shape[-2] - part.shape[-2]))
                    f = f.float() * part
                out[(i, layer)] = self._call_per_image(i, "statistic", f, target, window)
        return out

    def _call_per_image(self, i: int, method: str, features: torch.Tensor, target: Any, *args) -> torch.Tensor:
        """A loss's ``statistic`` or ``finish``, image by image when its targets are per image."""
        fn = getattr(self.losses[i], method)
        if isinstance(target, PerImage):
            return torch.cat([fn(f, t, *args) for f, t in zip(features.split(1), target)])
        return fn(features, target, *args)

    def tiled(self, x: torch.Tensor, plan: TilePlan, gradient: bool = True, only=None):
        """Loss (B,), parts and (if ``gradient``) d loss / d x, evaluated tile by tile.

        ``only`` restricts the objective to a set of (term index, layer) keys, weighted 1 each
        (the automatic weighting asks for one layer's gradient at a time)."""
        shape = tuple(x.shape[-2:])
        shapes = self._feature_shapes(shape, plan)
        keys = [(i, layer) for i, t in enumerate(self.terms) for layer in t.layers
                if only is None or (i, layer) in only]
        layers = sorted({layer for _, layer in keys})
        stats: dict[tuple[int, str], torch.Tensor] = {}
        with torch.no_grad():  # pass 1: the statistics, summed over tiles
            for tile in plan:
                rows, cols = tile.slices()
                feats = self.features(x[..., rows, cols], layers)
                for key, value in self._statistics(feats, tile, plan, shapes, keys).items():
                    stats[key] = stats[key] + value if key in stats else value
        leaves = {key: value.detach().requires_grad_(gradient) for key, value in stats.items()}
        with torch.enable_grad():
            per_layer = {}
            for (i, layer), leaf in leaves.items():
                term = self.terms[i]
                target = self.targets[(i, layer)] if term.target is not None else None
                per_layer[(i, layer)] = self._call_per_image(i, "finish", leaf, target)
                if term.guide is not None:  # a region absent from an image counts nothing there
                    _, present = self._guide_weights(term.guide, layer, plan.shape, shapes[layer])
                    per_layer[(i, layer)] = per_layer[(i, layer)] * present
            if only is None:
                total, parts = self.combine(per_layer)
            else:
                total, parts = sum(per_layer.values()), {}
            if not gradient:
                return total.detach(), {k: v.detach() for k, v in parts.items()}, None
            keys = list(leaves)
            grads = torch.autograd.grad(total.sum(), [leaves[k] for k in keys], allow_unused=True)
        pulls = {k: g for k, g in zip(keys, grads) if g is not None}
        grad = torch.zeros_like(x, dtype=torch.promote_types(x.dtype, torch.float32))
        for tile in plan:  # pass 2: each tile's statistics, contracted with d loss / d statistic
            rows, cols = tile.slices()
            crop = x[..., rows, cols].detach().requires_grad_(True)
            with torch.enable_grad():
                feats = self.features(crop, layers)
                tile_stats = self._statistics(feats, tile, plan, shapes, list(pulls))
                surrogate = sum((tile_stats[k] * pulls[k]).sum() for k in pulls)
                if not torch.is_tensor(surrogate) or not surrogate.requires_grad:
                    continue
                (g,) = torch.autograd.grad(surrogate, crop)
            grad[..., rows, cols] += g.to(grad.dtype)
        return total.detach(), {k: v.detach() for k, v in parts.items()}, grad

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (B,) and its gradient with respect to ``x``, whole or in tiles."""
        plan = self.tile_plan(tuple(x.shape[-2:]))
        if plan is not None:
            total, _, grad = self.tiled(x, plan)
            return total, grad
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            total, _ = self.forward(x)
            (grad,) = torch.autograd.grad(total.sum(), x)
        return total.detach(), grad

    @contextmanager
    def subset(self, rows: Sequence[int] | None) -> Iterator[None]:
        """Within the block, evaluate only the images ``rows`` of the batch the per-image
        targets and weights were set for (the optimiser drops images that have finished)."""
        if rows is None:
            yield
            return
        targets, weights, guides, cache = self.targets, self.layer_weights, self._guides, self._guide_cache
        if self._subset is None or self._subset[0] != tuple(rows):
            index = torch.tensor(list(rows), dtype=torch.long)
            picked = {key: _take(value, rows, index) if self.terms[key[0]].target in self.per_image else value
                      for key, value in targets.items()}
            picked_weights = [{layer: w.index_select(0, index.to(w.device)) if torch.is_tensor(w) else w
                               for layer, w in term.items()} for term in weights]
            picked_guides = {name: g.index_select(0, index.to(g.device)) for name, g in guides.items()}
            self._subset = (tuple(rows), picked, picked_weights, picked_guides, {})
        _, self.targets, self.layer_weights, self._guides, self._guide_cache = self._subset
        try:
            yield
        finally:
            self.targets, self.layer_weights, self._guides, self._guide_cache = targets, weights, guides, cache

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
        plan = self.tile_plan(tuple(x0.shape[-2:]))
        x = x0.detach().clone().requires_grad_(True)
        per_layer = self.layer_losses(x) if plan is None else None

        def pull(i: int, layer: str) -> torch.Tensor:
            # Images are independent, so the gradient of the batch's sum holds each image's own.
            if plan is not None:
                return self.tiled(x0.detach(), plan, only={(i, layer)})[2].flatten(1).norm(dim=1)
            return torch.autograd.grad(per_layer[(i, layer)].sum(), x, retain_graph=True)[0].float().flatten(1).norm(dim=1)

        for i in auto:
            layers = self.terms[i].layers
            norms = torch.stack([pull(i, layer) for layer in layers], dim=1).double().cpu()  # (B, layers)
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

