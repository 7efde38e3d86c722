"""Which devices to run on: ``--gpus``, ``--devices``, or everything this machine has.

Every device is checked before any work starts: a GPU index that does not exist, or CUDA
asked for where there is none, is a usage error (exit 2) naming what the machine has.
"""

from __future__ import annotations

from rvgen.errors import UsageError


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def check_device(spec: str, flag: str = "--devices") -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` checked against this machine, in canonical form."""
    import torch

    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"{flag} {spec}: not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {spec}: CUDA is not available on this machine (torch {torch.__version__})")
        count = torch.cuda.device_count()
        index = device.index or 0
        if index >= count:
            raise UsageError(f"{flag} {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        return f"cuda:{index}"
    if device.type == "mps":
        if not _mps_available():
            raise UsageError(f"{flag} {spec}: MPS is not available on this machine")
        return "mps"
    if device.type != "cpu":
        raise UsageError(f"{flag} {spec}: unsupported device type {device.type!r}")
    return "cpu"


def default_devices() -> list[str]:
    """Every visible GPU, else Apple's MPS, else the CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        return ["mps"]
    return ["cpu"]


def resolve_devices(gpus: str | None = None, devices: str | None = None) -> list[str]:
    """The devices to start workers on, from ``--gpus 0,1`` or ``--devices cuda:0,cpu``."""
    if gpus is not None and devices is not None:
        raise UsageError("--gpus and --devices: give one or the other")
    if gpus is not None:
        specs, flag = [], "--gpus"
        for part in (p.strip() for p in gpus.split(",")):
            if not part.isdigit():
                raise UsageError(f"--gpus {gpus}: expected GPU indices such as 0,1")
            specs.append(f"cuda:{part}")
    elif devices is not None and devices.strip() != "auto":
        specs, flag = [p.strip() for p in devices.split(",") if p.strip()], "--devices"
    else:
        return default_devices()
    if not specs:
        raise UsageError(f"{flag}: no devices given")
    resolved = [check_device(spec, flag) for spec in specs]
    seen = {d for d in resolved if resolved.count(d) > 1}
    if seen:
        raise UsageError(f"{flag}: {', '.join(sorted(seen))} given twice; use --workers for several workers per device")
    return resolved
