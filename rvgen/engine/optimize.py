"""Pixel optimisation with L-BFGS or Adam. The images are the only parameters.

:func:`optimize_batch` optimises B images of one objective at once: one backbone pass per
evaluation for the whole batch, and every image with its own optimiser state (its own
L-BFGS history and line search, see :mod:`rvgen.engine.lbfgs`; Adam is elementwise), so
an image's result does not depend on the images it shares a batch with. A failure (a loss
that stops being finite) ends that image only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rvgen.engine.lbfgs import Evaluate, batched_lbfgs
from rvgen.engine.objective import Objective
from rvgen.engine.parametrize import Pixels, parametrization
from rvgen.errors import OptimizationError

DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
BOX_PULL = 1.0  # weight of the pull of L-BFGS's out-of-range pixels back into [0, 1]
REPORT_INTERVAL = 0.25  # seconds between Adam progress reports (each one syncs the device)
HISTORY_POINTS = 48  # a result's loss history keeps between this many and twice as many points


@dataclass(frozen=True)
class OptimizerConfig:
    """How the pixels are optimised: the algorithm and its budget. Where it runs (precision,
    batch size) is :class:`~rvgen.engine.precision.ExecutionConfig`; the coarse-to-fine
    levels are :class:`~rvgen.engine.pyramid.PyramidConfig`."""

    name: str = "lbfgs"
    iterations: int = 300
    lr: float | None = None
    history: int = 50
    line_search: bool = True
    parametrization: str = "pixels"
    tolerance: float = 0.0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.name]


@dataclass(frozen=True)
class Level:
    """Where in a coarse-to-fine run an image is: pyramid level ``index`` (1-based, smallest
    first) of ``count``, whose long side is ``side`` px, at ``iteration`` of its ``iterations``."""

    index: int
    count: int
    side: int
    iteration: int
    iterations: int


@dataclass(frozen=True)
class Progress:
    """One image's progress. ``image`` is the image after ``iteration`` (1, 3, H, W), clamped
    to [0, 1], only at the iterations the optimiser was asked to hand it out at (a snapshot);
    otherwise ``None``, so following progress costs no copies. ``level``: the pyramid level
    (set by the synthesizer, whose ``iteration`` counts over all levels)."""

    iteration: int
    iterations: int
    loss: float
    image: torch.Tensor | None = None
    level: Level | None = None


@dataclass
class Result:
    image: torch.Tensor
    loss: float
    initial_loss: float
    parts: dict[str, float]
    iterations: int
    seconds: float
    evaluations: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)
    """(iteration, loss) points along the way, thinned to at most ``2 * HISTORY_POINTS``."""


class LossHistory:
    """(iteration, loss) points of one image, thinned as they come: every point until
    ``2 * limit`` are kept, then every other one, and from then on every ``stride``-th."""

    def __init__(self, limit: int = HISTORY_POINTS):
        self.limit, self.stride, self.points = limit, 1, []

    def add(self, iteration: int, loss: float) -> None:
        if iteration % self.stride:
            return
        self.points.append((iteration, loss))
        if len(self.points) >= 2 * self.limit:
            self.stride *= 2
            self.points = [p for p in self.points if p[0] % self.stride == 0]


BatchCallback = Callable[[int, Progress], None]
"""Called with (index of the image in the batch, its progress)."""

SnapshotAt = Callable[[int], bool]
"""Whether the progress of this iteration (1-based) carries the image (see :class:`Progress`)."""


def final_losses(objective: Objective, x: torch.Tensor) -> tuple[list[float], list[dict[str, float]]]:
    """Each image's total loss and per-term parts at ``x``, as floats."""
    with torch.no_grad():
        total, parts = objective(x)
    totals = total.float().tolist()
    names = list(parts)
    table = torch.stack([torch.as_tensor(parts[k], dtype=torch.float32, device=x.device).expand(x.shape[0])
                         for k in names], dim=1).tolist() if names else [[] for _ in totals]
    return totals, [dict(zip(names, row)) for row in table]


def optimize_batch(
    objective: Objective,
    x0: torch.Tensor,
    config: OptimizerConfig,
    callback: BatchCallback | None = None,
    snapshot_at: SnapshotAt | None = None,
) -> list[Result | OptimizationError]:
    """Optimise the pixels of every image of ``x0`` (B, 3, H, W); one outcome per image.

    With a ``callback``, the progress of the iterations ``snapshot_at(iteration)`` accepts
    carries the image there (only then is one copied off the optimiser)."""
    if callback is None:
        snapshot_at = None
    start = time.perf_counter()
    histories = [LossHistory() for _ in range(x0.shape[0])]

    def record(i: int, progress: Progress) -> None:
        histories[i].add(progress.iteration, progress.loss)
        if callback is not None:
            callback(i, progress)

    param = parametrization(config.parametrization, tuple(x0.shape[-2:]), x0.device)
    if config.name == "lbfgs":
        x, iterations, evaluations, initial, errors = _lbfgs(objective, x0, config, record, snapshot_at, param)
    elif config.name == "adam":
        x, iterations, evaluations, initial, errors = _adam(objective, x0, config, record, snapshot_at, param)
    else:
        raise ValueError(f"unknown optimizer {config.name!r}")
    x = x.clamp(0, 1)
    totals, parts = final_losses(objective, x)
    seconds = time.perf_counter() - start
    outcomes: list[Result | OptimizationError] = []
    for i in range(x.shape[0]):
        if errors[i] is None and not math.isfinite(totals[i]):
            errors[i] = f"the final loss is {totals[i]}"
        if errors[i] is not None:
            outcomes.append(OptimizationError(errors[i]))
            continue
        outcomes.append(Result(
            image=x[i : i + 1].detach(),
            loss=totals[i],
            initial_loss=initial[i] if math.isfinite(initial[i]) else totals[i],
            parts=parts[i],
            iterations=iterations[i],
            seconds=seconds,
            evaluations=evaluations[i],
            history=histories[i].points,
        ))
    return outcomes


def optimize(
    objective: Objective,
    x0: torch.Tensor,
    config: OptimizerConfig,
    callback: Callable[[Progress], None] | None = None,
) -> Result:
    """Optimise one image (1, 3, H, W). Raises :class:`OptimizationError` when it fails."""
    if x0.shape[0] != 1:
        raise ValueError(f"optimize takes one image, got a batch of {x0.shape[0]}; use optimize_batch")
    (outcome,) = optimize_batch(objective, x0, config, None if callback is None else lambda i, p: callback(p))
    if isinstance(outcome, OptimizationError):
        raise outcome
    return outcome


def evaluator(objective: Objective, shape: torch.Size) -> Evaluate:
    """(k, n) points of the batch's rows ``rows`` (None: all) -> their losses (k,) and gradients (k, n).

    L-BFGS moves pixels freely, and from a photo a quarter of them leave [0, 1] within a
    few iterations; clamping only the result then undoes much of the optimisation. So the
    objective is evaluated at the clamped image (what will be saved) plus a quadratic
    pull of out-of-range pixels back to the boundary (where the clamp's zero gradient
    would otherwise strand them). L-BFGS sees that sum, value and gradient alike (a line
    search given one function's value and another's gradient fails); the final loss reported
    is the clamped image's.
    """

    tiled = objective.tile_plan(tuple(shape[-2:])) is not None

    def evaluate(flat: torch.Tensor, rows: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        if tiled:
            return evaluate_tiled(flat, rows)
        x = flat.view(-1, *shape[1:]).detach().requires_grad_(True)
        inside = x.clamp(0, 1)
        with objective.subset(rows):
            total, _ = objective(inside)
        outside = (x - inside).pow(2).flatten(1).mean(1)
        loss = total + BOX_PULL * outside  # the line search needs the function its gradient is of
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad.reshape(x.shape[0], -1)

    def evaluate_tiled(flat: torch.Tensor, rows: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        # The same function, its gradient composed by hand around the tiled objective's:
        # the clamp passes the gradient where 0 < x < 1, as autograd's clamp does (not at 0 or
        # 1 themselves, which a pyramid level's clamped upsampling is full of: passing it there
        # made a tiled pyramid run part from the untiled one), the pull adds 2 (x - clamp) / n.
        x = flat.view(-1, *shape[1:]).detach()
        inside = x.clamp(0, 1)
        with objective.subset(rows):
            total, grad_inside = objective.value_and_grad(inside)
        n = x[0].numel()
        loss = total + BOX_PULL * (x - inside).pow(2).flatten(1).mean(1)
        grad = grad_inside * ((x > 0) & (x < 1)) + BOX_PULL * 2 * (x - inside) / n
        return loss, grad.reshape(x.shape[0], -1)

    return evaluate


def _snapshot(point: torch.Tensor, shape: tuple[int, ...], param=Pixels()) -> torch.Tensor:
    """A copy of one image, (1, 3, H, W) in [0, 1], as the result would be at this point
    (``point``: the optimiser's variable for it)."""
    return param.to_image(point.detach().reshape(1, *shape)).clamp(0, 1).clone()


def reparametrized(evaluate: Evaluate, param, shape: torch.Size) -> Evaluate:
    """``evaluate`` (of flat images) as a function of the flat variables ``z`` of ``param``:
    the images are ``param.to_image(z)`` and the gradient comes back through its adjoint."""
    if isinstance(param, Pixels):
        return evaluate

    def of_z(flat: torch.Tensor, rows: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        z = flat.view(-1, *shape[1:])
        loss, grad = evaluate(param.to_image(z).reshape(z.shape[0], -1), rows)
        return loss, param.adjoint(grad.view(z.shape)).reshape(z.shape[0], -1)

    return of_z


def _lbfgs(objective, x0, config, callback, snapshot_at=None, param=Pixels()):
    shape = x0.shape
    flat = param.from_image(x0.detach()).reshape(shape[0], -1).contiguous()

    def on_iteration(i, state, point):
        if callback is not None:
            iteration = min(state.iterations, config.iterations)
            take = snapshot_at is not None and snapshot_at(iteration)
            image = _snapshot(point, shape[1:], param) if take else None
            callback(i, Progress(iteration, config.iterations, state.loss, image))

    z, states = batched_lbfgs(
        reparametrized(evaluator(objective, shape), param, shape), flat, config.iterations,
        lr=config.learning_rate, history=config.history, line_search=config.line_search,
        tolerance=config.tolerance, on_iteration=on_iteration,
    )
    return (param.to_image(z.view(shape)), [s.iterations for s in states], [s.evaluations for s in states],
            [s.initial_loss for s in states], [s.error for s in states])


def _adam(objective, x0, config, callback, snapshot_at=None, param=Pixels()):
    b = x0.shape[0]
    tiled = objective.tile_plan(tuple(x0.shape[-2:])) is not None
    pixels = isinstance(param, Pixels)  # else the image is param.to_image(x), kept in range by the pull
    evaluate = None if pixels else reparametrized(evaluator(objective, x0.shape), param, x0.shape)
    x = param.from_image(x0.detach()).clone(memory_format=torch.contiguous_format).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=config.learning_rate)
    initial = [math.nan] * b
    errors: list[str | None] = [None] * b
    last_report = time.perf_counter()
    for it in range(1, config.iterations + 1):
        opt.zero_grad(set_to_none=False)
        if evaluate is not None:
            total, grad = evaluate(x.detach().reshape(b, -1), None)
            x.grad = grad.view(x.shape)
        elif tiled:
            total, x.grad = objective.value_and_grad(x.detach())
        else:
            total, _ = objective(x)
            total.sum().backward()
        now = time.perf_counter()
        snapshot = snapshot_at is not None and snapshot_at(it)
        # Reading losses syncs the device, so only at the start, the end, at snapshots and every so often.
        values = None
        if (it == 1 or it == config.iterations or snapshot
                or (callback is not None and now - last_report >= REPORT_INTERVAL)):
            last_report = now
            values = total.detach().float().tolist()
            for i, value in enumerate(values):
                if it == 1:
                    initial[i] = value
                if errors[i] is None and not math.isfinite(value):
                    errors[i] = f"the loss became {value} by iteration {it}"
        opt.step()
        if pixels:
            with torch.no_grad():
                x.clamp_(0, 1)
        if values is not None and callback is not None:  # a snapshot is the image after this step
            for i, value in enumerate(values):
                if errors[i] is None:
                    image = _snapshot(x[i], x.shape[1:], param) if snapshot else None
                    callback(i, Progress(it, config.iterations, value, image))
    return param.to_image(x.detach()), [config.iterations] * b, [config.iterations] * b, initial, errors
