"""A run's model on disk: ``model.safetensors`` + ``labels.json`` + ``preprocessing.json``.

Every file is written atomically (temp file + rename), so a reader never sees half a checkpoint.

Example:
    >>> model, classes, meta = load_checkpoint("runs/<run id>")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "bn_eps"]


def bn_eps(model: nn.Module) -> float | None:
    """The BatchNorm eps in use (the bundled weights need 1e-3); stored so a checkpoint reloads exactly."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return float(m.eps)
    return None


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str], dict[str, Any]]:
    """Rebuild a run's model from its folder: ``(model in eval mode, class names, preprocessing meta)``."""
    import timm
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "preprocessing.json").read_text())
    classes = json.loads((run_dir / "labels.json").read_text())
    model = timm.create_model(meta["model"], pretrained=False, num_classes=len(classes), drop_rate=0.0)
    if meta.get("bn_eps"):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = meta["bn_eps"]
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.to(device).eval(), classes, meta


def save_checkpoint(model: nn.Module, out_dir: Path, classes: Sequence[str], meta: dict[str, Any], name: str = "model.safetensors") -> Path:
    """Model as safetensors + labels.json + preprocessing.json, each written atomically."""
    from safetensors.torch import save as st_save

    from .runs import atomic_write_bytes, atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out_dir / name, st_save(sd, metadata={"model": str(meta.get("model", ""))}))
    atomic_write_json(out_dir / "labels.json", list(classes))
    atomic_write_json(out_dir / "preprocessing.json", meta)
    return out_dir / name
