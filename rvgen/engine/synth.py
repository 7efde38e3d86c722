"""A recipe made ready to run: the task, the frozen backbone and the objective, built once.

A :class:`Synthesizer` is what a worker holds. Building it costs the backbone; the targets
of fixed reference images (the style image's Grams) are computed once per pyramid level by
:meth:`~Synthesizer.set_references`; each :meth:`~Synthesizer.run_batch` then only computes
its inputs' targets and optimises them together. It receives tensors, never reads files.

With ``optimizer.scales > 1`` each batch is optimised over an image pyramid: first at the
smallest level, then upsampled to the next level and optimised again, up to the output
size (as crowsonkb's style_transfer does). Coarse levels are cheap and settle the large
structures, so the full-size level needs far fewer iterations for the same loss. Each
level's objective is the single-scale objective at that size: targets from the inputs and
references resized to it, and automatic layer weights from the task's own starting image
at that size, so the last level optimises exactly the single-scale objective.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from rvgen.engine import memory, precision
from rvgen.engine.objective import Objective
from rvgen.engine.optimize import BatchCallback, OptimizerConfig, Progress, Result, optimize_batch
from rvgen.errors import RvgenError
from rvgen.plugins import Registry, get_registry
from rvgen.recipe import Recipe

VARIATION_SEED_STRIDE = 7919


def reference_sources(recipe: Recipe, registry: Registry | None = None, task=None) -> dict[str, tuple[str, int]]:
    """The reference images a recipe's task needs besides the input: name -> (source, long
    side), the long side defaulting to the output size. Builds no network."""
    task = task or recipe.build_task(registry or get_registry())
    size = recipe.output["size"]
    return {name: (src, long_side or size) for name, (src, long_side) in task.references().items()}


def resize(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize (B, 3, H, W) to ``shape``: antialiased when shrinking, bicubic (clamped) when growing."""
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    if shape[0] <= image.shape[-2] and shape[1] <= image.shape[-1]:
        return F.interpolate(image, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(image, size=shape, mode="bicubic", align_corners=False).clamp(0, 1)


def scaled(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def pyramid(canvas: tuple[int, int], scales: int, min_size: int) -> list[float]:
    """Scale factors of the levels, smallest first, ending at 1: halving the long side each
    level down, for ``scales`` levels at most, none whose long side is under ``min_size``."""
    long_side = max(canvas)
    factors = [1.0]
    for k in range(1, scales):
        if long_side / 2**k < min_size:
            break
        factors.insert(0, 0.5**k)
    return factors


class Synthesizer:
    def __init__(self, recipe: Recipe, device: torch.device | str = "cpu", registry: Registry | None = None):
        registry = registry or get_registry()
        self.recipe = recipe
        self.device = torch.device(device)
        backbone_cls = registry.get("backbone", recipe.backbone["name"], "backbone.name").cls
        self.task = recipe.build_task(registry)
        terms = list(self.task.terms()) + list(recipe.terms)
        losses = [registry.get("loss", t.loss, "loss").cls(**recipe.losses.get(t.loss, {})) for t in terms]
        layers = {layer for t in terms for layer in t.layers}
        backbone = backbone_cls(recipe.options("backbone"), layers).eval().requires_grad_(False)
        self.objective = Objective(backbone, terms, losses).to(self.device)
        self.numerics = precision.resolve(recipe.optimizer.precision, self.device)
        precision.configure_backends(self.device, self.numerics)
        precision.apply(self.objective, self.numerics)
        self._references: dict[str, torch.Tensor] = {}
        self._reference_targets: dict[float, dict] = {}

    def references(self) -> dict[str, tuple[str, int]]:
        """Reference images the task needs besides the input: name -> (source, long side)."""
        return reference_sources(self.recipe, task=self.task)

    def set_references(self, images: Mapping[str, torch.Tensor]) -> None:
        """Compute the targets of the fixed reference images (the style's Grams), once per run."""
        missing = set(self.references()) - set(images)
        if missing:
            raise ValueError(f"reference images missing: {sorted(missing)}")
        self._references = {k: v.to(self.device) for k, v in images.items()}
        self._reference_targets = {}
        self._use_references(1.0)

    def _use_references(self, factor: float) -> None:
        """Put the reference targets of the pyramid level at ``factor`` in the objective."""
        if factor not in self._reference_targets:
            names = set(self._references)
            self.objective.set_targets({k: resize(v, scaled(tuple(v.shape[-2:]), factor))
                                        for k, v in self._references.items()})
            self._reference_targets[factor] = {
                key: value for key, value in self.objective.targets.items()
                if self.objective.terms[key[0]].target in names
            }
        self.objective.targets.update(self._reference_targets[factor])

    @property
    def variations(self) -> int:
        return self.task.variations()

    def memory_estimate(self, content_shape: tuple[int, int]) -> memory.MemoryEstimate:
        """What optimising images of this input size (H, W) needs at the output level."""
        canvas = self.task.canvas(torch.empty(1, 3, *content_shape, device="meta"))
        return memory.estimate(self.objective, tuple(canvas), self.recipe.optimizer, self.numerics)

    def batch_size(self, content_shape: tuple[int, int], jobs: int) -> int:
        """Images of this size to optimise at once: ``optimizer.batch_size`` or what fits now."""
        requested = self.recipe.optimizer.batch_size
        if requested is not None:
            return max(1, min(requested, jobs))
        return memory.choose_batch_size(self.memory_estimate(content_shape), self.device, jobs)

    def _start(self, contents: torch.Tensor, variations: Sequence[int], shape: tuple[int, int]) -> torch.Tensor:
        """The task's starting image of every input at canvas ``shape``, seeded per variation."""
        seed = int(self.task.options.get("seed", 0))
        starts = []
        for i, variation in enumerate(variations):
            generator = torch.Generator().manual_seed(seed + VARIATION_SEED_STRIDE * variation)
            starts.append(self.task.init(contents[i : i + 1], shape, generator))
        return torch.cat(starts).to(self.device)

    def run_batch(
        self,
        contents: Sequence[torch.Tensor],
        variations: Sequence[int] | None = None,
        callback: BatchCallback | None = None,
    ) -> list[Result | RvgenError]:
        """Make one result per content (each (1, 3, H, W) in [0, 1], all the same size, already
        at the output size), optimised together. Returns, in order, a :class:`Result` or the
        :class:`~rvgen.errors.RvgenError` that ended that image; the others are unaffected.
        ``callback(index, progress)`` reports each image's iterations, counted over all levels.
        Each result's ``seconds`` is the whole batch's time (its images were made together);
        ``iterations`` and ``evaluations`` add up all levels; with a pyramid, ``initial_loss``
        is the loss of the last level's start (the upsampled coarse result).
        Raises ``torch.OutOfMemoryError`` when the batch does not fit (see
        :func:`rvgen.engine.batching.run_with_fallback`).
        """
        if not contents:
            return []
        started = time.perf_counter()
        variations = list(variations) if variations is not None else [0] * len(contents)
        if len(variations) != len(contents):
            raise ValueError("one variation per content")
        sizes = {tuple(c.shape[-2:]) for c in contents}
        if len(sizes) != 1:
            raise ValueError(f"a batch needs inputs of one size, got {sorted(sizes)}; group them by size")
        content = torch.cat([c.to(self.device, torch.float32) for c in contents])
        canvas = tuple(self.task.canvas(content[:1]))
        config = self.recipe.optimizer
        factors = pyramid(canvas, config.scales, config.min_size)
        lower = config.scale_iterations or config.iterations
        budgets = [lower] * (len(factors) - 1) + [config.iterations]
        total = sum(budgets)
        errors: list[RvgenError | None] = [None] * len(contents)
        totals = {"iterations": [0] * len(contents), "evaluations": [0] * len(contents)}
        x = None
        outcomes: list[Result | RvgenError] = []
        for level, (factor, budget) in enumerate(zip(factors, budgets)):
            shape = scaled(canvas, factor)
            level_content = resize(content, scaled(tuple(content.shape[-2:]), factor))
            self._use_references(factor)
            if "input" in self.objective.target_names:
                self.objective.set_targets({"input": level_content})
            start = self._start(level_content, variations, shape)
            self.objective.reset_weights()
            self.objective.auto_weight(start)
            x0 = start if x is None else resize(x, shape)
            offset = sum(budgets[:level])
            report = None if callback is None else self._offset_callback(callback, offset, total)
            outcomes = optimize_batch(self.objective, x0, config_at(config, budget), report)
            images = []
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, RvgenError):
                    errors[i] = errors[i] or outcome
                    images.append(x0[i : i + 1])
                    continue
                totals["iterations"][i] += outcome.iterations
                totals["evaluations"][i] += outcome.evaluations
                images.append(outcome.image)
            x = torch.cat(images)
        final: list[Result | RvgenError] = []
        for i, outcome in enumerate(outcomes):
            if errors[i] is not None:
                final.append(errors[i])
                continue
            outcome.iterations = totals["iterations"][i]
            outcome.evaluations = totals["evaluations"][i]
            outcome.seconds = time.perf_counter() - started  # the whole batch's time, setup included
            final.append(outcome)
        return final

    @staticmethod
    def _offset_callback(callback: BatchCallback, offset: int, total: int) -> BatchCallback:
        return lambda i, p: callback(i, Progress(offset + p.iteration, total, p.loss))

    def run(
        self,
        content: torch.Tensor,
        variation: int = 0,
        callback: Callable[[Progress], None] | None = None,
    ) -> Result:
        """Make one result from ``content`` (1, 3, H, W) in [0, 1], already at the output size.

        Raises the :class:`~rvgen.errors.RvgenError` that ended it, if one did.
        """
        (outcome,) = self.run_batch([content], [variation], None if callback is None else lambda i, p: callback(p))
        if isinstance(outcome, RvgenError):
            raise outcome
        return outcome


def config_at(config: OptimizerConfig, iterations: int) -> OptimizerConfig:
    """``config`` with another iteration count (for one pyramid level)."""
    return replace(config, iterations=iterations)
