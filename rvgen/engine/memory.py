"""How much memory a batch needs, estimated before running it, and the batch size that fits.

The estimate counts what an evaluation keeps alive: the activations the backbone saves for
its backward pass (measured by running it on PyTorch's ``meta`` device, which allocates
nothing, and recording every tensor autograd saves), the float32 copies the losses keep
at their layers, the gradient buffers of the backward pass, and the optimiser's state per
image (an L-BFGS history of ``2 * history`` images, or Adam's two moments). It is meant to
be a little pessimistic; the CUDA out-of-memory fallback in :mod:`rvgen.engine.fallback`
covers the rest.
"""

from __future__ import annotations

import copy
import os
import weakref
from dataclasses import dataclass
from functools import lru_cache

import torch

from rvgen.engine.objective import Objective
from rvgen.engine.optimize import OptimizerConfig
from rvgen.engine.precision import Numerics

HEADROOM = 0.85  # fraction of the free memory batches may plan to use
MAX_BATCH = 64


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a batch needs: ``fixed`` once (weights, targets) plus ``per_image`` per image."""

    fixed: int
    per_image: int
    activations: int  # the part of ``per_image`` saved by the backbone for backward

    def total(self, batch: int) -> int:
        return self.fixed + batch * self.per_image

    def fits(self, free: int) -> int:
        """How many images fit in ``free`` bytes (0 when not even one)."""
        room = int(free * HEADROOM) - self.fixed
        return max(0, room // self.per_image) if self.per_image > 0 else MAX_BATCH


def _saved_numel(backbone: torch.nn.Module, layers: tuple[str, ...], shape: tuple[int, int]) -> tuple[dict[int, int], dict[str, int]]:
    """Elements of each tensor autograd saves in one backbone pass of one image, and each layer's size."""
    meta = _meta_copy(backbone)
    weights = {id(p) for p in meta.parameters()} | {id(b) for b in meta.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in weights:  # weights are counted once, in ``fixed``
            saved[id(t)] = t.numel()  # by identity: a tensor saved twice is stored once
        return t

    x = torch.empty((1, 3, *shape), device="meta", requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        feats = meta(x, layers)
    return saved, {name: f.numel() for name, f in feats.items()}


# Keyed by the backbone itself, weakly: the copy goes when the backbone does, so a new
# backbone can never be handed another's copy (as one reusing a freed id() could).
_META_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


def _meta_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    meta = _META_CACHE.get(backbone)
    if meta is None:
        meta = _META_CACHE[backbone] = copy.deepcopy(backbone).to("meta")
    return meta


def estimate(objective: Objective, shape: tuple[int, int], config: OptimizerConfig, numerics: Numerics,
             with_activations: bool = True) -> MemoryEstimate:
    """The memory an optimisation at ``shape`` (H, W) needs, as fixed + per-image bytes.
    ``with_activations=False`` counts only what the whole image keeps when it is evaluated in
    tiles: the targets and losses' copies of its features (not the backbone's)."""
    saved, layer_numel = _saved_numel(objective.backbone, tuple(objective.layers), shape)
    if not with_activations:
        saved = {}
    activations = sum(saved.values()) * numerics.bytes_per_activation
    loss_copies = 2 * 4 * sum(layer_numel.values())  # float32 features (and scaled copies) per loss layer
    backward = 3 * 4 * max(saved.values(), default=0)  # gradient buffers in flight at the widest layer
    state = image_state(shape, config)
    weights = sum(p.numel() * p.element_size() for p in objective.parameters())
    weights += sum(b.numel() * b.element_size() for b in objective.buffers())
    if numerics.precision == "bf16":
        weights += sum(p.numel() * 2 for p in objective.backbone.parameters())  # autocast's bf16 copies
    return MemoryEstimate(fixed=weights, per_image=activations + loss_copies + backward + state, activations=activations)


def free_memory(device: torch.device | str) -> int:
    """Bytes free on ``device`` now: CUDA's own count, or the machine's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return _available_ram()


@lru_cache(maxsize=1)
def _ram_total() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _ram_total() // 2


def choose_batch_size(est: MemoryEstimate, device: torch.device | str, jobs: int, free: int | None = None) -> int:
    """As many images as fit in ``free`` bytes (default: free on ``device`` now), at least 1,
    at most ``jobs`` and :data:`MAX_BATCH`."""
    free = free_memory(device) if free is None else free
    return max(1, min(est.fits(free), MAX_BATCH, jobs))


HISTORY_BUDGET = 2 * 1024**3
"""Bytes L-BFGS's history may take per image: at large sizes the history is shortened to fit
(a fixed rule, so a result never depends on the memory free when it was made)."""
MIN_HISTORY = 5


def history_for(shape: tuple[int, int], history: int) -> int:
    """The L-BFGS history for an image of ``shape`` (H, W): ``history`` pairs, or as many as
    :data:`HISTORY_BUDGET` holds (each pair is two float32 copies of the image), at least
    :data:`MIN_HISTORY`. 50 pairs fit up to about 1450 px square, 21 at 2048, 5 at 4096."""
    pair = 2 * 3 * shape[0] * shape[1] * 4
    return max(MIN_HISTORY, min(history, HISTORY_BUDGET // pair))


def image_state(shape: tuple[int, int], config: OptimizerConfig) -> int:
    """Bytes the optimiser keeps per image of ``shape``: its history or moments, plus buffers."""
    pixels = 3 * shape[0] * shape[1] * 4
    history = history_for(shape, config.history)
    return (2 * history + 6 if config.name == "lbfgs" else 5) * pixels


def tiled_total(objective: Objective, canvas: tuple[int, int], crop: int, config: OptimizerConfig,
                numerics: Numerics) -> int:
    """Bytes one image of ``canvas`` needs when evaluated in tiles read ``crop`` pixels square:
    one tile's activations, and the whole image's optimiser state, gradient and targets."""
    at_crop = estimate(objective, (min(crop, canvas[0]), min(crop, canvas[1])), config, numerics)
    tile = at_crop.per_image - image_state((min(crop, canvas[0]), min(crop, canvas[1])), config)
    whole = estimate(objective, canvas, config, numerics, with_activations=False)  # targets, state
    return at_crop.fixed + tile + whole.per_image


def choose_tile(objective: Objective, canvas: tuple[int, int], config: OptimizerConfig, numerics: Numerics,
                free: int, stride: int, halo: int) -> int:
    """The largest tile (a multiple of ``stride``, halving from the image's long side) whose
    evaluation fits in ``free`` bytes; the smallest tried when none does."""
    side = max(canvas)
    tile = max(stride, side // 2 // stride * stride)
    while tile > stride:
        if tiled_total(objective, canvas, tile + 2 * halo, config, numerics) <= free * HEADROOM:
            return tile
        tile = max(stride, tile // 2 // stride * stride)
    return tile
