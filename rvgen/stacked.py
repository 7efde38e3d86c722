"""Stacked ranVGG: the paper's greedy construction of a random VGG, cached on disk.

A procedure that uses the engine to choose a backbone's weights; the backbone itself knows
nothing of it. :func:`apply` is what the recipe layer calls after building a backbone: it
stacks a random VGG whose options ask for it (``stacked_candidates`` >= 2).

For each conv layer in forward order, several candidate weight sets are drawn; with each,
a reference image is reconstructed from that layer's ReLU (white noise in, L-BFGS on the
scale-free content loss), and the candidate with the lowest final loss is kept before the
next layer is chosen. ``stacked_criterion`` says which loss: the content loss the
reconstruction minimised (``features``, the paper's wording) or the pixel error of the
reconstruction against the reference (``pixels``). Candidate 0 is always the plain network's own draw for that layer,
so a stacked network differs from the plain one (same seed) only where another draw
reconstructed the reference better. Candidate k >= 1 of conv layer l comes from a CPU
generator seeded with (seed, l, k), so the choice is reproducible and independent of how
deep the network is built.

Because the construction is greedy, the first n layers of a deeper stacked network are the
n-layer one: the cache keeps one file per set of inputs, holding as many layers as were
ever chosen, and a deeper build continues from it. The selection runs on the CPU, saving
after every layer, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rvgen import imageio
from rvgen.backbones.vgg import RandomVGG, draw_conv_weight
from rvgen.engine import Objective, OptimizerConfig, Term, optimize
from rvgen.losses.builtin import ContentLoss
from rvgen.tasks import white_noise

ALGORITHM_VERSION = 1
CACHE_ENV = "RVGEN_CACHE_DIR"
SEED_STRIDE = 1_000_003


def cache_dir() -> Path:
    """``$RVGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/rvgen``, else ``~/.cache/rvgen``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rvgen"


@dataclass
class StackRecord:
    """What the construction chose: per conv layer, the candidates' final losses and the index kept."""

    path: Path
    layers: list[str]
    losses: list[list[float]]
    chosen: list[int]
    built: int  # layers chosen in this build (0: all came from the cache)


def candidate_weight(shape: tuple[int, ...], options: dict[str, Any], conv_index: int, k: int) -> torch.Tensor:
    """Candidate ``k`` >= 1 of conv layer ``conv_index`` (0-based, forward order)."""
    seed = (int(options["seed"]) * SEED_STRIDE + conv_index) * SEED_STRIDE + k
    generator = torch.Generator().manual_seed(seed % (2**63))
    return draw_conv_weight(shape, options["init"], options["std"], generator)


def reconstruction_loss(backbone: torch.nn.Module, layer: str, reference: torch.Tensor, iterations: int,
                        criterion: str = "features") -> float:
    """How badly ``reference`` comes back from ``layer`` of ``backbone`` (L-BFGS from fixed noise):
    the final content loss (``features``), or the mean squared pixel error (``pixels``)."""
    objective = Objective(backbone, [Term("content", "content", (layer,))], [ContentLoss()])
    objective.set_targets({"input": reference})
    x0 = white_noise(tuple(reference.shape[-2:]), torch.Generator().manual_seed(0))
    result = optimize(objective, x0, OptimizerConfig(iterations=iterations))
    if criterion == "pixels":
        return float((result.image - reference).double().pow(2).mean())
    return result.loss


def cache_key(backbone: Any, options: dict[str, Any], reference: torch.Tensor) -> str:
    """A hash of everything the choice depends on (not the depth: deeper builds extend shallower ones)."""
    image = (reference.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes()
    data = {
        "algorithm": ALGORITHM_VERSION,
        "architecture": backbone.name,
        "cfg": backbone.cfg_key,
        **{k: options[k] for k in ("seed", "init", "pooling", "normalize", "stacked_candidates",
                                   "stacked_iterations", "stacked_size")},
        # absent from version-1 keys when features, so caches made before the option stay valid
        **({"criterion": options["stacked_criterion"]}
           if options.get("stacked_criterion", "features") != "features" else {}),
        "std": options["std"] if options["init"] == "normal" else None,
        "reference": hashlib.sha256(image).hexdigest(),
        "reference_shape": list(reference.shape),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def _load(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(data, dict) and {"weights", "losses", "chosen", "layers"} <= data.keys():
            return data
    except FileNotFoundError:
        pass
    except Exception:  # a truncated or foreign file is rebuilt, never trusted
        pass
    return {"weights": [], "losses": [], "chosen": [], "layers": []}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)


def stack(backbone: Any, options: dict[str, Any]) -> StackRecord:
    """Replace the conv weights of a freshly drawn random VGG ``backbone`` with the stacked choice."""
    reference = imageio.load_image(options["stacked_reference"], options["stacked_size"])
    path = cache_dir() / "stacked" / f"{backbone.name}-{cache_key(backbone, options, reference)}.pt"
    data = _load(path)
    backbone.requires_grad_(False)
    built = 0
    for n, (index, conv) in enumerate(backbone.convs()):
        layer = backbone.names[index + 1] if index + 1 < len(backbone.names) else backbone.names[index]
        if n < len(data["weights"]) and tuple(data["weights"][n].shape) == tuple(conv.weight.shape):
            with torch.no_grad():
                conv.weight.copy_(data["weights"][n])
            continue
        del data["weights"][n:], data["losses"][n:], data["chosen"][n:], data["layers"][n:]
        shape = tuple(conv.weight.shape)
        candidates = [conv.weight.detach().clone()]
        candidates += [candidate_weight(shape, options, n, k) for k in range(1, options["stacked_candidates"])]
        losses = []
        for weight in candidates:
            with torch.no_grad():
                conv.weight.copy_(weight)
            losses.append(reconstruction_loss(backbone, layer, reference, options["stacked_iterations"],
                                              options.get("stacked_criterion", "features")))
        best = min(range(len(losses)), key=losses.__getitem__)
        with torch.no_grad():
            conv.weight.copy_(candidates[best])
        data["weights"].append(candidates[best])
        data["losses"].append(losses)
        data["chosen"].append(best)
        data["layers"].append(layer)
        built += 1
        _save(path, data)
    count = len(backbone.convs())
    return StackRecord(path, data["layers"][:count], data["losses"][:count], data["chosen"][:count], built)


def apply(backbone: Any) -> StackRecord | None:
    """Stack ``backbone`` if it is a random VGG whose options ask for it; its record, or None."""
    if not isinstance(backbone, RandomVGG) or backbone.options.get("stacked_candidates", 0) < 2:
        return None
    backbone.stack_record = stack(backbone, backbone.options)
    return backbone.stack_record
