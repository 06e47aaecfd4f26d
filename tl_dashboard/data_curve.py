"""How much data do I need? Validation accuracy against training images per class.

For each size ``n`` (1, 2, 5, 10, 20, 50, ... up to all) and each of several draws, ``n`` training
images per class are drawn at random, a model is trained on them alone and scored on the whole,
unchanged validation split. The spread of the draws says how much luck there is at that size.

* ``"head"`` (the default, nearly free): a linear probe, a logistic regression on the frozen
  backbone's pooled features (:func:`tl_dashboard.features.head_features`, one pass over the
  images); each point is a fit on a few hundred feature vectors.
* any other freeze plan (``"none"``, ``"4"``, ...) or ``"scratch"`` (random weights, nothing
  frozen): real training runs (:func:`tl_dashboard.engine.train`) on a temporary copy of the draw
  (hard links where the file system allows), with the caller's epochs, learning rate and image
  size. Opt-in: sizes x draws runs.

Example:
    >>> curve = data_curve(TrainConfig("sample_data/emoji3", image_size=96))  # doctest: +SKIP
    >>> [(p["n_per_class"], round(p["mean"], 2)) for p in curve.points]       # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .data import scan_images
from .engine import TrainConfig
from .errors import UserError
from .features import head_features

__all__ = ["DataCurve", "data_curve", "curve_sizes", "DEFAULT_LADDER"]

DEFAULT_LADDER = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class DataCurveError(UserError, ValueError):
    """A data-curve request that cannot run; str() names the bad value and the fix."""


@dataclass
class DataCurve:
    """Points of the curve, one per (plan, size); accuracies hold one value per draw."""

    data_dir: str
    classes: list[str]
    val_images: int
    points: list[dict[str, Any]]  # {"plan", "n_per_class", "accuracies", "mean", "std", "min", "max", "seconds"}
    seconds: dict[str, float] = field(default_factory=dict)  # {"features": s, "head": s, <plan>: s}

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "classes": self.classes,
            "val_images": self.val_images,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "points": self.points,
        }


def curve_sizes(per_class_counts: Sequence[int], sizes: Sequence[int] | None = None) -> list[int]:
    """Images per class to try: the ladder below the smallest class's training count, then all of it.

    Returns:
        Increasing sizes; the last is the smallest class's training count ("all" for a balanced set).
    """
    cap = int(min(per_class_counts))
    if cap < 1:
        raise DataCurveError("A class has no training images; every class needs at least one.")
    ladder = [int(s) for s in (sizes or DEFAULT_LADDER) if int(s) >= 1]
    return sorted({s for s in ladder if s < cap} | {cap})


def _draw(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` random rows of every class (all of it where a class has fewer)."""
    out = [rng.choice(np.flatnonzero(labels == c), size=min(n, int((labels == c).sum())), replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(out))


def _point(plan: str, n: int, accs: list[float], seconds: float) -> dict[str, Any]:
    a = np.asarray(accs, dtype=float)
    return {
        "plan": plan,
        "n_per_class": int(n),
        "accuracies": [round(float(v), 4) for v in a],
        "mean": round(float(a.mean()), 4),
        "std": round(float(a.std()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
        "seconds": round(seconds, 3),
    }


def _probe_points(fs, sizes: list[int], draws: int, seed: int) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = fs.train.numpy().astype(np.float64), fs.train_labels.numpy()
    xv, yv = fs.val.numpy().astype(np.float64), fs.val_labels.numpy()
    full = max(int(np.bincount(y).max()), 1)
    points = []
    for n in sizes:
        t0, accs = time.perf_counter(), []
        rng = np.random.default_rng([seed, n])
        for _ in range(draws if n < full else 1):  # every draw of "all" is the same set
            idx = _draw(y, n, rng)
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(x[idx], y[idx])
            accs.append(float((clf.predict(xv) == yv).mean()))
        points.append(_point("head", n, accs, time.perf_counter() - t0))
    return points


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _subset_folder(split, idx: np.ndarray, into: Path) -> Path:
    """A pre-split copy (hard links) of the chosen training images and every validation image."""
    for part, samples in (("train", [split.train[i] for i in idx]), ("val", split.val)):
        for j, s in enumerate(samples):
            _link(s.path, into / part / split.classes[s.label] / f"{j:05d}{s.path.suffix.lower()}")
    return into


def _plan_config(config: TrainConfig, plan: str) -> TrainConfig:
    if plan == "scratch":
        return replace(config, weights="none", freeze="none", feature_cache="off", unfreeze_at=0)
    return replace(config, freeze=plan)


def _trained_points(
    config: TrainConfig, split, plan: str, sizes: list[int], draws: int, progress: Callable[[str], None] | None
) -> list[dict[str, Any]]:
    from .engine import train

    y = np.asarray([s.label for s in split.train])
    full = max(int(np.bincount(y).max()), 1)
    cfg = _plan_config(config, plan)
    points = []
    for n in sizes:
        t0, accs = time.perf_counter(), []
        rng = np.random.default_rng([config.seed, n])
        for d in range(draws if n < full else 1):
            idx = _draw(y, n, rng)
            with tempfile.TemporaryDirectory(prefix="tl-curve-") as tmp:
                folder = _subset_folder(split, idx, Path(tmp) / "data")
                if progress:
                    progress(f"{plan}: {n} per class, draw {d + 1}")
                res = train(replace(cfg, data_dir=str(folder), seed=config.seed + d), out_dir=Path(tmp) / "run")
                accs.append(float(res.val_accuracy))
        points.append(_point(plan, n, accs, time.perf_counter() - t0))
    return points


def data_curve(
    config: TrainConfig,
    *,
    sizes: Sequence[int] | None = None,
    draws: int = 5,
    plans: Sequence[str] = ("head",),
    trained_draws: int = 2,
    progress: Callable[[str], None] | None = None,
) -> DataCurve:
    """Validation accuracy against training images per class, several random draws per point.

    Args:
        config: data folder, backbone, weights, image size, split and seed; for trained plans
            also epochs, batch size, learning rate, augmentation and device.
        sizes: images per class to try (default 1, 2, 5, 10, 20, 50, ...), capped at the
            smallest class's training count, which is always the last point.
        draws: random draws per size for the linear probe.
        plans: ``"head"`` (linear probe on cached features), any freeze plan (``"none"``, ``"4"``)
            or ``"scratch"``; every plan but ``"head"`` trains sizes x ``trained_draws`` real runs.
        trained_draws: draws per size for the trained plans.
        progress: called with a short message before each step.

    Returns:
        A :class:`DataCurve`.

    Raises:
        data.DataError: bad folder. DataCurveError: bad ``draws`` or ``plans``.
    """
    if draws < 1 or trained_draws < 1:
        raise DataCurveError(f"draws={draws}, trained_draws={trained_draws}: both must be at least 1.")
    plans = [p.strip() for p in plans if p.strip()]
    if not plans:
        raise DataCurveError("No plans given; use head, none, scratch or a number of frozen blocks.")
    split = scan_images(config.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    counts = np.bincount([s.label for s in split.train], minlength=len(split.classes))
    ladder = curve_sizes(counts, sizes)
    points: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    if "head" in plans:
        if progress:
            progress("computing the frozen features (one pass over the images)")
        t0 = time.perf_counter()
        fs = head_features(config)
        t1 = time.perf_counter()
        points += _probe_points(fs, ladder, draws, config.seed)
        seconds.update(features=t1 - t0, head=time.perf_counter() - t0)
    for plan in (p for p in plans if p != "head"):
        t0 = time.perf_counter()
        points += _trained_points(config, split, plan, ladder, trained_draws, progress)
        seconds[plan] = time.perf_counter() - t0
    return DataCurve(str(config.data_dir), list(split.classes), len(split.val), points, seconds)
