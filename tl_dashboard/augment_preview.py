"""Augmentation preview: training images as the augmentation shows them to the network.

The same decode (:class:`~tl_dashboard.data.DecodedImageCache`, shorter side to ``load_size``,
centre square) and the same random transform as training (``preprocess.augment``: random resized
crop, horizontal flip, colour jitter), before normalisation, as uint8 ``(H, W, 3)`` arrays a page
can show directly. With augmentation off, the network sees the centre crop every epoch.

Example:
    >>> rows = augmentation_preview(TrainConfig("sample_data/emoji3", augment=True), images=2, views=3)  # doctest: +SKIP
    >>> rows[0]["views"][0].shape, rows[0]["views"][0].dtype                                             # doctest: +SKIP
    ((224, 224, 3), dtype('uint8'))
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from .data import DecodedImageCache, scan_images
from .engine import TrainConfig
from .preprocess import augment as _augment
from .preprocess import center_crop

__all__ = ["augmentation_preview", "input_sizes"]


def input_sizes(config: TrainConfig) -> tuple[int, int, str]:
    """``(image_size, load_size, interpolation)`` as :func:`engine.prepare` computes them, without building the model."""
    import timm

    cfg = timm.get_pretrained_cfg(config.model)
    cfg = cfg.to_dict() if cfg is not None else {}
    image_size = int(config.image_size or (cfg.get("input_size") or (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    return image_size, int(math.floor(image_size / crop_pct)), str(cfg.get("interpolation") or "bicubic")


def _hwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def augmentation_preview(config: TrainConfig, *, images: int = 4, views: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """A few training images, each as the validation sees it and as ``views`` random augmentations.

    Args:
        config: data folder, model (for the input size), ``image_size``, split and ``augment``.
        images: how many training images (spread over the classes).
        views: augmented versions of each image (1 when ``config.augment`` is off: the centre crop).
        seed: which images and which random transforms; same seed, same preview.

    Returns:
        One dict per image: ``{"path", "label", "original" (uint8 (S, S, 3), the centre crop),
        "views" (list of uint8 (S, S, 3))}``.

    Raises:
        data.DataError: bad folder.
    """
    split = scan_images(config.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    size, load_size, interpolation = input_sizes(config)
    rng = random.Random(seed)
    by_class: dict[int, list] = {}
    for s in split.train:
        by_class.setdefault(s.label, []).append(s)
    picks = []
    while len(picks) < min(images, len(split.train)):
        for label in sorted(by_class):
            pool = [s for s in by_class[label] if s not in picks]
            if pool and len(picks) < images:
                picks.append(rng.choice(pool))
    x, _ = DecodedImageCache(load_size, interpolation=interpolation).stack(picks)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        out = []
        for s, img in zip(picks, x):
            batch = img.unsqueeze(0).expand(views if config.augment else 1, -1, -1, -1)
            shown = _augment(batch, size) if config.augment else center_crop(batch, size)
            out.append(
                {
                    "path": str(s.path),
                    "label": split.classes[s.label],
                    "original": _hwc(center_crop(img, size)),
                    "views": [_hwc(v) for v in shown],
                }
            )
        return out
    finally:
        torch.set_rng_state(state)
