"""Why a trained run decides as it does: Grad-CAM maps, top-k predictions, embeddings before/after.

* :func:`predict_images` - top-k classes for new images, with a Grad-CAM map per image;
* :func:`grad_cam` / :func:`overlay_heatmap` - where the model looked, for CNNs (the last feature
  map, ``forward_features``) and ViTs (the patch tokens entering the last block);
* :func:`embeddings` - a 2-D PCA of the penultimate features, before (pretrained backbone) and
  after training.

Every function that takes a run also takes a :class:`~tl_dashboard.inference.LoadedRun`, so a
caller that keeps one loaded model pays for loading it once. Drawn by :mod:`tl_dashboard.charts`
(``topk_figure``, ``embedding_figure``). This module never imports streamlit.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data import resized_size, to_rgb
from .engine import TrainConfig
from .inference import (
    BATCH,
    EvaluateError,
    ImageInput,
    RunSource,
    _square,
    as_loaded,
    batched_logits,
    decoded_cache,
    load_inputs,
    model_input,
    val_split,
)

__all__ = ["grad_cam", "overlay_heatmap", "Prediction", "predict_images", "predict_each", "embeddings"]


# -- Grad-CAM ---------------------------------------------------------------------------------
def _is_token_model(model: nn.Module) -> bool:
    return (
        hasattr(model, "num_prefix_tokens")
        and hasattr(model, "patch_embed")
        and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList))
    )


def _token_activations(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ViT: the patch tokens *entering* the last block, made a leaf that needs grad; and the logits.

    The last block's output reaches a class-token head only through a per-token LayerNorm, so patch
    tokens there get zero gradient. The hook acts only in this thread, so a model shared between
    sessions keeps serving other threads' forward passes unchanged meanwhile.
    """
    owner, box = threading.get_ident(), {}

    def pre_hook(_m: nn.Module, args: tuple) -> tuple | None:
        if threading.get_ident() != owner or "act" in box:
            return None
        torch.set_grad_enabled(True)  # thread-local; the enclosing no_grad restores it
        box["act"] = args[0].detach().requires_grad_(True)
        return (box["act"], *args[1:])

    handle = model.blocks[-1].register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return box["act"], logits


def _feature_map_activations(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CNN: the last feature map (``forward_features``), made a leaf that needs grad; and the logits."""
    with torch.no_grad():
        feats = model.forward_features(x)
    if feats.ndim != 4:
        raise ValueError(
            f"Grad-CAM needs a feature map (B, C, H, W) or ViT tokens; {type(model).__name__}.forward_features "
            f"returned shape {tuple(feats.shape)}."
        )
    with torch.enable_grad():
        act = feats.detach().requires_grad_(True)
        return act, model.forward_head(act)


def _tokens_to_grid(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1, prefix + h*w, D) tokens -> (1, D, h, w) on the patch grid (prefix tokens dropped)."""
    tokens = t[:, model.num_prefix_tokens :]
    ph, pw = model.patch_embed.patch_size
    gh, gw = x.shape[-2] // ph, x.shape[-1] // pw
    if gh * gw != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} patch tokens do not form the {gh}x{gw} grid of a {x.shape[-1]} px input.")
    return tokens.transpose(1, 2).reshape(1, -1, gh, gw)


def _cam_pass(model: nn.Module, x: torch.Tensor, target: int | None) -> tuple[np.ndarray, torch.Tensor]:
    """One Grad-CAM forward/backward for a single image ``x`` (1, 3, S, S).

    Returns:
        ``(cam, logits)``: the map on the feature grid (h, w) scaled to [0, 1] (all zeros when no
        location supports the target), and the logits (1, C).
    """
    tokens = _is_token_model(model)
    act, logits = (_token_activations if tokens else _feature_map_activations)(model, x)
    cls = int(logits[0].argmax()) if target is None else int(target)
    if not 0 <= cls < logits.shape[1]:
        raise ValueError(f"target={target} is outside 0..{logits.shape[1] - 1}.")
    (grad,) = torch.autograd.grad(logits[0, cls], act)
    act, grad = act.detach(), grad.detach()
    if tokens:
        act, grad = _tokens_to_grid(model, x, act), _tokens_to_grid(model, x, grad)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1))[0]
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.numpy().astype(np.float32), logits.detach()


def _crop_box(width: int, height: int, meta: dict[str, Any]) -> tuple[float, float, float, float]:
    """The part of an image (left, top, right, bottom, in its own pixels) that the model sees."""
    L, S = int(meta["load_size"]), int(meta["image_size"])
    rw, rh = resized_size(width, height, L)
    left, top = (rw - L) // 2 + (L - S) // 2, (rh - L) // 2 + (L - S) // 2
    sx, sy = width / rw, height / rh
    return left * sx, top * sy, (left + S) * sx, (top + S) * sy


def _to_image_frame(cam: np.ndarray, size: tuple[int, int], meta: dict[str, Any]) -> np.ndarray:
    """Place a feature-grid map over the centre crop of an image of ``size`` (W, H); 0 outside it."""
    W, H = size
    left, top, right, bottom = _crop_box(W, H, meta)
    x0, y0 = max(0, int(round(left))), max(0, int(round(top)))
    x1, y1 = min(W, max(x0 + 1, int(round(right)))), min(H, max(y0 + 1, int(round(bottom))))
    up = F.interpolate(torch.from_numpy(cam)[None, None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
    out = np.zeros((H, W), dtype=np.float32)
    out[y0:y1, x0:x1] = up[0, 0].clamp(0, 1).numpy()
    return out


def grad_cam(model: nn.Module, meta: dict[str, Any], image: ImageInput, target: int | None = None) -> np.ndarray:
    """Grad-CAM: where ``model`` found evidence for a class in ``image``.

    CNNs use the last feature map (``model.forward_features``: the last conv stage, after the head
    convolution where there is one). ViTs use the patch tokens entering the last block (prefix
    tokens, ``model.num_prefix_tokens``, dropped) reshaped to the patch grid. The channel weights
    are the spatially averaged gradients of the class logit; the map is ReLU'd and scaled to [0, 1].

    Args:
        model: a timm classifier in eval mode (its parameters may be frozen).
        meta: the run's preprocessing (``preprocessing.json``: load_size, image_size, mean, std,
            interpolation).
        image: a PIL image, a file path or encoded bytes.
        target: class index to explain; ``None`` explains the predicted class.

    Returns:
        float32 array ``(H, W)`` at the image's own (EXIF-upright) size, in [0, 1]; zero outside
        the centre crop the model sees, and all zeros if nothing supports the class.

    Raises:
        ValueError: a model whose features are neither a feature map nor ViT tokens, or a bad target.
    """
    x, shown, _ = load_inputs([image], meta)
    cam, _ = _cam_pass(model, x, target)
    return _to_image_frame(cam, shown[0].size, meta)


def _jet(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 with the 'jet' colormap (blue, cyan, yellow, red)."""
    v = np.clip(v, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def overlay_heatmap(image: Image.Image, cam: np.ndarray, alpha: float = 0.6, desaturate: float = 0.7) -> Image.Image:
    """Colour an image by a [0, 1] heat map (jet: blue = little evidence, red = most).

    Each pixel's colour weight is ``alpha * sqrt(cam)``, so places with no evidence (and the
    border outside the centre crop the model sees) keep the picture; the picture is first
    partly desaturated so the heat colours stand out on colourful images.

    Args:
        image: the picture (any mode; converted to RGB).
        cam: (H, W) map, e.g. from :func:`grad_cam`; resized to the image if it differs.
        alpha: the heat map's weight where ``cam`` is 1, in [0, 1].
        desaturate: how far the picture is moved towards grey, in [0, 1] (0 keeps its colours).

    Returns:
        An RGB image of ``image``'s size.

    Raises:
        ValueError: ``alpha`` outside [0, 1] or ``cam`` not 2-D.
    """
    if not (0.0 <= alpha <= 1.0 and 0.0 <= desaturate <= 1.0):
        raise ValueError(f"alpha={alpha} and desaturate={desaturate} must be in [0, 1].")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D map, got shape {cam.shape}.")
    img = to_rgb(image)
    if cam.shape != (img.height, img.width):
        cam = np.asarray(Image.fromarray(cam, mode="F").resize(img.size, Image.Resampling.BILINEAR))
    cam = np.clip(cam, 0, 1)
    base = np.asarray(img, dtype=np.float32)
    if desaturate:
        grey = np.asarray(img.convert("L"), dtype=np.float32)[..., None]
        base = (1 - desaturate) * base + desaturate * grey
    weight = (alpha * np.sqrt(cam))[..., None]
    out = (1 - weight) * base + weight * _jet(cam).astype(np.float32)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


# -- prediction -------------------------------------------------------------------------------
@dataclass
class Prediction:
    """Top-k classes for one image, with its Grad-CAM map for the top class."""

    name: str
    image: Image.Image  # upright RGB, as given
    top: list[tuple[str, float]]  # (class name, probability), most likely first
    probs: np.ndarray  # (C,) every class, in labels order
    cam: np.ndarray | None = None  # (H, W) in [0, 1] at the image's size, for the top class


def predict_images(
    source: RunSource, images: Sequence[ImageInput], top_k: int = 3, *, run_id: str | None = None, cam: bool = True
) -> list[Prediction]:
    """Top-k classes with probabilities for each image, preprocessed as in training.

    Args:
        source: a :class:`RunStore` (with ``run_id``), a run folder, or a :class:`LoadedRun`.
        images: PIL images, file paths or encoded bytes (e.g. an upload's ``getvalue()``).
        top_k: classes to return per image (capped at the number of classes).
        run_id: the run's id when ``source`` is a store.
        cam: also compute each image's Grad-CAM map for its top class (same forward pass).

    Returns:
        One :class:`Prediction` per image, in order; ``top`` is sorted by probability, descending.

    Raises:
        ValueError: ``top_k`` < 1 or no images. EvaluateError: no such run or no checkpoint.
        data.DataError: a path or upload that is not a readable image.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise EvaluateError(f"top_k={top_k!r} must be a positive int, e.g. 3.")
    loaded = as_loaded(source, run_id)
    x, shown, names = load_inputs(list(images), loaded.meta)
    k = min(top_k, len(loaded.classes))
    cams: list[np.ndarray | None] = [None] * len(x)
    if cam:
        rows = []
        for i in range(len(x)):
            small, logits = _cam_pass(loaded.model, x[i : i + 1], None)
            cams[i] = _to_image_frame(small, shown[i].size, loaded.meta)
            rows.append(logits)
        logits = torch.cat(rows)
    else:
        logits = batched_logits(loaded.model, x)
    probs = logits.float().softmax(1).numpy()
    out = []
    for i in range(len(x)):
        order = np.argsort(-probs[i], kind="stable")[:k]
        out.append(
            Prediction(names[i], shown[i], [(loaded.classes[j], float(probs[i, j])) for j in order], probs[i].astype(np.float32), cams[i])
        )
    return out


# -- embeddings -------------------------------------------------------------------------------
def _pca2(feats: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """2-D PCA by SVD: (points (N, 2), explained-variance ratio of the two components)."""
    x = feats.astype(np.float64)
    x = x - x.mean(0, keepdims=True)
    if len(x) < 2 or not np.any(x):
        return np.zeros((len(x), 2), dtype=np.float32), [0.0, 0.0]
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    u, s = u[:, :2], s[:2]
    u = u * np.sign(u[np.abs(u).argmax(0), range(u.shape[1])])  # deterministic signs (sklearn's svd_flip)
    pts = u * s
    if pts.shape[1] < 2:
        pts = np.pad(pts, ((0, 0), (0, 2 - pts.shape[1])))
    total = float((x**2).sum())
    ratio = [float(v**2 / total) for v in s] + [0.0] * (2 - len(s))
    return pts.astype(np.float32), ratio


@torch.inference_mode()
def _penultimate(model: nn.Module, x_u8: torch.Tensor, meta: dict[str, Any]) -> np.ndarray:
    return (
        torch.cat(
            [
                model.forward_head(model.forward_features(model_input(x_u8[i : i + BATCH], meta)), pre_logits=True)
                for i in range(0, len(x_u8), BATCH)
            ]
        )
        .float()
        .flatten(1)
        .numpy()
    )


def embeddings(store: RunSource, run_id: str | None = None, *, max_images: int = 500) -> dict[str, Any]:
    """2-D PCA of the validation images' penultimate features, before and after training.

    "Before" is the pretrained backbone the run started from (``create_backbone`` with the run's
    model and weights); "after" is the trained model. Features are
    ``model.forward_head(model.forward_features(x), pre_logits=True)``; each set gets its own PCA.

    Args:
        store: a :class:`RunStore` (with ``run_id``) or a run folder.
        run_id: the run's id.
        max_images: at most this many validation images, evenly spaced over the split (all classes).

    Returns:
        ``{"classes", "labels" (list[int]), "paths" (list[str]), "before", "after",
        "features_changed" (bool), "notes" (list[str])}``; ``before`` and ``after`` are
        ``{"points": float32 (N, 2), "explained": [r1, r2], "title": str}``.

    Raises:
        EvaluateError: no checkpoint, or the data folder's classes changed since training.
    """
    from .backbones import create_backbone

    loaded = as_loaded(store, run_id)
    split = val_split(loaded)
    samples = list(split.val)
    if len(samples) > max_images:
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, max_images).round().astype(int)]
    meta = loaded.meta
    x_u8, y = decoded_cache(meta).stack(samples)
    cfg = TrainConfig.from_dict(loaded.config)
    before_model, info = create_backbone(cfg.model, len(loaded.classes), cfg.weights)
    before_model.eval()
    f_before = _penultimate(before_model, x_u8, meta)
    f_after = _penultimate(loaded.model, x_u8, meta)
    del before_model
    changed = not np.allclose(f_before, f_after, rtol=1e-4, atol=1e-5)
    notes = []
    if info.source != meta.get("weights_source", info.source):
        notes.append(
            f"The run started from {meta.get('weights_source')} weights, but here the backbone loads "
            f"{info.source} weights ({info.detail}); the 'before' view shows those."
        )
    if not changed:
        notes.append(
            "The backbone was frozen (only the classifier head trained), so its features did not change "
            "and both views are the same. Train with fewer frozen blocks to see fine-tuning move the clusters."
        )
    out: dict[str, Any] = {
        "classes": list(loaded.classes),
        "labels": y.tolist(),
        "paths": [str(s.path) for s in samples],
        "features_changed": changed,
        "notes": notes,
    }
    titles = {
        "before": f"Before training<br><sup>the pretrained backbone ({info.source} weights)</sup>",
        "after": "After training<br><sup>the run's model</sup>",
    }
    for key, feats in (("before", f_before), ("after", f_after)):
        pts, ratio = _pca2(feats)
        out[key] = {"points": pts, "explained": ratio, "title": titles[key]}
    return out


def predict_each(
    source: RunSource,
    images: Sequence[ImageInput],
    names: Sequence[str] | None = None,
    top_k: int = 3,
    *,
    run_id: str | None = None,
    cam: bool = True,
) -> tuple[list[Prediction], list[dict[str, str]]]:
    """:func:`predict_images` that survives bad files: ``(predictions of the readable images, failures)``.

    Each failure is ``{"name", "reason"}`` naming the file (an upload's own name, given in ``names``),
    never the in-memory buffer; the other images are still predicted. A prediction's ``name``
    is its name in ``names``.
    """
    from .errors import UserError

    names = (
        list(names)
        if names is not None
        else [Path(i).name if isinstance(i, (str, Path)) else getattr(i, "filename", "") or f"image {n + 1}" for n, i in enumerate(images)]
    )
    loaded = as_loaded(source, run_id)
    load, interp = int(loaded.meta["load_size"]), loaded.meta.get("interpolation", "bicubic")
    good, good_names, failures = [], [], []
    for n, (item, name) in enumerate(zip(images, names)):
        try:
            _square(item, n, load, interp)
        except (UserError, OSError, ValueError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            reason = re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "this upload", reason)
            failures.append({"name": str(name), "reason": f"{name}: not a readable image ({reason})"})
            continue
        good.append(item)
        good_names.append(str(name))
    preds = predict_images(loaded, good, top_k, cam=cam) if good else []
    for p, name in zip(preds, good_names):
        p.name = name
    return preds, failures
