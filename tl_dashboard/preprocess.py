"""Preprocessing on decoded uint8 image tensors: centre crop, normalisation, training augmentation.

Example:
    >>> center_crop(torch.zeros(1, 3, 6, 6, dtype=torch.uint8), 4).shape
    torch.Size([1, 3, 4, 4])
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["center_crop", "Normalizer", "augment"]


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size x size`` of image tensors (``(..., H, W)``): a view, no copy."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def augment(x: torch.Tensor, size: int) -> torch.Tensor:
    """Random resized crop + horizontal flip + colour jitter on a uint8 batch (global RNG)."""
    from torchvision.transforms import v2

    tf = v2.Compose(
        [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(), v2.ColorJitter(0.3, 0.3, 0.3)]
    )
    return torch.stack([tf(img) for img in x])


class Normalizer:
    """uint8 images ``(N, 3, H, W)`` -> float ``(x / 255 - mean) / std``, per channel, on ``device``.

    Example:
        >>> Normalizer((0.5,) * 3, (0.5,) * 3)(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).max()
        tensor(1.)
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, x_u8: torch.Tensor) -> torch.Tensor:
        return (x_u8.float() - self.mean) / self.std
