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
    line_search: bool = False

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
    if config.name == "lbfgs":
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [x],
            lr=config.learning_rate,
            max_iter=1,  # one iteration per step(), so progress is reported per iteration
            history_size=config.history,
            line_search_fn="strong_wolfe" if config.line_search else None,
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )
    elif config.name == "adam":
        opt = torch.optim.Adam([x], lr=config.learning_rate)
    else:
        raise ValueError(f"unknown optimizer {config.name!r}")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        total, _ = objective(x)
        loss = total.sum()
        loss.backward()
        return loss.detach()

    initial = None
    for i in range(config.iterations):
        loss = float(opt.step(closure))
        if not math.isfinite(loss):
            raise OptimizationError(f"the loss became {loss} at iteration {i + 1}")
        if initial is None:
            initial = loss
        if config.name == "adam":
            with torch.no_grad():
                x.clamp_(0, 1)
        if callback is not None:
            callback(Progress(i + 1, config.iterations, loss))
    final, parts = _total(objective, x.detach())
    if not math.isfinite(final):
        raise OptimizationError(f"the final loss is {final}")
    return Result(
        image=x.detach().clamp(0, 1),
        loss=final,
        initial_loss=initial if initial is not None else final,
        parts=parts,
        iterations=config.iterations,
        seconds=time.perf_counter() - start,
    )
