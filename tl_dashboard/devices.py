"""Which device a run trains on: ``resolve_device`` turns ``--device`` into a ``torch.device`` (checked),
``available_devices`` lists the choices for the UI. Re-exported by ``engine`` for older imports."""

from __future__ import annotations

from typing import Any

import torch

from .config import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit name is checked and used."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name}: not a device name. Use auto, cpu, cuda, cuda:N or mps.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine. Use --device auto or cpu.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine. Use --device auto or cpu.")
    return dev


def available_devices() -> dict[str, Any]:
    """What this machine can train on, for the UI: device choices and how many GPUs."""
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())
    choices = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else []) + (["mps"] if mps else [])
    return {
        "choices": choices,
        "cuda_count": n_cuda,
        "mps": mps,
        "auto": str(resolve_device("auto")),
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(n_cuda)],
    }
