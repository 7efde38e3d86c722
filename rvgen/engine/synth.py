"""A synthesizer: one task's objective, ready to optimise batches of images on one device.

It is handed everything already built (the task, the :class:`~rvgen.engine.objective.Objective`
over a frozen backbone, and the optimiser, pyramid and execution settings), so the engine
never reads a recipe or looks up a plugin. The targets of fixed reference images (the style
image's Grams) are computed once per pyramid level by :meth:`~Synthesizer.set_references`;
each :meth:`~Synthesizer.run_batch` then only computes its inputs' targets and optimises them
together. It receives tensors, never reads files.

With a pyramid (:mod:`rvgen.engine.pyramid`) each level's objective is the single-scale
objective at that size: targets from the inputs and references resized to it, and automatic
layer weights from the task's own starting image at that size, so the last level optimises
exactly the single-scale objective.

The task is used through ``canvas(content)`` (the result's size), ``init(content, shape,
generator)`` (the starting image), and ``options["seed"]``, with which the starting image of
variation ``k`` is drawn from a generator seeded ``seed + VARIATION_SEED_STRIDE * k``; and,
where it has them, five optional members: ``adapted_references()`` names the references
that ``prepare_reference(name, image, content)`` adapts to each input (their targets are
then computed per batch, one per image, rather than once per run); ``derived_references()``
names targets made from the input alone, by ``prepare_reference(name, content, content)``,
with no reference image; ``finish(result, content)`` post-processes every result (and every
snapshot) before it is handed out (given the input's guides as a third argument when it has
some); and ``guide_mode`` says how guides (masks, :mod:`rvgen.engine.guides`) reach each
layer.

With ``snapshot_every = N`` (and a callback), every N-th iteration, counted over all pyramid
levels, the progress carries the image there, at the canvas size and finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from typing import Any

import torch

from rvgen.engine import memory, precision
from rvgen.engine.guides import resize_guide
from rvgen.engine.objective import ANCHOR, Objective
from rvgen.engine.optimize import BatchCallback, Level, OptimizerConfig, Progress, Result, optimize_batch
from rvgen.engine.precision import ExecutionConfig
from rvgen.engine.pyramid import PyramidConfig, resize, scaled
from rvgen.errors import OutOfMemory, RvgenError

VARIATION_SEED_STRIDE = 7919
PROBE_LIMIT = 1024  # px: a backbone that fails on blank images this large is not size-checked


class Synthesizer:
    def __init__(
        self,
        task: Any,
        objective: Objective,
        optimizer: OptimizerConfig,
        pyramid: PyramidConfig = PyramidConfig(),
        execution: ExecutionConfig = ExecutionConfig(),
        device: torch.device | str = "cpu",
        snapshot_every: int = 0,
    ):
        self.task = task
        self.snapshot_every = snapshot_every
        self.optimizer, self.pyramid, self.execution = optimizer, pyramid, execution
        self.device = torch.device(device)
        self.objective = objective.to(self.device)
        self.objective.guide_mode = getattr(task, "guide_mode", "resize")
        self.numerics = precision.resolve(execution.precision, self.device, execution.layout)
        precision.configure_backends(self.device, self.numerics)
        precision.apply(self.objective, self.numerics)
        self._references: dict[str, torch.Tensor] = {}
        self._reference_targets: dict[float, dict] = {}
        self._adapted: dict[str, torch.Tensor | None] = {}  # references prepared per input, as loaded (None: derived)
        self.forced_tile: int | None = None  # set by the out-of-memory fallback

    @cached_property
    def min_side(self) -> int:
        """The shortest side in pixels an image needs so that every layer the objective uses
        keeps at least one position (16 px for VGG's relu5_1, four poolings deep). Found once
        by running the backbone on blank images; 1 when even large ones fail (no check).
        Pyramid levels smaller than this are skipped."""
        objective = self.objective

        def fits(side: int) -> bool:
            blank = torch.zeros(1, 3, side, side, device=self.device)
            try:
                with torch.no_grad():
                    features = objective.features(blank, objective.layers)
            except RuntimeError:
                return False
            return all(f.numel() > 0 for f in features.values() if isinstance(f, torch.Tensor))

        high = 1
        while not fits(high):
            high *= 2
            if high > PROBE_LIMIT:
                return 1
        low = high // 2  # fits(low) is False (or low is 0)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        return high

    @property
    def reference_names(self) -> set[str]:
        """The fixed images the objective compares with besides the inputs (``style``)."""
        return self.objective.target_names - {"input", ANCHOR}

    @property
    def derived_names(self) -> set[str]:
        """The targets the task derives from each input, with no reference image."""
        return set(getattr(self.task, "derived_references", lambda: ())()) & self.reference_names

    def set_references(self, images: Mapping[str, torch.Tensor]) -> None:
        """Compute the targets of the fixed reference images (the style's Grams), once per run."""
        derived = self.derived_names
        missing = self.reference_names - set(images) - derived
        if missing:
            raise ValueError(f"reference images missing: {sorted(missing)}")
        adapted = set(getattr(self.task, "adapted_references", lambda: ())()) & self.reference_names
        self._references = {k: v.to(self.device) for k, v in images.items()
                            if k in self.reference_names and k not in adapted and k not in derived}
        self._adapted = {k: v.to(self.device) for k, v in images.items() if k in adapted and k not in derived}
        self._adapted.update({k: None for k in derived})  # made from each input itself
        self.objective.per_image = {"input", ANCHOR, *adapted, *derived}
        self._reference_targets = {}
        self._use_references(1.0)

    def _adapt_references(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """The adapted and derived references of a batch: name -> (B, 3, h, w), one per input
        (a derived one is made from the input, given as its own reference image)."""
        inputs = content.split(1)
        return {name: torch.cat([self.task.prepare_reference(name, one if image is None else image, one).to(self.device)
                                 for one in inputs])
                for name, image in self._adapted.items()}

    def _finish(self, image: torch.Tensor, content: torch.Tensor,
                guides: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The task's ``finish`` of one result; with guides (an input's masks) it gets them too."""
        finish = getattr(self.task, "finish", None)
        if finish is None:
            return image
        return finish(image, content, guides) if guides else finish(image, content)

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

    def memory_estimate(self, content_shape: tuple[int, int]) -> memory.MemoryEstimate:
        """What optimising images of this input size (H, W) needs at the output level."""
        return self.memory_estimate_at(tuple(self.task.canvas(torch.empty(1, 3, *content_shape, device="meta"))))

    def batch_size(self, content_shape: tuple[int, int], jobs: int) -> int:
        """Images of this size to optimise at once, the one rule: ``execution.batch_size`` if
        set; else on a GPU as many as fit in free memory now; else (a CPU) one, so a CPU
        result never depends on which images shared its batch. At most ``jobs``, at least 1."""
        requested = self.execution.batch_size
        if requested is not None:
            return max(1, min(requested, jobs))
        if self.device.type != "cuda":
            return 1
        return memory.choose_batch_size(self.memory_estimate(content_shape), self.device, jobs)

    def tile_size(self, canvas: tuple[int, int], batch: int) -> int | None:
        """The tile size images of ``canvas`` are evaluated in (None: whole). ``execution.tile_size``
        if set; else a size forced by the out-of-memory fallback; else whole while the batch
        fits in the device's free memory (on a CPU, its available RAM), the largest tile that
        fits when not. Rounded down to a multiple of the network's stride."""
        requested = self.execution.tile_size or self.forced_tile
        free = None
        if requested is None:
            free = memory.free_memory(self.device)
            if self.memory_estimate_at(canvas).total(batch) <= free * memory.HEADROOM:
                return None
        geometry = self.objective.geometry
        reasons = self.objective.untileable()
        if reasons:
            if requested is None:
                return None  # let it run whole; the out-of-memory fallback says so if it does not fit
            raise OutOfMemory(f"cannot evaluate {canvas[1]}x{canvas[0]} px in tiles: {reasons[0]}")
        if requested is None:
            requested = memory.choose_tile(self.objective, canvas, self.optimizer, self.numerics, free,
                                           geometry.stride, geometry.halo)
        size = max(geometry.stride, requested // geometry.stride * geometry.stride)
        return size if max(canvas) > size else None

    def smaller_tile(self, canvas: tuple[int, int]) -> bool:
        """After running out of memory: evaluate images of ``canvas`` in tiles half the size of
        the last try. False when they cannot be tiled or are already at the smallest tile."""
        geometry = self.objective.geometry
        if self.objective.untileable():
            return False
        current = self.forced_tile or self.objective.tile_size or max(canvas)
        half = current // 2 // geometry.stride * geometry.stride
        if half < geometry.stride:
            return False
        self.forced_tile = half
        return True

    def memory_estimate_at(self, canvas: tuple[int, int]) -> memory.MemoryEstimate:
        """What optimising images of canvas (H, W) needs."""
        return memory.estimate(self.objective, tuple(canvas), self.optimizer, self.numerics)

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
        guides: Sequence[Mapping[str, torch.Tensor]] | None = None,
        starts: Sequence[torch.Tensor] | None = None,
        anchors: Sequence[torch.Tensor] | None = None,
        iterations: int | None = None,
    ) -> list[Result | RvgenError]:
        """Make one result per content (each (1, 3, H, W) in [0, 1], all the same size, already
        at the output size), optimised together.
        ``starts`` (one (1, 3, H, W) image per content, at the canvas size) replaces the task's
        starting image and the pyramid: the images are optimised at the output size only, for
        ``iterations`` (default: the optimiser's), from there (a video frame from the previous
        result, warped). ``anchors`` (one (1, 4, H, W) per content: RGB and a weight per pixel)
        are the targets of terms on :data:`~rvgen.engine.objective.ANCHOR`; without them those
        terms weigh nothing. Returns, in order, a :class:`Result` or the
        :class:`~rvgen.errors.RvgenError` that ended that image; the others are unaffected.
        ``guides``: one mapping per content of its guides (masks, (1, 1, h, w) in [0, 1], any
        size), for terms with a ``guide`` (:mod:`rvgen.engine.guides`) and the task's ``finish``.
        ``callback(index, progress)`` reports each image's iterations, counted over all levels.
        Each result's ``seconds`` is the whole batch's time (its images were made together);
        ``iterations`` and ``evaluations`` add up all levels; with a pyramid, ``initial_loss``
        is the loss of the last level's start (the upsampled coarse result).
        Raises ``torch.OutOfMemoryError`` when the batch does not fit (see
        :func:`rvgen.engine.fallback.iter_with_fallback`).
        """
        if not contents:
            return []
        started = time.perf_counter()
        variations = list(variations) if variations is not None else [0] * len(contents)
        content = self._batch_of(contents, variations)
        canvas = tuple(self.task.canvas(content[:1]))
        guide_of = self._set_guides(guides, len(contents), tuple(content.shape[-2:]))
        self.objective.tile_size = self.tile_size(canvas, len(contents))
        factors, budgets = self._schedule(canvas, single=starts is not None, iterations=iterations)
        anchor = self._anchors(anchors, content.shape[0], canvas)
        total = sum(budgets)
        errors: list[RvgenError | None] = [None] * len(contents)
        totals = {"iterations": [0] * len(contents), "evaluations": [0] * len(contents)}
        history: list[list[tuple[int, float]]] = [[] for _ in contents]
        adapted = self._adapt_references(content) if self._adapted else {}
        x = None
        outcomes: list[Result | RvgenError] = []
        for level, (factor, budget) in enumerate(zip(factors, budgets)):
            shape = scaled(canvas, factor)
            level_content = resize(content, scaled(tuple(content.shape[-2:]), factor))
            self._set_level_targets(factor, shape, level_content, adapted, anchor)
            start = self._start(level_content, variations, shape)
            self.objective.reset_weights()
            self.objective.auto_weight(start)
            if starts is not None:
                x0 = torch.cat([s.to(self.device, torch.float32) for s in starts])
            else:
                x0 = start if x is None else self._upsample(x, start, shape)
            offset = sum(budgets[:level])
            report, snapshot_at = None, None
            if callback is not None:
                report = _offset_callback(callback, offset, total, canvas, content,
                                          lambda i, image: self._finish(image, content[i : i + 1], guide_of(i)),
                                          (level + 1, len(factors), max(shape)))
                snapshot_at = self._snapshots(offset)
            config = replace(self.optimizer, iterations=budget, history=memory.history_for(shape, self.optimizer.history))
            outcomes = optimize_batch(self.objective, x0, config, report,
                                      snapshot_at)
            images = []
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, RvgenError):
                    errors[i] = errors[i] or outcome
                    images.append(x0[i : i + 1])
                    continue
                totals["iterations"][i] += outcome.iterations
                totals["evaluations"][i] += outcome.evaluations
                history[i] += [(offset + it, loss) for it, loss in outcome.history]
                images.append(outcome.image)
            x = torch.cat(images)
        final: list[Result | RvgenError] = []
        for i, outcome in enumerate(outcomes):
            if errors[i] is not None:
                final.append(errors[i])
                continue
            outcome.iterations = totals["iterations"][i]
            outcome.evaluations = totals["evaluations"][i]
            outcome.history = history[i]
            outcome.image = self._finish(outcome.image, content[i : i + 1], guide_of(i))
            outcome.seconds = time.perf_counter() - started  # the whole batch's time, setup included
            final.append(outcome)
        return final

    def _batch_of(self, contents: Sequence[torch.Tensor], variations: Sequence[int]) -> torch.Tensor:
        """The contents as one (B, 3, H, W) float32 batch on the device; they must share a size."""
        if len(variations) != len(contents):
            raise ValueError("one variation per content")
        sizes = {tuple(c.shape[-2:]) for c in contents}
        if len(sizes) != 1:
            raise ValueError(f"a batch needs inputs of one size, got {sorted(sizes)}; group them by size")
        return torch.cat([c.to(self.device, torch.float32) for c in contents])

    def _schedule(self, canvas: tuple[int, int], single: bool, iterations: int | None) -> tuple[list[float], list[int]]:
        """The pyramid's levels (scale factors, smallest first) and iterations at each; ``single``:
        the output size alone (a batch given its starting images)."""
        iterations = iterations or self.optimizer.iterations
        if single:
            return [1.0], [iterations]
        factors = self.pyramid.levels(canvas, self.min_side)
        return factors, self.pyramid.budgets(len(factors), iterations)

    def _set_level_targets(self, factor: float, shape: tuple[int, int], content: torch.Tensor,
                           adapted: Mapping[str, torch.Tensor], anchor: torch.Tensor | None) -> None:
        """Every target of the level at ``factor``: the references', the adapted references',
        the inputs' (``content`` at this level) and the anchors' (at ``shape``)."""
        self._use_references(factor)
        if adapted:
            self.objective.set_targets({k: resize(v, scaled(tuple(v.shape[-2:]), factor)) for k, v in adapted.items()})
        if "input" in self.objective.target_names:
            self.objective.set_targets({"input": content})
        if anchor is not None:
            self.objective.set_targets({ANCHOR: resize(anchor, shape)})

    def _snapshots(self, offset: int) -> Callable[[int], bool] | None:
        """Whether a level's iteration (after ``offset`` of the levels below) hands out its image."""
        if self.snapshot_every <= 0:
            return None
        every = self.snapshot_every
        return lambda it: (offset + it) % every == 0

    def _anchors(self, anchors: Sequence[torch.Tensor] | None, count: int, canvas: tuple[int, int]) -> torch.Tensor | None:
        """The batch's anchors at the canvas size (weight 0 everywhere where none were
        given), or None when no term compares with an anchor."""
        if ANCHOR not in self.objective.target_names:
            return None
        if anchors is None:
            return torch.zeros(count, 4, *canvas, device=self.device)
        if len(anchors) != count:
            raise ValueError("one anchor per content")
        return torch.cat([g.to(self.device, torch.float32) for g in anchors])

    def _set_guides(self, guides: Sequence[Mapping[str, torch.Tensor]] | None, count: int,
                    shape: tuple[int, int]) -> Callable[[int], dict[str, torch.Tensor]]:
        """Hand a batch's guides to the objective, each resampled to the inputs' ``shape``;
        returns image ``i``'s guides (for ``finish``)."""
        if not guides:
            if self.objective.guide_names:
                raise ValueError(f"guides missing: {sorted(self.objective.guide_names)}")
            self.objective.set_guides({})
            return lambda i: {}
        if len(guides) != count:
            raise ValueError("one mapping of guides per content")
        names = sorted(guides[0])
        if any(sorted(g) != names for g in guides):
            raise ValueError("every content of a batch needs the same guides")
        stacked = {name: torch.cat([resize_guide(g[name].to(self.device, torch.float32), shape) for g in guides])
                   for name in names}
        self.objective.set_guides(stacked)
        return lambda i: {name: g[i : i + 1] for name, g in stacked.items()}

    def _upsample(self, x: torch.Tensor, start: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """A coarser level's result ``x`` as the start of the level of ``shape``: upsampled and,
        with ``pyramid.upsample_detail``, plus the detail that upsampling cannot make, taken from
        the task's own starting image at this level (``start - up(down(start))``: for style
        transfer from the photo, the photo's finest edges, which the coarse levels had no room
        for and the fine level would otherwise need many iterations to draw again)."""
        up = resize(x, shape)
        if not self.pyramid.upsample_detail:
            return up
        detail = start - resize(resize(start, tuple(x.shape[-2:])), shape)
        return (up + detail).clamp(0, 1)

    def run(
        self,
        content: torch.Tensor,
        variation: int = 0,
        callback: Callable[[Progress], None] | None = None,
        guides: Mapping[str, torch.Tensor] | None = None,
    ) -> Result:
        """Make one result from ``content`` (1, 3, H, W) in [0, 1], already at the output size
        (with its ``guides``, if the objective uses some).

        Raises the :class:`~rvgen.errors.RvgenError` that ended it, if one did.
        """
        extra = {} if guides is None else {"guides": [guides]}
        (outcome,) = self.run_batch([content], [variation], None if callback is None else lambda i, p: callback(p),
                                    **extra)
        if isinstance(outcome, RvgenError):
            raise outcome
        return outcome


def _offset_callback(callback: BatchCallback, offset: int, total: int, canvas: tuple[int, int],
                     content: torch.Tensor, finish: Callable, level: tuple[int, int, int]) -> BatchCallback:
    """Progress of one pyramid level (``level``: its index from 1, the count, its long side),
    counted over all levels; a snapshot at the canvas size, finished (``finish(i, image)``)."""

    def report(i: int, p: Progress) -> None:
        image = p.image
        if image is not None:
            image = finish(i, resize(image, canvas))
        callback(i, Progress(offset + p.iteration, total, p.loss, image, Level(*level, p.iteration, p.iterations)))

    return report
