"""How good a trained run is on its validation split: confusion matrix, per-class report, mistakes.

:func:`confusion_matrix` and :func:`classification_report` are plain NumPy; :func:`evaluate_run`
predicts the run's validation split (rebuilt as in training, :mod:`~tl_dashboard.inference`) and
scores it. Drawn by :mod:`tl_dashboard.charts` (``confusion_figure``, ``per_class_figure``).
This module never imports streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .inference import BATCH, RunSource, as_loaded, decoded_cache, model_input, val_split

__all__ = ["confusion_matrix", "classification_report", "Evaluation", "evaluate_run", "cell_images"]


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


def classification_report(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int, class_names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
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
    return [
        {"class": names[i], "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i in range(n_classes)
    ]


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


def _mistakes(
    paths: list[str], classes: list[str], y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, losses: np.ndarray
) -> list[dict[str, Any]]:
    """The misclassified images, highest loss first."""
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-losses[wrong], kind="stable")]
    return [
        {
            "path": paths[i],
            "true": int(y_true[i]),
            "pred": int(y_pred[i]),
            "true_name": classes[y_true[i]],
            "pred_name": classes[y_pred[i]],
            "confidence": float(probs[i, y_pred[i]]),
            "true_prob": float(probs[i, y_true[i]]),
            "loss": float(losses[i]),
        }
        for i in wrong
    ]


def evaluate_run(store: RunSource, run_id: str | None = None, *, batch_size: int = BATCH) -> Evaluation:
    """Predict the run's validation split (rebuilt exactly as in training) and score it.

    Args:
        store: a :class:`RunStore` (with ``run_id``), a run folder, or a loaded run.
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
    loaded = as_loaded(store, run_id)
    split = val_split(loaded)
    meta, classes = loaded.meta, list(loaded.classes)
    x_u8, y = decoded_cache(meta).stack(split.val)
    with torch.inference_mode():
        logits = torch.cat([loaded.model(model_input(x_u8[i : i + batch_size], meta)) for i in range(0, len(x_u8), batch_size)]).float()
        losses = F.cross_entropy(logits, y, reduction="none").numpy().astype(np.float32)
        probs = logits.softmax(1).numpy().astype(np.float32)
    y_true, y_pred = y.numpy(), logits.argmax(1).numpy()
    paths = [str(s.path) for s in split.val]
    notes = []
    trained_with = (loaded.summary or {}).get("val_images")
    if trained_with is not None and trained_with != len(paths):
        notes.append(
            f"The validation split now has {len(paths)} images; the run was trained with {trained_with}. "
            "The data folder changed since training."
        )
    return Evaluation(
        run_id=loaded.run_id,
        classes=classes,
        paths=paths,
        y_true=y_true,
        y_pred=y_pred,
        probs=probs,
        losses=losses,
        accuracy=float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        mean_loss=float(losses.mean()) if len(losses) else 0.0,
        report=classification_report(y_true, y_pred, len(classes), classes),
        confusion=confusion_matrix(y_true, y_pred, len(classes)),
        misclassified=_mistakes(paths, classes, y_true, y_pred, probs, losses),
        notes=notes,
    )


def cell_images(result: Evaluation, true: int, pred: int) -> list[dict[str, Any]]:
    """The validation images in one confusion-matrix cell, least sure first.

    Args:
        result: an :class:`Evaluation`.
        true: the cell's row (true class index).
        pred: the cell's column (predicted class index).

    Returns:
        ``[{"path", "true_name", "pred_name", "confidence" (p of the predicted class), "true_prob"}]``,
        lowest ``confidence`` first.
    """
    idx = np.flatnonzero((result.y_true == true) & (result.y_pred == pred))
    rows = [
        {
            "path": result.paths[i],
            "true_name": result.classes[true],
            "pred_name": result.classes[pred],
            "confidence": float(result.probs[i, pred]),
            "true_prob": float(result.probs[i, true]),
        }
        for i in idx
    ]
    return sorted(rows, key=lambda r: r["confidence"])
