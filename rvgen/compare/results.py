"""What a comparison holds: its columns, recipes, inputs, scored results and failures, and the
per-column summary (mean, spread, paired difference from a baseline column)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rvgen.compare.plan import Column
from rvgen.recipe import Recipe
from rvgen.tasks import Metric


@dataclass
class Scored:
    """One result of a comparison: the column, the input, the image and its scores."""

    column: int
    input: str
    image: torch.Tensor
    scores: dict[str, float]
    seconds: float
    loss: float


@dataclass
class Comparison:
    task: str
    columns: list[Column]
    recipes: list[Recipe]
    inputs: list[tuple[str, str]]  # (source, short name)
    metrics: tuple[Metric, ...]  # the task's, headline first; may be empty
    outcomes: list[Scored] = field(default_factory=list)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (column, input, reason)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @property
    def headline(self) -> str | None:
        """The task's first metric, which the paired differences and the sheet show."""
        return self.metrics[0].name if self.metrics else None

    def scores(self, column: int, metric: str) -> list[float]:
        return [o.scores[metric] for o in self.outcomes if o.column == column]

    def baseline(self, column: int) -> int:
        """The column a column is compared with: the first backbone's at the same layer and seed."""
        col = self.columns[column]
        for b, other in enumerate(self.columns):
            if other.layer == col.layer and other.seed == col.seed:
                return b
        for b, other in enumerate(self.columns):
            if other.layer == col.layer:
                return b
        return 0

    def summary(self) -> list[dict[str, Any]]:
        """Per column: mean, standard deviation and count of every metric, and the headline
        metric's mean paired difference (same inputs) from its :meth:`baseline` column, with
        the standard error of that difference."""
        headline = self.headline
        rows = []
        for c, column in enumerate(self.columns):
            b = self.baseline(c)
            base = {o.input: o.scores[headline] for o in self.outcomes if headline is not None and o.column == b}
            row: dict[str, Any] = {"column": column.label, "backbone": column.spec, "seed": column.seed,
                                   "layer": column.layer, "backbone_layer": column.actual_layer,
                                   "n": sum(1 for o in self.outcomes if o.column == c)}
            for name in self.metric_names:
                mean, std, n = spread(self.scores(c, name))
                row[name] = {"mean": mean, "std": std, "n": n}
            diffs = [o.scores[headline] - base[o.input] for o in self.outcomes
                     if headline is not None and o.column == c and o.input in base]
            mean, std, n = spread(diffs)
            row["delta"] = {"metric": headline, "baseline": self.columns[b].label, "mean": mean,
                            "se": std / math.sqrt(n) if n else float("nan"), "n": n}
            row["seconds"] = sum(o.seconds for o in self.outcomes if o.column == c)
            rows.append(row)
        return rows


def spread(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count; NaN mean for none."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


