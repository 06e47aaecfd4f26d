"""Which images are probably mislabelled: confident learning on out-of-sample predictions.

Every image of the data set (train and validation) gets a class probability from a model that
never saw it: a logistic regression on the frozen backbone's pooled features
(:func:`tl_dashboard.features.head_features`, computed once), fitted K times, each time without
the fold being predicted (``sklearn.model_selection.cross_val_predict``). cleanlab then scores each
label (``cleanlab.rank.get_label_quality_scores``, self-confidence: the probability the model gives
the image's own label) and flags the likely errors (``cleanlab.filter.find_label_issues``,
confident learning, Northcutt et al. 2021). Cost: one feature pass over the images plus K small
fits on a few hundred feature vectors.

Example:
    >>> rep = find_label_issues(TrainConfig("sample_data/emoji3", image_size=96))  # doctest: +SKIP
    >>> rep.suspects[0]["path"], rep.suspects[0]["given"], rep.suspects[0]["predicted"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .engine import TrainConfig
from .errors import UserError
from .features import head_features

__all__ = ["LabelReport", "find_label_issues", "out_of_sample_probs"]


class LabelIssueError(UserError, ValueError):
    """Label-issue ranking that cannot run on this data; str() says why and the fix."""


@dataclass
class LabelReport:
    """Every image ranked by how likely its label is wrong (most suspicious first)."""

    data_dir: str
    classes: list[str]
    ranked: list[dict[str, Any]]  # {"path", "split", "given", "predicted", "confidence", "given_prob", "score", "flagged"}
    folds: int
    oos_accuracy: float  # accuracy of the out-of-sample predictions against the given labels
    seconds: dict[str, float] = field(default_factory=dict)  # {"features": s, "ranking": s}
    model: str = ""
    weights: str = ""

    @property
    def suspects(self) -> list[dict[str, Any]]:
        """The flagged images (cleanlab's confident-learning issues), most suspicious first."""
        return [r for r in self.ranked if r["flagged"]]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """JSON-ready: the suspects (or the ``top`` ranked images when given) and the run's facts."""
        rows = self.ranked[:top] if top else self.suspects
        return {
            "data_dir": self.data_dir,
            "classes": self.classes,
            "images": len(self.ranked),
            "flagged": len(self.suspects),
            "folds": self.folds,
            "oos_accuracy": round(self.oos_accuracy, 4),
            "model": self.model,
            "weights": self.weights,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "suspects": rows,
        }


def _logreg():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))


def out_of_sample_probs(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, int]:
    """Class probabilities for every row from a logistic regression fitted without that row's fold.

    Args:
        features: ``(N, D)`` float features.
        labels: ``(N,)`` int labels in ``0..n_classes-1``.
        n_classes: number of classes.
        folds: K of the stratified K-fold; lowered to the smallest class's size (at least 2).
        seed: fold assignment seed.

    Returns:
        ``(probs (N, n_classes), folds used)``.

    Raises:
        LabelIssueError: a class has fewer than 2 images.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(labels, minlength=n_classes)
    if counts.min() < 2:
        bad = int(np.argmin(counts))
        raise LabelIssueError(f"Class {bad} has {counts[bad]} image(s); ranking label issues needs at least 2 per class.")
    k = int(min(folds, counts.min()))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds
        probs = cross_val_predict(_logreg(), features, labels, cv=cv, method="predict_proba")
    return probs.astype(np.float64), k


def find_label_issues(config: TrainConfig, *, folds: int = 5, progress: Callable[[int, int], None] | None = None) -> LabelReport:
    """Rank every image of ``config.data_dir`` by how likely its label is wrong.

    Args:
        config: the data folder and the backbone whose frozen features are used (model, weights,
            image size; ``val_fraction`` and ``seed`` only say which split each image is in).
        folds: K for the out-of-sample predictions.
        progress: called with ``(done, total)`` images during the feature pass.

    Returns:
        A :class:`LabelReport`; ``ranked`` holds every image, lowest label-quality score first,
        ``suspects`` the ones confident learning flags.

    Raises:
        data.DataError: bad folder. LabelIssueError: a class with fewer than 2 images.
    """
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    t0 = time.perf_counter()
    fs = head_features(config, progress=progress)
    t1 = time.perf_counter()
    x = np.concatenate([fs.train.numpy(), fs.val.numpy()]).astype(np.float64)
    y = np.concatenate([fs.train_labels.numpy(), fs.val_labels.numpy()]).astype(np.int64)
    paths = list(fs.train_paths) + list(fs.val_paths)
    splits = ["train"] * len(fs.train_paths) + ["val"] * len(fs.val_paths)
    probs, k = out_of_sample_probs(x, y, len(fs.classes), folds, config.seed)
    scores = get_label_quality_scores(y, probs, method="self_confidence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flagged = cl_find(y, probs, filter_by="prune_by_noise_rate", n_jobs=1)  # no worker processes in a server
    pred = probs.argmax(1)
    order = np.lexsort((np.arange(len(y)), scores))  # lowest score first, ties by position
    ranked = [
        {
            "path": paths[i],
            "split": splits[i],
            "given": fs.classes[y[i]],
            "predicted": fs.classes[pred[i]],
            "confidence": round(float(probs[i, pred[i]]), 4),
            "given_prob": round(float(probs[i, y[i]]), 4),
            "score": round(float(scores[i]), 4),
            "flagged": bool(flagged[i]),
        }
        for i in order
    ]
    return LabelReport(
        str(Path(config.data_dir)),
        list(fs.classes),
        ranked,
        k,
        float((pred == y).mean()),
        {"features": t1 - t0, "ranking": time.perf_counter() - t1},
        config.model,
        fs.weights_source,
    )
