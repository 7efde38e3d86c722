"""A recipe made ready to run: the task, the frozen backbone and the objective, built once.

A :class:`Synthesizer` is what a worker holds. Building it costs the backbone; the targets
of fixed reference images (the style image's Grams) are computed once by
:meth:`~Synthesizer.set_references`; each :meth:`~Synthesizer.run` then only computes the
input's targets and optimises. It receives tensors, never reads files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from rvgen.engine.objective import Objective
from rvgen.engine.optimize import Progress, Result, optimize
from rvgen.plugins import Registry, get_registry
from rvgen.recipe import Recipe

VARIATION_SEED_STRIDE = 7919


def reference_sources(recipe: Recipe, registry: Registry | None = None, task=None) -> dict[str, tuple[str, int]]:
    """The reference images a recipe's task needs besides the input: name -> (source, long
    side), the long side defaulting to the output size. Builds no network."""
    task = task or recipe.build_task(registry or get_registry())
    size = recipe.output["size"]
    return {name: (src, long_side or size) for name, (src, long_side) in task.references().items()}


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

    def references(self) -> dict[str, tuple[str, int]]:
        """Reference images the task needs besides the input: name -> (source, long side)."""
        return reference_sources(self.recipe, task=self.task)

    def set_references(self, images: Mapping[str, torch.Tensor]) -> None:
        """Compute the targets of the fixed reference images (the style's Grams), once per run."""
        missing = set(self.references()) - set(images)
        if missing:
            raise ValueError(f"reference images missing: {sorted(missing)}")
        self.objective.set_targets({k: v.to(self.device) for k, v in images.items()})

    @property
    def variations(self) -> int:
        return self.task.variations()

    def run(
        self,
        content: torch.Tensor,
        variation: int = 0,
        callback: Callable[[Progress], None] | None = None,
    ) -> Result:
        """Make one result from ``content`` (1, 3, H, W) in [0, 1], already at the output size."""
        content = content.to(self.device)
        if "input" in self.objective.target_names:
            self.objective.set_targets({"input": content})
        seed = int(self.task.options.get("seed", 0)) + VARIATION_SEED_STRIDE * variation
        generator = torch.Generator().manual_seed(seed)
        x0 = self.task.init(content, self.task.canvas(content), generator).to(self.device)
        self.objective.reset_weights()
        self.objective.auto_weight(x0)
        return optimize(self.objective, x0, self.recipe.optimizer, callback)
