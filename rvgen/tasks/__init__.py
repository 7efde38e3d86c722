"""Tasks turn a recipe's options into an objective, a starting image and an output size,
and say how their results are scored (for ``rvgen compare``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rvgen.engine.objective import Term
from rvgen.params import Param


def white_noise(shape: tuple[int, int], generator: torch.Generator, amplitude: float = 0.1) -> torch.Tensor:
    """Mid-grey plus uniform white noise, (1, 3, H, W), drawn on the CPU from ``generator``."""
    h, w = shape
    return 0.5 + amplitude * (torch.rand((1, 3, h, w), generator=generator) * 2 - 1)


@dataclass(frozen=True)
class Metric:
    """A score a task gives its results: ``name`` (the key :meth:`Task.score` returns), a
    ``label`` for tables, whether higher is better, and the decimals tables show."""

    name: str
    label: str
    higher_is_better: bool
    digits: int = 3


class Task:
    """Base class of task plugins.

    A task reads its validated options and the backbone's class (whose ``default_layers``
    fill layer options the recipe leaves out), and says:

    - :meth:`references`: images besides the input that it uses, as ``{name: (path or sample,
      long side)}``, the long side in pixels (an int), a fraction of the output size (a
      float) or None for the output size;
    - :meth:`adapted_references` and :meth:`prepare_reference`: references made anew for
      each input (none by default: a reference's targets are computed once per run);
    - :meth:`derived_references`: targets made from the input alone by
      :meth:`prepare_reference` (a greyscale or blurred copy), with no file;
    - :meth:`terms`: the objective, as :class:`~rvgen.engine.Term` objects;
    - :meth:`canvas`: the size of the result, given the input at the output size;
    - :meth:`init`: the starting image;
    - :meth:`finish`: a post-process of each result (none by default);
    - :meth:`guides`, :meth:`guide_patterns`: masks read for each input (none by default), for
      terms with a ``guide`` and for ``finish``;
    - :meth:`variations`: how many different results to make per input;
    - :attr:`metrics` and :meth:`score`: how ``rvgen compare`` scores a result (none by default);
    - :attr:`layer_option`: the option ``rvgen compare --layers`` sweeps (none by default).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    metrics: ClassVar[tuple[Metric, ...]] = ()
    """The scores :meth:`score` returns, headline first; empty: results are not scored."""
    layer_option: ClassVar[str | None] = None
    """The name of the param (of kind ``layer`` or ``layers``) that ``rvgen compare --layers A,B``
    sets, one column per layer (VGG names mapped through each backbone's ``layer_aliases``);
    None: this task takes no ``--layers``."""

    def __init__(self, options: Mapping[str, Any], default_layers: Mapping[str, list[str]]):
        self.options = dict(options)
        self.default_layers = default_layers

    def layers_option(self, key: str, role: str) -> list[str]:
        value = self.options.get(key)
        return list(value) if value else list(self.default_layers[role])

    def references(self) -> dict[str, tuple[str, int | float | None]]:
        return {}

    def adapted_references(self) -> frozenset[str]:
        """The references :meth:`prepare_reference` adapts to each input; their targets are
        computed per batch, one per image. Empty by default: every reference is fixed, its
        targets computed once per run."""
        return frozenset()

    def derived_references(self) -> frozenset[str]:
        """Names of targets made from the input alone, with no file: terms (and ``[[terms]]``)
        may compare with them as with a reference, and :meth:`prepare_reference` makes each
        one per input, given the input as both ``image`` and ``content``. Empty by default."""
        return frozenset()

    def prepare_reference(self, name: str, image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """Reference ``name`` (1, 3, h, w) as the terms see it for one input ``content``
        (1, 3, H, W, at the output size); called only for :meth:`adapted_references` and
        :meth:`derived_references` (whose ``image`` is ``content``), on the run's device, and
        must keep the reference's size."""
        return image

    def finish(self, result: torch.Tensor, content: torch.Tensor,
               guides: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The result (1, 3, H, W) in [0, 1] as it is handed out, given its input at the output
        size (and its :meth:`guides`, when it has some); applied to every result and snapshot
        after optimising. The default returns it."""
        return result

    def guides(self, rel: str, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """The guides (masks, each (1, 1, H, W) in [0, 1]) of the input named ``rel`` (relative
        to ``--input``), given the input at the output size; an
        :class:`~rvgen.errors.ImageError` makes that image fail (a mask missing). None by default."""
        return {}

    def guide_patterns(self) -> dict[str, str]:
        """The files :meth:`guides` reads, by name, as path patterns with ``{stem}`` and
        ``{relpath}`` (:func:`rvgen.tasks.masks.mask_path` fills them in for an input); their
        hashes go in each result's sidecar, so a changed mask redoes the image. None by default."""
        return {}

    def check_references(self, images: Mapping[str, torch.Tensor]) -> None:
        """Raise a one-line :class:`~rvgen.errors.RecipeError` when a loaded reference image
        cannot serve (a painting's mask that is all black). The default accepts them all."""

    def terms(self) -> list[Term]:
        raise NotImplementedError

    def variations(self) -> int:
        return 1

    def canvas(self, content: torch.Tensor) -> tuple[int, int]:
        return tuple(content.shape[-2:])

    def init(self, content: torch.Tensor, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        return white_noise(shape, generator)

    def score(self, result: torch.Tensor, content: torch.Tensor,
              references: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Every metric of :attr:`metrics` for one result (1, 3, H, W), given the input at the
        output size and the reference images by name (``style``), all in [0, 1] on the CPU."""
        return {}
