"""Pixel optimisation with L-BFGS or Adam. The image is the only parameter."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rvgen.engine.objective import Objective
from rvgen.errors import OptimizationError

DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "lbfgs"
    iterations: int = 300
    lr: float | None = None
    history: int = 50
    line_search: bool = True

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.name]


@dataclass(frozen=True)
class Progress:
    iteration: int
    iterations: int
    loss: float


@dataclass
class Result:
    image: torch.Tensor
    loss: float
    initial_loss: float
    parts: dict[str, float]
    iterations: int
    seconds: float


def _total(objective: Objective, x: torch.Tensor) -> tuple[float, dict[str, float]]:
    with torch.no_grad():
        total, parts = objective(x)
    return float(total.sum()), {k: float(v.sum()) for k, v in parts.items()}


def optimize(
    objective: Objective,
    x0: torch.Tensor,
    config: OptimizerConfig,
    callback: Callable[[Progress], None] | None = None,
) -> Result:
    """Optimise the pixels of ``x0`` (B, 3, H, W) to minimise ``objective``.

    Raises :class:`OptimizationError` when the loss stops being finite.
    """
    start = time.perf_counter()
    x = x0.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    losses: list[float] = []

    def evaluate(opt: torch.optim.Optimizer, iteration: int) -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        total, _ = objective(x)
        loss = total.sum()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise OptimizationError(f"the loss became {value} at iteration {iteration}")
        loss.backward()
        losses.append(value)
        if callback is not None:
            callback(Progress(min(iteration, config.iterations), config.iterations, value))
        return loss.detach()

    if config.name == "lbfgs":
        # One step() runs every iteration: L-BFGS keeps its line search and curvature state
        # consistent only within a call. The closure reports progress per evaluation.
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [x],
            lr=config.learning_rate,
            max_iter=config.iterations,
            max_eval=config.iterations * (2 if config.line_search else 1) + 1,
            history_size=config.history,
            line_search_fn="strong_wolfe" if config.line_search else None,
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )
        opt.step(lambda: evaluate(opt, opt.state[x].get("n_iter", 0) + 1))
        iterations = opt.state[x].get("n_iter", 0)
    elif config.name == "adam":
        opt = torch.optim.Adam([x], lr=config.learning_rate)
        for i in range(config.iterations):
            evaluate(opt, i + 1)
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        iterations = config.iterations
    else:
        raise ValueError(f"unknown optimizer {config.name!r}")
    final, parts = _total(objective, x.detach())
    if not math.isfinite(final):
        raise OptimizationError(f"the final loss is {final}")
    return Result(
        image=x.detach().clamp(0, 1),
        loss=final,
        initial_loss=losses[0] if losses else final,
        parts=parts,
        iterations=iterations,
        seconds=time.perf_counter() - start,
    )
