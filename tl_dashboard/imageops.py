"""Pixel operations shared by training, prediction and the decode workers: any mode to RGB, and the
resize + centre square crop every image goes through. Plain PIL and numpy (torch only where a
tensor is returned), so decode worker processes stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = ["resize_center_square", "resized_size", "square_array", "to_rgb"]


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 1-channel numeric array to uint8 by the range its values actually use."""
    if arr.dtype.kind == "f":
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif not (lo >= 0.0 and hi <= 255.0):
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = arr.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 255:  # 8-bit data in a wider container
        return a.astype(np.uint8)
    if lo >= 0 and hi <= 65535:  # genuine 16-bit data
        return (a >> 8).astype(np.uint8)
    return ((a - lo) * 255 // max(hi - lo, 1)).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to RGB, as training sees it.

    Transparent pixels are composited on white; 16-bit and float images are scaled to 8 bits
    by the range their values use. An RGB image without transparency is returned as is.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(img))).convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


def resized_size(width: int, height: int, load_size: int) -> tuple[int, int]:
    """The ``(width, height)`` an image is resized to so its shorter side is ``load_size``
    (as torchvision's ``Resize(int)`` does); the longer side is truncated, never below ``load_size``.

    Example:
        >>> resized_size(400, 300, 256)
        (341, 256)
    """
    L = load_size
    return (L, max(L, int(L * height / width))) if width <= height else (max(L, int(L * width / height)), L)


def resize_center_square(img: Image.Image, load_size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize an image so its shorter side is ``load_size``, then center-crop a square: how every
    image is prepared for training (:class:`DecodedImageCache`) and prediction.

    Args:
        img: A PIL image, e.g. from :func:`load_rgb` (other modes go through :func:`to_rgb`).
        load_size: Side of the square, in pixels.
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``; anything else -> bicubic.

    Returns:
        uint8 tensor ``(3, load_size, load_size)``, channels first.

    Example:
        >>> resize_center_square(Image.new("RGB", (60, 20)), 20, "nearest").shape
        torch.Size([3, 20, 20])
    """
    import torch

    return torch.from_numpy(square_array(img, load_size, interpolation))


def square_array(img, load_size: int, interpolation: str = "bicubic"):
    """Shorter side to ``load_size``, centre square crop: uint8 ``(3, L, L)`` numpy array (no torch)."""
    img, L = to_rgb(img), int(load_size)
    size = resized_size(*img.size, L)
    if size != img.size:
        img = img.resize(size, _RESAMPLE.get(str(interpolation).lower(), Image.Resampling.BICUBIC))
    left, top = (size[0] - L) // 2, (size[1] - L) // 2
    img = img.crop((left, top, left + L, top + L))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
