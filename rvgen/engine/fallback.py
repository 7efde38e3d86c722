"""Running many inputs through one :class:`~rvgen.engine.synth.Synthesizer` in batches.

Inputs are grouped by size (a batch is one tensor), each group is cut into batches of the
size :meth:`~rvgen.engine.synth.Synthesizer.batch_size` gives, and each batch is
optimised at once. When a batch runs out of CUDA memory anyway, it is split in halves and
retried, down to single images; an image that does not fit alone is evaluated in tiles,
halving the tile until it fits (:mod:`rvgen.engine.tiling`); one that still does not gets a one-line
:class:`~rvgen.errors.OutOfMemory` error and the others go on. A smaller batch size that
worked is kept for the rest of the group.

This is what a device worker calls::

    for index, outcome in iter_with_fallback(synth, contents, variations, callback):
        ...  # write outcome (a Result) or record it (an RvgenError) for job `index`
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from rvgen.engine.optimize import BatchCallback, Result
from rvgen.engine.synth import Synthesizer
from rvgen.errors import OutOfMemory, RvgenError

Outcome = Result | RvgenError


def group_by_size(contents: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of ``contents`` grouped by (H, W), groups in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, content in enumerate(contents):
        groups.setdefault(tuple(content.shape[-2:]), []).append(i)
    return list(groups.values())


def release_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so a smaller batch can fit."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def iter_with_fallback(
    synth: Synthesizer,
    contents: Sequence[torch.Tensor],
    variations: Sequence[int] | None = None,
    callback: BatchCallback | None = None,
    batch_size: int | None = None,
    on_batch: Callable[[list[int]], None] | None = None,
    guides: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> Iterator[tuple[int, Outcome]]:
    """Optimise every content, yielding ``(index, outcome)`` as each batch finishes.

    ``contents`` are (1, 3, H, W) tensors at the output size, in any mix of sizes;
    ``variations`` the variation of each (default 0); ``callback(index, progress)`` gets
    indices into ``contents``. ``batch_size`` overrides the synthesizer's rule.
    ``on_batch(indices)`` is called before each batch starts (for progress displays).
    ``guides``: each content's guides (masks), when the objective uses some.
    Only CUDA out-of-memory errors are caught here; any other exception of a batch
    propagates (the worker decides whether to retry its images one by one).
    """
    variations = list(variations) if variations is not None else [0] * len(contents)
    for group in group_by_size(contents):
        shape = tuple(contents[group[0]].shape[-2:])
        synth.forced_tile = None  # a tile forced by running out of memory holds for its size only
        size = batch_size or synth.batch_size(shape, len(group))
        pending = list(group)
        while pending:
            chunk, pending = pending[:size], pending[size:]
            if on_batch is not None:
                on_batch(chunk)
            report = None if callback is None else _mapped(callback, chunk)
            try:
                extra = {} if guides is None else {"guides": [guides[i] for i in chunk]}
                outcomes = synth.run_batch([contents[i] for i in chunk], [variations[i] for i in chunk], report,
                                           **extra)
            except torch.OutOfMemoryError:
                release_memory(synth.device)
                if len(chunk) == 1:
                    h, w = synth.task.canvas(contents[chunk[0]])
                    if synth.smaller_tile((h, w)):  # evaluate it in smaller tiles and try again
                        pending = chunk + pending
                        continue
                    tiles = f" in tiles of {synth.forced_tile} px" if synth.forced_tile else ""
                    yield chunk[0], OutOfMemory(
                        f"out of memory on {synth.device} at {w}x{h} px even alone{tiles}; "
                        "try a smaller output.size or optimizer.precision = \"bf16\""
                    )
                    continue
                size = max(1, len(chunk) // 2)
                pending = chunk + pending
                continue
            yield from zip(chunk, outcomes)


def run_with_fallback(
    synth: Synthesizer,
    contents: Sequence[torch.Tensor],
    variations: Sequence[int] | None = None,
    callback: BatchCallback | None = None,
    batch_size: int | None = None,
) -> list[Outcome]:
    """:func:`iter_with_fallback`, collected: one outcome per content, in order."""
    outcomes: list[Outcome | None] = [None] * len(contents)
    for index, outcome in iter_with_fallback(synth, contents, variations, callback, batch_size):
        outcomes[index] = outcome
    return outcomes  # type: ignore[return-value]


def _mapped(callback: BatchCallback, chunk: list[int]) -> BatchCallback:
    return lambda i, progress: callback(chunk[i], progress)
