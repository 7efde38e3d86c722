"""Losses compare the features of the image being optimised with a target statistic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from rvgen.params import Param


class Loss(nn.Module):
    """Base class of loss plugins.

    ``prepare`` turns the target image's features at one layer into whatever the loss
    compares against (the features themselves, a Gram matrix, a histogram); it runs once
    per target, not once per iteration. ``forward`` returns one loss value per image of the
    batch, shape (B,). Losses that compare with nothing (``needs_target = False``, such as
    total variation) get ``target=None``.

    Built-in losses are *scale-free*: multiplying the features and the target by a constant
    leaves the value unchanged. That keeps layers of very different magnitude comparable and
    lets automatic layer weighting work for any weight initialisation.

    ``batched = True`` promises that ``prepare`` and ``forward`` treat every image of a
    batch on its own (no statistic taken over the batch), so the engine may prepare the
    targets of B inputs in one call and evaluate B images at once, and that every tensor in
    a prepared target (a tensor, or tuples, lists and dicts of them) has the batch as its
    first dimension, so the engine can keep the rows of images still being optimised.
    A loss that leaves it
    ``False`` is still correct in batches: the engine prepares and evaluates it image by
    image (slower, never wrong). Targets of shared reference images (a style image) are
    prepared from a batch of one and must broadcast against any batch in ``forward``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    needs_target: ClassVar[bool] = True
    batched: ClassVar[bool] = False
    tiled: ClassVar[bool] = False
    """True promises the loss is a function of a statistic that is a sum over positions, given
    by :meth:`statistic` and :meth:`finish`, so a large image can be evaluated tile by tile
    (:mod:`rvgen.engine.tiling`). A loss that leaves it False runs on whole images only."""

    blendable: ClassVar[bool] = False
    """True promises the loss is a squared distance between a statistic of the features and
    the target's (after the target's own normalisation), so several targets blend into one:
    their weighted mean (:meth:`mean_target`), to which the sum of the distances is the
    distance up to a constant. A blend of style images is then one term, costing about one
    image; a loss that leaves it False gets one term per image."""

    guidable: ClassVar[bool] = False
    """True promises the loss compares a mean over positions of a quantity quadratic in the
    features (a Gram matrix), so features multiplied by ``sqrt(w N / sum w)`` give the
    ``w``-weighted mean: the engine then takes its statistics under a mask (a guided Gram
    matrix, :mod:`rvgen.engine.guides`), for masked and per-region styles."""

    def __init__(self, **options: Any):
        super().__init__()
        self.options = {**{p.name: p.default for p in self.params}, **options}

    def mean_target(self, targets: Sequence[tuple[Any, float]]) -> Any:
        """For ``blendable`` losses: the weighted mean of prepared targets, given as (target,
        weight) pairs with weights above 0, as a target of the same structure. The engine
        folds a blend in pairwise, the first of each pair being the mean so far with its
        total weight, so it must hold any number of them in constant memory."""
        raise NotImplementedError

    def prepare(self, features: torch.Tensor) -> Any:
        return features.detach()

    def forward(self, features: torch.Tensor, target: Any) -> torch.Tensor:
        raise NotImplementedError

    def statistic(self, features: torch.Tensor, target: Any, window: Any) -> torch.Tensor:
        """For ``tiled`` losses: this tile's additive share of the statistic the loss is a
        function of, over the positions ``window`` (a :class:`rvgen.engine.tiling.Window`)
        picks out of ``features`` (the tile's map, halo included). Summed over the tiles it
        is the whole image's statistic, shape (B, ...)."""
        raise NotImplementedError

    def finish(self, statistic: torch.Tensor, target: Any) -> torch.Tensor:
        """For ``tiled`` losses: the loss (B,) from the whole image's summed statistic, so that
        ``finish(statistic(f, t, whole), t)`` equals ``forward(f, t)``."""
        raise NotImplementedError


def widen(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or kept in float64: losses are never computed in half precision."""
    return t if t.dtype == torch.float64 else t.float()


def feature_scale(features: torch.Tensor) -> torch.Tensor:
    """Root mean square of a target's features (1 where it is all zeros), as a 0-d tensor.

    Dividing by it before squaring keeps tiny activations (deep layers of a network with
    small random weights) from underflowing float32.
    """
    rms = widen(features.detach()).pow(2).mean().sqrt()
    return torch.where(rms > 0, rms, torch.ones_like(rms))


def image_scale(features: torch.Tensor) -> torch.Tensor:
    """:func:`feature_scale` of each image of a batch on its own, shape (B, 1, 1, 1)."""
    rms = widen(features.detach()).pow(2).flatten(1).mean(1).sqrt()
    rms = torch.where(rms > 0, rms, torch.ones_like(rms))
    return rms.view(-1, *([1] * (features.dim() - 1)))


class _Gram(torch.autograd.Function):
    """F Fᵀ with a one-matmul backward: d(F Fᵀ)/dF applied to G' is (G' + G'ᵀ) F.

    Autograd's generic bmm backward would do two matmuls (one per operand) where the
    symmetric product needs one, so this saves a third of the Gram matrices' cost.
    ``f`` is (B, C, N) or its transpose view (B, N, C) when ``transposed``.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, transposed: bool) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.transposed = transposed
        return torch.bmm(f.transpose(1, 2), f) if transposed else torch.bmm(f, f.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (f,) = ctx.saved_tensors
        sym = grad + grad.transpose(1, 2)
        return (torch.bmm(f, sym) if ctx.transposed else torch.bmm(sym, f)), None


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) in float32, averaged over positions so image size does not matter.

    Works on channels-last features without copying them (they are read as (B, HW, C)).
    """
    b, c, h, w = features.shape
    f = widen(features)
    if f.is_contiguous() or not f.is_contiguous(memory_format=torch.channels_last):
        gram = _Gram.apply(f.reshape(b, c, h * w), False)
    else:
        gram = _Gram.apply(f.permute(0, 2, 3, 1).reshape(b, h * w, c), True)
    return gram / (h * w)
