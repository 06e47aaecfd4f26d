"""The frozen-prefix feature cache: a model split into frozen prefix -> trainable suffix.

When the first K blocks stay frozen for the whole run (BatchNorm on running statistics) and
augmentation is off, their output never changes: :func:`build_feature_cache` computes it once
per image (inference mode) and only the suffix trains, on the cached tensors. When the cache is
not valid, :class:`FrozenSplit` still lets the frozen prefix run without autograd.

Example:
    >>> split = FrozenSplit(model, blocks, k=3)                                    # doctest: +SKIP
    >>> cache = build_feature_cache(config, model, plan, split, data, fmt, norm, size, device)  # doctest: +SKIP
    >>> cache.used, cache.info["frozen_prefix_blocks"]                            # doctest: +SKIP
    (True, 3)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .layers import Block, FreezePlan
from .preprocess import Normalizer, center_crop

__all__ = ["FrozenSplit", "FeatureCache", "cache_decision", "build_feature_cache", "run_prefix"]


class FrozenSplit:
    """Runs ``model`` as prefix(K frozen blocks) -> suffix, so the prefix can be cached or run without autograd."""

    def __init__(self, model: nn.Module, blocks: Sequence[Block], k: int) -> None:
        self.model, self.blocks, self.k = model, list(blocks), k
        self.body = [b for b in self.blocks if b.kind != "head"]
        self.head_only = k >= len(self.body)
        self.supported = self.head_only or all(b.stage is not None for b in self.body)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        for b in self.body[: self.k]:
            x = b.stage(x)
        return x

    def suffix(self, h: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            return self.model.get_classifier()(h)
        for b in self.body[self.k :]:
            h = b.stage(h)
        return self.model.forward_head(h)


@dataclass
class FeatureCache:
    """The cached prefix outputs (``used``), or why the full path runs (``info['reason']``)."""

    used: bool
    info: dict[str, Any]
    train: torch.Tensor | None = None
    val: torch.Tensor | None = None


def _estimate_cache_bytes(split: FrozenSplit, sample: torch.Tensor, n_images: int) -> tuple[int, tuple[int, ...]]:
    with torch.inference_mode():
        out = split.prefix(sample[:1])
    return int(out[0].numel() * out.element_size() * n_images), tuple(out.shape[1:])


def _has_bn(model: nn.Module, blocks: Sequence[Block]) -> bool:
    mods = dict(model.named_modules())
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for b in blocks for name in b.modules if name in mods for m in mods[name].modules()
    )


def cache_decision(config: Any, model: nn.Module, plan: FreezePlan, split: FrozenSplit) -> tuple[bool, str]:
    """Whether the frozen prefix's output can be cached for this run, and if not, why (one phrase)."""
    if config.feature_cache == "off":
        return False, "the feature cache is turned off for this run"
    if split.k == 0:
        return False, "no frozen prefix to cache (the first block trains)"
    if config.augment:
        return False, "augmentation is on: the frozen blocks see a new crop every epoch, so their output cannot be cached"
    if plan.bn_mode == "train" and _has_bn(model, split.body[: split.k]):
        return False, "BatchNorm in the frozen blocks is set to train, so their output changes every batch"
    if not split.supported:
        return False, f"partial-depth caching is not supported for {config.model}; only head-only caching is"
    return True, ""


@torch.inference_mode()
def run_prefix(
    split: FrozenSplit,
    images: torch.Tensor,
    norm: Normalizer,
    size: int,
    device: torch.device,
    batch: int = 64,
    fmt: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> torch.Tensor:
    """The frozen prefix's output for uint8 ``images`` (centre-cropped, normalised), in batches."""
    outs = []
    for i in range(0, len(images), batch):
        x = fmt(norm(center_crop(images[i : i + batch], size).to(device)))
        outs.append(split.prefix(x))
    return fmt(torch.cat(outs))


def build_feature_cache(
    config: Any,
    model: nn.Module,
    plan: FreezePlan,
    split: FrozenSplit,
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    norm: Normalizer,
    size: int,
    device: torch.device,
    fmt: Callable[[torch.Tensor], torch.Tensor],
    key_parts: dict[str, Any] | None = None,
) -> FeatureCache:
    """Phase: decide, estimate the memory, and compute the prefix once for every image if it fits.

    When the images come from the on-disk store (``imagestore.RowView``) and ``key_parts`` names
    the prefix (``featstore.prefix_key``), the output is read from / written to the persistent
    feature cache: a second run, or a sweep's next run at the same depth, skips the prefix."""
    use, reason = cache_decision(config, model, plan, split)
    info: dict[str, Any] = {"used": False, "frozen_prefix_blocks": split.k, "reason": reason}
    if not use:
        return FeatureCache(False, info)
    model.eval()
    n_bytes, shape = _estimate_cache_bytes(split, norm(center_crop(x_train[:1], size).to(device)), len(x_train) + len(x_val))
    info.update(estimated_mb=round(n_bytes / 2**20, 1), feature_shape=list(shape))
    if n_bytes > config.cache_max_mb * 2**20:
        info["reason"] = (
            f"the feature cache would need {n_bytes / 2**20:.0f} MB, above the {config.cache_max_mb} MB bound; training runs the full path"
        )
        return FeatureCache(False, info)
    t0 = time.perf_counter()
    store = getattr(x_train, "source", None)
    if store is not None and key_parts is not None:  # on disk, shared by later runs (featstore)
        from .featstore import open_features

        def compute(xb: torch.Tensor) -> torch.Tensor:
            return split.prefix(fmt(norm(center_crop(xb, size).to(device))))

        fs = open_features(store, key_parts, compute)
        f_train, f_val = fmt(fs.read(x_train.rows)), fmt(fs.read(x_val.rows))
        info.update(persistent="reused" if fs.hit else "computed and stored", entry=fs.path.name[:12])
    else:
        f_train = run_prefix(split, x_train, norm, size, device, fmt=fmt)
        f_val = run_prefix(split, x_val, norm, size, device, fmt=fmt)
    where = "CPU memory"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if n_bytes > free // 2:  # keep the GPU for training; cached tensors wait in pinned host memory
            f_train, f_val = f_train.cpu().pin_memory(), f_val.cpu().pin_memory()
        else:
            where = "GPU memory"
    info.update(used=True, reason="", build_seconds=round(time.perf_counter() - t0, 3), location=where)
    return FeatureCache(True, info, f_train, f_val)
