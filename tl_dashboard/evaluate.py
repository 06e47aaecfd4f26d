"""Evaluate, explain, predict and export a finished run.

Everything here works from a run's folder (``model.safetensors``, ``labels.json``,
``preprocessing.json``, ``config.json``) and sees images exactly as training did: decoded and
resized by :class:`~tl_dashboard.data.DecodedImageCache` (shorter side to ``load_size``, centre
crop), centre-cropped to ``image_size`` and normalised ``(x / 255 - mean) / std``.

* :func:`evaluate_run` - predictions on the run's validation split (rebuilt from its data folder,
  seed and ``val_fraction``), accuracy, per-class precision/recall/F1
  (:func:`classification_report`), the confusion matrix (:func:`confusion_matrix`, rows = true
  class) and the misclassified images, worst (highest loss) first;
* :func:`predict_images` - top-k classes for new images, with a Grad-CAM map per image;
* :func:`grad_cam` / :func:`overlay_heatmap` - where the model looked, for CNNs (the last feature
  map, ``forward_features``) and ViTs (the patch tokens entering the last block);
* :func:`embeddings` - a 2-D PCA of the penultimate features, before (pretrained backbone) and
  after training;
* :func:`export_run` - ``safetensors``, ``torchscript`` and ``onnx`` files, each with
  ``labels.json`` and ``preprocessing.json`` beside it, each checked against the run's model.

Its results are drawn by :mod:`tl_dashboard.charts` (``confusion_figure``, ``per_class_figure``,
``topk_figure``, ``embedding_figure``).

Loading an export on its own (every format takes float32 NCHW input, RGB, preprocessed as
``preprocessing.json`` says; the output is logits, one per class in ``labels.json`` order)::

    import json, numpy as np
    from PIL import Image, ImageOps
    d = "runs/RUN_ID/export"
    labels = json.load(open(f"{d}/labels.json")); pp = json.load(open(f"{d}/preprocessing.json"))

    def preprocess(path):  # shorter side -> load_size, centre crop load_size, then image_size
        img, L, S = Image.open(path), pp["load_size"], pp["image_size"]
        img.draft("RGB", (L, L))  # JPEGs: decode at reduced scale, as training did
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size
        img = img.resize((L, max(L, int(L * h / w))) if w <= h else (max(L, int(L * w / h)), L), Image.Resampling.BICUBIC)
        l, t = (img.width - L) // 2 + (L - S) // 2, (img.height - L) // 2 + (L - S) // 2
        x = (np.asarray(img.crop((l, t, l + S, t + S)), np.float32) / 255 - pp["mean"]) / pp["std"]
        return x.transpose(2, 0, 1)[None].astype(np.float32)

    # TorchScript: torch only
    import torch
    m = torch.jit.load(f"{d}/model.torchscript.pt")
    print(labels[m(torch.from_numpy(preprocess("cat.jpg"))).argmax()])

    # ONNX: onnxruntime only
    import onnxruntime as ort
    s = ort.InferenceSession(f"{d}/model.onnx")
    print(labels[s.run(None, {"input": preprocess("cat.jpg")})[0].argmax()])

    # safetensors: timm + safetensors
    import timm, torch; from safetensors.torch import load_file
    m = timm.create_model(pp["model"], num_classes=len(labels)).eval()
    for bn in (b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)):
        bn.eps = pp.get("bn_eps") or bn.eps  # the bundled efficientnet_lite0 weights need 1e-3
    m.load_state_dict(load_file(f"{d}/model.safetensors"))
    print(labels[m(torch.from_numpy(preprocess("cat.jpg"))).argmax()])

(``pp["interpolation"]`` names the resize filter, bicubic for the curated backbones.)

This module never imports streamlit.

Example:
    >>> store = RunStore("runs")
    >>> ev = evaluate_run(store, run_id)
    >>> round(ev.accuracy, 3), ev.confusion.tolist()
    (0.972, [[12, 0, 0], [1, 11, 0], [0, 0, 12]])
    >>> export_run(store, run_id, formats=("onnx",))["onnx"]
    PosixPath('runs/.../export/model.onnx')
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data import DecodedImageCache, load_rgb, resize_center_square, resized_size, scan_images, to_rgb
from .engine import Normalizer, TrainConfig, center_crop, load_checkpoint
from .errors import UserError
from .runs import RunStore, atomic_write_json

__all__ = [
    "EXPORT_FORMATS",
    "EvaluateError",
    "LoadedRun",
    "Evaluation",
    "Prediction",
    "list_evaluable_runs",
    "load_run",
    "classification_report",
    "confusion_matrix",
    "evaluate_run",
    "predict_images",
    "grad_cam",
    "overlay_heatmap",
    "embeddings",
    "export_run",
]

#: Export formats and the file each one writes (``labels.json`` and ``preprocessing.json`` go beside all).
EXPORT_FORMATS: dict[str, str] = {
    "safetensors": "model.safetensors",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
}
ONNX_OPSET = 18
_EVALUABLE_STATUSES = ("finished", "stopped")
_BATCH = 64

ImageInput = Union[Image.Image, str, Path, bytes]
RunSource = Union[RunStore, str, Path]

# Forward passes on the cached models and Grad-CAM's temporary hook share one lock, so a page
# serving several sessions never runs a model while another thread adds or removes a hook.
_MODEL_LOCK = threading.RLock()


class EvaluateError(UserError, ValueError):
    """A run that cannot be evaluated or exported; str() names the run and the fix."""


# -- runs and models --------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A run's model (eval mode, CPU) with its class names, preprocessing meta and config."""

    run_dir: Path
    model: nn.Module
    classes: list[str]
    meta: dict[str, Any]
    config: dict[str, Any]


def _run_dir(source: RunSource, run_id: str | None) -> Path:
    if isinstance(source, RunStore):
        if not run_id:
            raise EvaluateError("A RunStore needs a run_id; pass run_id=... or the run's folder instead.")
        if source.get_run(run_id) is None:
            raise EvaluateError(f"No run {run_id!r} in {source.root}. `tl-dashboard runs` lists the runs there.")
        run_dir = source.run_dir(run_id)
    else:
        run_dir = Path(source) if run_id is None else Path(source) / run_id
    if not (run_dir / "model.safetensors").is_file():
        raise EvaluateError(
            f"Run folder {run_dir} has no model.safetensors: the run has not finished an epoch yet "
            "(or failed before one). Pick a finished or stopped run.")
    return run_dir


def _read_config(run_dir: Path, source: RunSource, run_id: str | None) -> dict[str, Any]:
    if isinstance(source, RunStore) and run_id:
        run = source.get_run(run_id)
        if run and run.get("config"):
            return dict(run["config"])
    path = run_dir / "config.json"
    if not path.is_file():
        raise EvaluateError(f"Run folder {run_dir} has no config.json, so its data folder and split are unknown.")
    return json.loads(path.read_text())


_loaded: dict[tuple[str, int, int], LoadedRun] = {}
_MAX_LOADED = 4


def load_run(source: RunSource, run_id: str | None = None) -> LoadedRun:
    """Load a run's checkpoint once per process (re-read when ``model.safetensors`` changes).

    Args:
        source: a :class:`RunStore` (with ``run_id``) or a run folder.
        run_id: the run's id when ``source`` is a store (or a runs root folder).

    Returns:
        A :class:`LoadedRun`; the model is in eval mode on the CPU. Treat it as read-only.

    Raises:
        EvaluateError: unknown run, or no checkpoint yet.
    """
    run_dir = _run_dir(source, run_id)
    st = (run_dir / "model.safetensors").stat()
    key = (str(run_dir.resolve()), st.st_mtime_ns, st.st_size)
    with _MODEL_LOCK:
        hit = _loaded.get(key)
        if hit is not None:
            return hit
        model, classes, meta = load_checkpoint(run_dir)
        model.requires_grad_(False)
        loaded = LoadedRun(run_dir, model, classes, meta, _read_config(run_dir, source, run_id))
        for k in [k for k in _loaded if k[0] == key[0]]:  # an older checkpoint of the same run
            del _loaded[k]
        while len(_loaded) >= _MAX_LOADED:
            del _loaded[next(iter(_loaded))]
        _loaded[key] = loaded
        return loaded


def list_evaluable_runs(store: RunStore) -> list[dict[str, Any]]:
    """Finished and stopped runs that have a checkpoint, newest first (rows of ``store.list_runs``)."""
    return [r for r in store.list_runs(_EVALUABLE_STATUSES) if (store.run_dir(r["id"]) / "model.safetensors").is_file()]


# -- preprocessing: exactly as in training (data + engine own it) ------------------------------
def _decoded_cache(meta: dict[str, Any]) -> DecodedImageCache:
    return DecodedImageCache(int(meta["load_size"]), interpolation=meta.get("interpolation", "bicubic"))


def _model_input(x_u8: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Decoded uint8 squares (N, 3, L, L) -> the normalised centre crops (N, 3, S, S) the model takes."""
    return Normalizer(meta["mean"], meta["std"])(center_crop(x_u8, int(meta["image_size"])))


def _load_inputs(images: Sequence[ImageInput], meta: dict[str, Any]) -> tuple[torch.Tensor, list[Image.Image], list[str]]:
    """Images -> (normalised batch (N, 3, S, S), upright RGB images, names).

    Paths and bytes are decoded as training decodes them (``data.load_rgb``, JPEG draft at
    ``load_size``); every image then gets training's resize and crop (``data.resize_center_square``).
    """
    L, interpolation = int(meta["load_size"]), meta.get("interpolation", "bicubic")
    u8, shown, names = [], [], []
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            img = to_rgb(item)
            square = resize_center_square(img, L, interpolation)
            name = Path(getattr(item, "filename", "") or f"image {i + 1}").name
        elif isinstance(item, (bytes, bytearray, str, Path)):
            source = bytes(item) if isinstance(item, (bytes, bytearray)) else Path(item)
            square = resize_center_square(load_rgb(source, draft_size=L), L, interpolation)
            img = load_rgb(source)
            name = source.name if isinstance(source, Path) else f"image {i + 1}"
        else:
            raise TypeError(f"images[{i}] is a {type(item).__name__}; give a PIL image, a file path or bytes.")
        u8.append(square)
        shown.append(img)
        names.append(name)
    if not u8:
        raise ValueError("No images given; pass at least one PIL image, path or bytes.")
    return _model_input(torch.stack(u8), meta), shown, names


@torch.inference_mode()
def _logits(model: nn.Module, x: torch.Tensor, batch: int = _BATCH) -> torch.Tensor:
    with _MODEL_LOCK:
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).float()


def _val_split(config: dict[str, Any], classes: Sequence[str], run_dir: Path):
    cfg = TrainConfig.from_dict(config)
    split = scan_images(cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if list(split.classes) != list(classes):
        raise EvaluateError(
            f"The data folder {cfg.data_dir} now has classes {split.classes}, but run {run_dir.name} was trained "
            f"on {list(classes)}. Restore the folder, or evaluate a run trained on the folder as it is now.")
    return split


# -- metrics ----------------------------------------------------------------------------------
def _check_labels(y_true: Any, y_pred: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    yt, yp = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} labels but y_pred has {yp.size}; give one prediction per label.")
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes} must be at least 1.")
    bad = np.concatenate([yt, yp])
    bad = bad[(bad < 0) | (bad >= n_classes)]
    if bad.size:
        raise ValueError(f"Label {int(bad[0])} is outside 0..{n_classes - 1}; n_classes must cover every label.")
    return yt, yp


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs.

    Args:
        y_true: true class index per sample.
        y_pred: predicted class index per sample.
        n_classes: number of classes.

    Returns:
        int64 array ``(n_classes, n_classes)``: rows = true class, columns = predicted class, so
        ``cm[0, 1]`` counts class-0 samples predicted as class 1.

    Raises:
        ValueError: different lengths, or a label outside ``0..n_classes-1``.
    """
    yt, yp = _check_labels(y_true, y_pred, n_classes)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (yt, yp), 1)
    return cm


def classification_report(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int,
                          class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per-class precision, recall, F1 and support; a zero denominator gives 0 (never NaN).

    Args:
        y_true: true class index per sample.
        y_pred: predicted class index per sample.
        n_classes: number of classes (classes with no samples get a row of zeros).
        class_names: names for the ``class`` column; default ``"0"``, ``"1"``, ...

    Returns:
        One dict per class, in index order: ``{"class", "precision", "recall", "f1", "support"}``.

    Raises:
        ValueError: as :func:`confusion_matrix`, or ``class_names`` of the wrong length.
    """
    if class_names is not None and len(class_names) != n_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {n_classes} classes.")
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(0).astype(float), cm.sum(1).astype(float)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    return [{"class": names[i], "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(support[i])} for i in range(n_classes)]


@dataclass
class Evaluation:
    """A run's predictions on its validation split, and the metrics derived from them."""

    run_id: str
    classes: list[str]
    paths: list[str]
    y_true: np.ndarray  # (N,) int64
    y_pred: np.ndarray  # (N,) int64
    probs: np.ndarray  # (N, C) float32 softmax
    losses: np.ndarray  # (N,) float32 cross-entropy per image
    accuracy: float
    mean_loss: float
    report: list[dict[str, Any]]  # classification_report rows, with class names
    confusion: np.ndarray  # (C, C), rows = true class, columns = predicted
    misclassified: list[dict[str, Any]]  # worst (highest loss) first
    notes: list[str] = field(default_factory=list)

    @property
    def macro_f1(self) -> float:
        return float(np.mean([r["f1"] for r in self.report])) if self.report else 0.0


def evaluate_run(store: RunSource, run_id: str | None = None, *, batch_size: int = _BATCH) -> Evaluation:
    """Predict the run's validation split (rebuilt exactly as in training) and score it.

    Args:
        store: a :class:`RunStore` (with ``run_id``) or a run folder.
        run_id: the run's id.
        batch_size: images per forward pass.

    Returns:
        An :class:`Evaluation`: per-image true/predicted label, probabilities, loss and path;
        accuracy, per-class report, confusion matrix, and the misclassified images sorted by loss
        (highest first), each ``{"path", "true", "pred", "true_name", "pred_name", "confidence",
        "true_prob", "loss"}`` where ``confidence`` is the probability of the predicted class.

    Raises:
        EvaluateError: no checkpoint, or the data folder's classes changed since training.
        data.DataError: the data folder is gone or unreadable.
    """
    loaded = load_run(store, run_id)
    split = _val_split(loaded.config, loaded.classes, loaded.run_dir)
    meta, n = loaded.meta, len(loaded.classes)
    x_u8, y = _decoded_cache(meta).stack(split.val)
    with _MODEL_LOCK, torch.inference_mode():
        logits = torch.cat([loaded.model(_model_input(x_u8[i:i + batch_size], meta))
                            for i in range(0, len(x_u8), batch_size)]).float()
        losses = F.cross_entropy(logits, y, reduction="none")
        probs = logits.softmax(1)
    y_true, y_pred = y.numpy(), logits.argmax(1).numpy()
    probs_np, losses_np = probs.numpy().astype(np.float32), losses.numpy().astype(np.float32)
    paths = [str(s.path) for s in split.val]
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-losses_np[wrong], kind="stable")]
    mis = [{"path": paths[i], "true": int(y_true[i]), "pred": int(y_pred[i]),
            "true_name": loaded.classes[y_true[i]], "pred_name": loaded.classes[y_pred[i]],
            "confidence": float(probs_np[i, y_pred[i]]), "true_prob": float(probs_np[i, y_true[i]]),
            "loss": float(losses_np[i])} for i in wrong]
    notes = []
    summary_val = None
    if isinstance(store, RunStore) and run_id:
        summary_val = ((store.get_run(run_id) or {}).get("summary") or {}).get("val_images")
    if summary_val is not None and summary_val != len(paths):
        notes.append(f"The validation split now has {len(paths)} images; the run was trained with {summary_val}. "
                     "The data folder changed since training.")
    return Evaluation(
        run_id=run_id or loaded.run_dir.name, classes=list(loaded.classes), paths=paths,
        y_true=y_true, y_pred=y_pred, probs=probs_np, losses=losses_np,
        accuracy=float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        mean_loss=float(losses_np.mean()) if len(losses_np) else 0.0,
        report=classification_report(y_true, y_pred, n, loaded.classes),
        confusion=confusion_matrix(y_true, y_pred, n), misclassified=mis, notes=notes,
    )


# -- Grad-CAM ---------------------------------------------------------------------------------
def _is_token_model(model: nn.Module) -> bool:
    return hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed") and isinstance(
        getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList))


def _cam_pass(model: nn.Module, x: torch.Tensor, target: int | None) -> tuple[np.ndarray, torch.Tensor]:
    """One Grad-CAM forward/backward for a single image ``x`` (1, 3, S, S).

    Returns:
        ``(cam, logits)``: the map on the feature grid (h, w) scaled to [0, 1] (all zeros when no
        location supports the target), and the logits (1, C).
    """
    with _MODEL_LOCK:
        if _is_token_model(model):
            # ViT: the patch tokens *entering* the last block. Its output reaches a class-token head
            # only through a per-token LayerNorm, so patch tokens there get zero gradient.
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
            act = box["act"]
        else:
            with torch.no_grad():
                feats = model.forward_features(x)
            if feats.ndim != 4:
                raise ValueError(
                    f"Grad-CAM needs a feature map (B, C, H, W) or ViT tokens; {type(model).__name__}.forward_features "
                    f"returned shape {tuple(feats.shape)}.")
            with torch.enable_grad():
                act = feats.detach().requires_grad_(True)
                logits = model.forward_head(act)
        cls = int(logits[0].argmax()) if target is None else int(target)
        if not 0 <= cls < logits.shape[1]:
            raise ValueError(f"target={target} is outside 0..{logits.shape[1] - 1}.")
        grad, = torch.autograd.grad(logits[0, cls], act)
    act, grad = act.detach(), grad.detach()
    if act.ndim == 3:  # (1, prefix + h*w, D) -> (1, D, h, w)
        tokens, g = act[:, model.num_prefix_tokens:], grad[:, model.num_prefix_tokens:]
        ph, pw = model.patch_embed.patch_size
        gh, gw = x.shape[-2] // ph, x.shape[-1] // pw
        if gh * gw != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} patch tokens do not form the {gh}x{gw} grid of a {x.shape[-1]} px input.")
        act = tokens.transpose(1, 2).reshape(1, -1, gh, gw)
        grad = g.transpose(1, 2).reshape(1, -1, gh, gw)
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
    l, t, r, b = _crop_box(W, H, meta)
    x0, y0 = max(0, int(round(l))), max(0, int(round(t)))
    x1, y1 = min(W, max(x0 + 1, int(round(r)))), min(H, max(y0 + 1, int(round(b))))
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
    x, shown, _ = _load_inputs([image], meta)
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


def predict_images(source: RunSource | LoadedRun, images: Sequence[ImageInput], top_k: int = 3, *,
                   run_id: str | None = None, cam: bool = True) -> list[Prediction]:
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
        raise ValueError(f"top_k={top_k!r} must be a positive int, e.g. 3.")
    loaded = source if isinstance(source, LoadedRun) else load_run(source, run_id)
    x, shown, names = _load_inputs(list(images), loaded.meta)
    k = min(top_k, len(loaded.classes))
    cams: list[np.ndarray | None] = [None] * len(x)
    if cam:
        rows = []
        for i in range(len(x)):
            small, logits = _cam_pass(loaded.model, x[i:i + 1], None)
            cams[i] = _to_image_frame(small, shown[i].size, loaded.meta)
            rows.append(logits)
        logits = torch.cat(rows)
    else:
        logits = _logits(loaded.model, x)
    probs = logits.float().softmax(1).numpy()
    out = []
    for i in range(len(x)):
        order = np.argsort(-probs[i], kind="stable")[:k]
        out.append(Prediction(names[i], shown[i], [(loaded.classes[j], float(probs[i, j])) for j in order],
                              probs[i].astype(np.float32), cams[i]))
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
    total = float((x ** 2).sum())
    ratio = [float(v ** 2 / total) for v in s] + [0.0] * (2 - len(s))
    return pts.astype(np.float32), ratio


@torch.inference_mode()
def _penultimate(model: nn.Module, x_u8: torch.Tensor, meta: dict[str, Any]) -> np.ndarray:
    with _MODEL_LOCK:
        return torch.cat([
            model.forward_head(model.forward_features(_model_input(x_u8[i:i + _BATCH], meta)), pre_logits=True)
            for i in range(0, len(x_u8), _BATCH)
        ]).float().flatten(1).numpy()


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

    loaded = load_run(store, run_id)
    split = _val_split(loaded.config, loaded.classes, loaded.run_dir)
    samples = list(split.val)
    if len(samples) > max_images:
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, max_images).round().astype(int)]
    meta = loaded.meta
    x_u8, y = _decoded_cache(meta).stack(samples)
    cfg = TrainConfig.from_dict(loaded.config)
    before_model, info = create_backbone(cfg.model, len(loaded.classes), cfg.weights)
    before_model.eval()
    f_before = _penultimate(before_model, x_u8, meta)
    f_after = _penultimate(loaded.model, x_u8, meta)
    del before_model
    changed = not np.allclose(f_before, f_after, rtol=1e-4, atol=1e-5)
    notes = []
    if info.source != meta.get("weights_source", info.source):
        notes.append(f"The run started from {meta.get('weights_source')} weights, but here the backbone loads "
                     f"{info.source} weights ({info.detail}); the 'before' view shows those.")
    if not changed:
        notes.append("The backbone was frozen (only the classifier head trained), so its features did not change "
                     "and both views are the same. Train with fewer frozen blocks to see fine-tuning move the clusters.")
    out: dict[str, Any] = {"classes": list(loaded.classes), "labels": y.tolist(),
                           "paths": [str(s.path) for s in samples], "features_changed": changed, "notes": notes}
    titles = {"before": f"Before training<br><sup>the pretrained backbone ({info.source} weights)</sup>",
              "after": "After training<br><sup>the run's model</sup>"}
    for key, feats in (("before", f_before), ("after", f_after)):
        pts, ratio = _pca2(feats)
        out[key] = {"points": pts, "explained": ratio, "title": titles[key]}
    return out


# -- export -----------------------------------------------------------------------------------
def _parse_formats(formats: str | Iterable[str]) -> list[str]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = list(dict.fromkeys(str(f).strip().lower() for f in items if str(f).strip()))
    unknown = [f for f in names if f not in EXPORT_FORMATS]
    if unknown or not names:
        what = f"Unknown export format {unknown[0]!r}" if unknown else "No export format given"
        raise ValueError(f"{what}; choose from {', '.join(EXPORT_FORMATS)} (e.g. formats=('onnx',) or "
                         "--format safetensors,onnx).")
    return names


def _tmp_path(final: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(name)


def _check_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(want).max()))):
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
        raise RuntimeError(f"The {name} export does not reproduce the model (max |diff| {diff:.3g}, "
                           f"shapes {got.shape} vs {want.shape}); nothing was written.")


def _write_torchscript(model: nn.Module, example: torch.Tensor, check: torch.Tensor, want: np.ndarray, final: Path) -> None:
    tmp = _tmp_path(final)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; still loads everywhere
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(tmp))
            reloaded = torch.jit.load(str(tmp), map_location="cpu")
            with torch.inference_mode():
                got = reloaded(check).float().numpy()
        _check_close("TorchScript", got, want)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _write_onnx(model: nn.Module, example: torch.Tensor, check: torch.Tensor, want: np.ndarray, final: Path) -> str:
    """Export with torch's dynamo exporter (legacy TorchScript exporter as a fallback). Returns which ran."""
    import onnxruntime as ort

    tmp = _tmp_path(final)
    exporter = "dynamo"
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull:
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(devnull):  # the dynamo exporter prints progress lines
                try:
                    torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                                      opset_version=ONNX_OPSET, dynamo=True, external_data=False,
                                      dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
                except Exception:  # noqa: BLE001 - some models only export with the legacy exporter
                    exporter = "torchscript"
                    torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                                      opset_version=17, dynamo=False,
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
        del session
        _check_close("ONNX", np.asarray(got, dtype=np.float32), want)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    for extra in final.parent.glob(f"{tmp.name}*"):  # external-data side files, if an exporter wrote any
        extra.unlink(missing_ok=True)
    return exporter


def export_run(store: RunSource, run_id: str | None = None,
               formats: str | Iterable[str] = tuple(EXPORT_FORMATS), out_dir: str | Path | None = None, *,
               overwrite: bool = False) -> dict[str, Path]:
    """Export a run's model; each file is checked against the model before it is moved into place.

    Every format takes float32 input ``(batch, 3, S, S)`` preprocessed as ``preprocessing.json``
    says, and returns logits in ``labels.json`` order. See the module docstring for loading each
    one in a few lines. Files are written to a temporary name and renamed, so a reader never sees
    half a file.

    Args:
        store: a :class:`RunStore` (with ``run_id``) or a run folder.
        run_id: the run's id.
        formats: any of ``"safetensors"`` (the weights: load with timm), ``"torchscript"``
            (``torch.jit.load`` alone), ``"onnx"`` (opset 18, dynamic batch axis, onnxruntime);
            a sequence or a comma-separated string.
        out_dir: destination folder; default ``<run folder>/export`` (earlier exports there are
            replaced).
        overwrite: allow replacing files of the same names in a user-given ``out_dir``.

    Returns:
        ``{format: path}`` for each format, plus ``"labels"`` and ``"preprocessing"``.

    Raises:
        ValueError: an unknown format (the message lists the choices).
        FileExistsError: ``out_dir`` was given, already holds files of these names and
            ``overwrite`` is False.
        EvaluateError: no such run or no checkpoint.
        RuntimeError: an export did not reproduce the model's outputs (nothing of it is written).
    """
    names = _parse_formats(formats)
    loaded = load_run(store, run_id)
    if out_dir is None:
        dest, user_dir = loaded.run_dir / "export", False
    else:
        dest, user_dir = Path(out_dir).expanduser(), True
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"Export folder {dest} is a file; pick a folder.")
    targets = {f: dest / EXPORT_FORMATS[f] for f in names}
    targets.update(labels=dest / "labels.json", preprocessing=dest / "preprocessing.json")
    if user_dir and not overwrite:
        taken = [p.name for p in targets.values() if p.exists()]
        if taken:
            raise FileExistsError(f"{dest} already holds {', '.join(taken)}. Pick an empty folder, or pass "
                                  "overwrite=True (CLI: --overwrite) to replace them.")
    dest.mkdir(parents=True, exist_ok=True)

    meta, model = loaded.meta, loaded.model
    size = int(meta["image_size"])
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, size, size, generator=gen)
    check = torch.randn(3, 3, size, size, generator=gen)  # batch 3: checks the batch axis is dynamic too
    with _MODEL_LOCK:
        with torch.inference_mode():
            want = model(check).float().numpy()
        info: dict[str, Any] = {}
        for f in names:
            if f == "safetensors":
                tmp = _tmp_path(targets[f])
                try:
                    shutil.copyfile(loaded.run_dir / "model.safetensors", tmp)
                    os.replace(tmp, targets[f])
                finally:
                    tmp.unlink(missing_ok=True)
            elif f == "torchscript":
                _write_torchscript(model, example, check, want, targets[f])
            elif f == "onnx":
                info["onnx_exporter"] = _write_onnx(model, example, check, want, targets[f])
                info["onnx_opset"] = ONNX_OPSET if info["onnx_exporter"] == "dynamo" else 17
    import timm

    meta_out = {**meta, "export": {
        "run_id": run_id or loaded.run_dir.name, "input_name": "input", "output_name": "logits",
        "input": f"float32 (batch, 3, {size}, {size}), RGB, (x / 255 - mean) / std",
        "resize": f"shorter side to load_size ({meta['load_size']}) with {meta.get('interpolation', 'bicubic')}, "
                  f"centre crop load_size, then centre crop image_size ({size})",
        "output": "logits, one per class in labels.json order (softmax for probabilities)",
        "torch": torch.__version__, "timm": timm.__version__, **info}}
    atomic_write_json(targets["labels"], list(loaded.classes))
    atomic_write_json(targets["preprocessing"], meta_out)
    return targets
