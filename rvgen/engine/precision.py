"""Numeric precision and memory layout of the backbone, per device.

``precision = "auto"`` means bf16 autocast on CUDA GPUs that support it and on CPUs that
compute in bf16 natively (AVX512-BF16 or AMX, as :func:`cpu_native_bf16` reads the CPU's
flags), float32 everywhere else: a CPU without them emulates bf16 and runs it several times
slower than float32. Only the backbone runs in the autocast region; Gram matrices, losses,
gradients of the image and the optimiser state are always float32 (fp16/bf16 Grams of
deep layers overflow or lose the small differences the optimiser follows). float32 on
CUDA uses TF32 tensor cores for convolutions and matmuls. On CUDA the backbone also runs
channels-last with cuDNN autotuning (``cudnn.benchmark``): inputs keep one size per run,
so the tuning is paid once. The backbone runs channels-last on the CPU too (:data:`LAYOUTS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU features with which bf16 convolutions run natively (oneDNN uses either)."""

PRECISIONS = ("auto", "fp32", "bf16")
LAYOUTS = ("auto", "channels_last", "contiguous")
"""Memory layouts of the backbone's activations; ``auto`` is channels-last (NHWC) on CUDA and
on the CPU, where oneDNN's convolutions run 10-30% faster in it than in NCHW (most at small
pyramid levels, where NCHW falls back to PyTorch's slow im2col convolution)."""


@dataclass(frozen=True)
class ExecutionConfig:
    """Where and how an optimisation runs, as opposed to what it optimises: the backbone's
    precision (one of :data:`PRECISIONS`), the images per batch (``None``: one at a time on a
    CPU, as many as fit on a GPU; see :meth:`rvgen.engine.synth.Synthesizer.batch_size`) and
    the tile size of large images."""

    precision: str = "auto"
    batch_size: int | None = None
    layout: str = "auto"
    """The backbone's memory layout, one of :data:`LAYOUTS`."""
    tile_size: int | None = None
    """Evaluate images larger than this many pixels (long side) in tiles of it; ``None``: only
    when a whole image does not fit in memory (see :mod:`rvgen.engine.tiling`)."""


@dataclass(frozen=True)
class Numerics:
    """What a device runs the backbone with: the resolved precision and layout."""

    precision: str  # "fp32" or "bf16"
    channels_last: bool

    @property
    def layout(self) -> str:
        """"channels_last" or "contiguous": what a sidecar records."""
        return "channels_last" if self.channels_last else "contiguous"

    @property
    def autocast(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    @property
    def bytes_per_activation(self) -> int:
        return 2 if self.precision == "bf16" else 4


@lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (:data:`CPU_BF16_FLAGS`): torch's own reading of
    the CPU where it has one (``torch.cpu.get_capabilities``, torch >= 2.6), else the flags of
    ``/proc/cpuinfo``; False when neither says."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            found = capabilities()
            return any(bool(found.get(flag)) for flag in CPU_BF16_FLAGS)
        except Exception:  # noqa: BLE001 - a capability probe must never stop a run
            pass
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


LEGACY_CPU = Numerics(precision="fp32", channels_last=False)
"""What rvgen ran CPU images in before precision and layout were recorded."""


def resolve(precision: str, device: torch.device | str, layout: str = "auto") -> Numerics:
    """The numerics ``precision`` ("auto", "fp32", "bf16") and ``layout`` (:data:`LAYOUTS`) mean
    on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if precision == "auto":
        if cuda:
            bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        else:
            bf16_ok = device.type == "cpu" and cpu_native_bf16()
        precision = "bf16" if bf16_ok else "fp32"
    channels_last = layout == "channels_last" or (layout == "auto" and device.type in ("cuda", "cpu"))
    return Numerics(precision=precision, channels_last=channels_last)


def configure_backends(device: torch.device | str, numerics: Numerics) -> None:
    """Process-wide CUDA settings for fast convolutions: cuDNN autotuning and TF32 for float32.

    A no-op off CUDA. TF32 keeps float32's range with a 10-bit mantissa, the precision the
    backbone's features need for these losses (bf16 has 7 bits and is still visually equal).
    """
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    if numerics.precision == "fp32":
        if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: per-operation precision
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        else:  # pragma: no cover - older torch
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def apply(objective: torch.nn.Module, numerics: Numerics) -> None:
    """Set an :class:`~rvgen.engine.objective.Objective`'s backbone precision and layout."""
    objective.autocast = numerics.autocast
    objective.channels_last = numerics.channels_last
    if numerics.channels_last:
        objective.backbone.to(memory_format=torch.channels_last)
