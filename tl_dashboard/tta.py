"""Test-time augmentation: average the model's probabilities over flips and crops of each image.

The views are the classic ten crops of the decoded square (``load_size``, as in training): the
centre crop and the four corner crops at ``image_size``, each as is and mirrored. The plain
prediction is view 0 (the centre crop), so one pass gives both numbers, with and without TTA.
Cost: ten forward passes per image.

Example:
    >>> res = evaluate_tta(RunStore("runs"), run_id)        # doctest: +SKIP
    >>> res["accuracy"], res["accuracy_tta"]                # doctest: +SKIP
    (0.944, 0.972)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .data import load_rgb, resize_center_square, to_rgb
from .engine import Normalizer, center_crop
from .inference import ImageInput, RunSource, as_loaded, decoded_cache, val_split

__all__ = ["TTA_VIEWS", "tta_views", "tta_probs", "evaluate_tta", "predict_tta"]

TTA_VIEWS = (
    "centre",
    "top-left",
    "top-right",
    "bottom-left",
    "bottom-right",
    "centre flipped",
    "top-left flipped",
    "top-right flipped",
    "bottom-left flipped",
    "bottom-right flipped",
)


def tta_views(x_u8: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The ten views of uint8 squares ``(N, 3, L, L)``: five ``size`` crops, then the same mirrored.

    Returns:
        Ten tensors ``(N, 3, size, size)`` in :data:`TTA_VIEWS` order; view 0 is training's centre crop.
    """
    h, w = x_u8.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"Crop size {size} is larger than the image ({h}x{w}).")
    crops = [
        center_crop(x_u8, size),
        x_u8[..., :size, :size],
        x_u8[..., :size, w - size :],
        x_u8[..., h - size :, :size],
        x_u8[..., h - size :, w - size :],
    ]
    return crops + [c.flip(-1) for c in crops]


@torch.inference_mode()
def tta_probs(model: torch.nn.Module, x_u8: torch.Tensor, meta: dict[str, Any], batch: int = 64) -> np.ndarray:
    """Softmax probabilities of every view: ``(10, N, C)`` float32 (mean over axis 0 = the TTA prediction)."""
    norm, size = Normalizer(meta["mean"], meta["std"]), int(meta["image_size"])
    out = []
    for view in tta_views(x_u8, size):
        logits = [model(norm(view[i : i + batch])) for i in range(0, len(view), batch)]
        out.append(torch.cat(logits).float().softmax(1).numpy())
    return np.stack(out).astype(np.float32)


def evaluate_tta(source: RunSource, run_id: str | None = None) -> dict[str, Any]:
    """A run's validation split scored without and with TTA, from one pass over the ten views.

    Returns:
        ``{"accuracy", "accuracy_tta", "views", "images", "fixed", "broken", "changed"}``;
        ``changed`` lists the images whose prediction TTA changes: ``{"path", "true", "plain",
        "tta", "plain_prob", "tta_prob"}`` (class names; probabilities of each prediction).

    Raises:
        EvaluateError: no checkpoint, or the data folder's classes changed since training.
    """
    loaded = as_loaded(source, run_id)
    split = val_split(loaded)
    x_u8, y = decoded_cache(loaded.meta).stack(split.val)
    views = tta_probs(loaded.model, x_u8, loaded.meta)
    plain, tta = views[0], views.mean(0)
    y_np, p_plain, p_tta = y.numpy(), plain.argmax(1), tta.argmax(1)
    cls = loaded.classes
    changed = [
        {
            "path": str(split.val[i].path),
            "true": cls[y_np[i]],
            "plain": cls[p_plain[i]],
            "tta": cls[p_tta[i]],
            "plain_prob": float(plain[i, p_plain[i]]),
            "tta_prob": float(tta[i, p_tta[i]]),
        }
        for i in np.flatnonzero(p_plain != p_tta)
    ]
    n = max(len(y_np), 1)
    return {
        "accuracy": float((p_plain == y_np).sum() / n),
        "accuracy_tta": float((p_tta == y_np).sum() / n),
        "views": len(TTA_VIEWS),
        "images": len(y_np),
        "fixed": int(((p_tta == y_np) & (p_plain != y_np)).sum()),
        "broken": int(((p_tta != y_np) & (p_plain == y_np)).sum()),
        "changed": changed,
    }


def _square(item: ImageInput, load_size: int, interpolation: str) -> torch.Tensor:
    from PIL import Image

    if isinstance(item, Image.Image):
        return resize_center_square(to_rgb(item), load_size, interpolation)
    if isinstance(item, (bytes, bytearray)):
        return resize_center_square(load_rgb(bytes(item), draft_size=load_size), load_size, interpolation)
    return resize_center_square(load_rgb(item, draft_size=load_size), load_size, interpolation)


def predict_tta(source: RunSource, images: Sequence[ImageInput], top_k: int = 3, *, run_id: str | None = None) -> list[dict[str, Any]]:
    """Top-k classes per image without and with TTA.

    Returns:
        One dict per image: ``{"top_k": [(class, prob)...] with TTA, "top_k_plain": [...] without,
        "probs": (C,) with TTA, "probs_plain": (C,)}``.

    Raises:
        ValueError: ``top_k`` < 1 or no images. data.DataError: an unreadable image.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be a positive int, e.g. 3.")
    loaded = as_loaded(source, run_id)
    meta = loaded.meta
    if not images:
        raise ValueError("No images given; pass at least one PIL image, path or bytes.")
    x = torch.stack([_square(im, int(meta["load_size"]), meta.get("interpolation", "bicubic")) for im in images])
    views = tta_probs(loaded.model, x, meta)
    k = min(top_k, len(loaded.classes))

    def top(p: np.ndarray) -> list[tuple[str, float]]:
        return [(loaded.classes[j], float(p[j])) for j in np.argsort(-p, kind="stable")[:k]]

    return [
        {"top_k": top(views[:, i].mean(0)), "top_k_plain": top(views[0, i]), "probs": views[:, i].mean(0), "probs_plain": views[0, i]}
        for i in range(len(x))
    ]
