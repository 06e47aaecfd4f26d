"""Honest uncertainty for accuracies measured on few images.

With 36 validation images one image is 2.8 points: an accuracy means little without its count
and interval. :func:`wilson_interval` gives the 95% Wilson score interval of ``k`` correct out of
``n`` (good for small ``n`` and for accuracies near 0 or 1, unlike the normal approximation);
:func:`accuracy_text` formats an accuracy the way every page shows it; :func:`intervals_overlap`
says whether two runs' intervals overlap (then their order is not established by this data);
:func:`mean_interval` summarises repeated runs (mean and a t-based 95% interval of the mean).

Example:
    >>> lo, hi = wilson_interval(9, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.596, 0.982)
    >>> accuracy_text(0.9, 10)
    '90.0% (60-98%, n=10)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "Z95",
    "accuracy_interval",
    "accuracy_text",
    "best_epoch",
    "epoch_rank",
    "intervals_overlap",
    "mean_interval",
    "overlap_note",
    "run_interval",
    "wilson_interval",
]

Z95 = 1.959963984540054


def epoch_rank(row: Mapping[str, Any]) -> tuple[float, float]:
    """How epochs compete for the kept model: higher validation accuracy, then lower validation loss
    (an exact tie keeps the earlier epoch). The engine (``resume.Progress``) and the charts use this."""
    loss = row.get("val_loss")
    return (float(row.get("val_acc") or 0.0), -float(loss) if loss is not None and math.isfinite(loss) else -math.inf)


def best_epoch(epochs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row of the epoch whose weights are kept (see :func:`epoch_rank`), or None without epochs."""
    best = None
    for row in epochs:
        if row.get("val_acc") is not None and (best is None or epoch_rank(row) > epoch_rank(best)):
            best = row
    return best


# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def wilson_interval(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: ``k`` successes out of ``n`` trials.

    ``n == 0`` gives the uninformative ``(0.0, 1.0)``.

    Raises:
        ValueError: ``k`` outside ``0..n`` or ``n`` negative.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """The Wilson interval of an accuracy measured on ``n`` images (``k = round(accuracy * n)``)."""
    k = min(max(round(float(accuracy) * n), 0), n) if n else 0
    return wilson_interval(k, n)


def accuracy_text(accuracy: float | None, n: int | None) -> str:
    """``'90.0% (60-98%, n=10)'``: the accuracy, its 95% interval and the image count; ``'-'`` if unknown."""
    if accuracy is None or not isinstance(accuracy, (int, float)) or not math.isfinite(float(accuracy)):
        return "-"
    if not n:
        return f"{float(accuracy):.1%}"
    lo, hi = accuracy_interval(accuracy, int(n))
    return f"{float(accuracy):.1%} ({lo * 100:.0f}-{hi * 100:.0f}%, n={int(n)})"


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when two intervals share any point."""
    return a[0] <= b[1] and b[0] <= a[1]


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of repeated measurements and a t-based 95% interval of it.

    One value gives ``(v, v, v)`` (no spread known).
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    t = _T975[min(len(vals) - 1, len(_T975)) - 1] if len(vals) - 1 <= len(_T975) else Z95
    half = t * sd / math.sqrt(len(vals))
    return m, m - half, m + half


def run_interval(summary: Mapping[str, Any], key: str = "val_accuracy") -> tuple[float, float] | None:
    """The Wilson interval of a run's accuracy from its summary (``val_images`` is the count)."""
    acc, n = summary.get(key), summary.get("val_images")
    if not isinstance(acc, (int, float)) or not n:
        return None
    return accuracy_interval(float(acc), int(n))


def overlap_note(names: Sequence[str], intervals: Sequence[tuple[float, float] | None]) -> str | None:
    """One sentence naming the pairs of runs whose 95% intervals overlap, or None when none do."""
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = intervals[i], intervals[j]
            if a is not None and b is not None and intervals_overlap(a, b):
                pairs.append(f"{names[i]} and {names[j]}")
    if not pairs:
        return None
    shown = "; ".join(pairs[:6]) + (f" and {len(pairs) - 6} more pairs" if len(pairs) > 6 else "")
    return f"95% intervals overlap: {shown}. On this many validation images their difference could be chance; do not rank them on it."


def group_repeats(points: Sequence[Mapping[str, Any]], key: str = "best_val_accuracy") -> list[dict[str, Any]]:
    """Merge a sweep's runs that differ only by seed into one point per (freeze, from scratch).

    Each merged point keeps the first run's fields and gets ``key`` = the mean over its runs,
    ``acc_low``/``acc_high`` = the 95% interval (t-based over the repeats when there are 2 or more,
    else the single run's Wilson interval on ``val_images``), ``repeats``, ``train_seconds`` = mean,
    ``seconds_sd``, ``gflops_per_epoch`` (first known) and ``shared_machine`` (any run shared).
    Points without ``key`` are left out.
    """
    groups: dict[tuple[Any, bool], list[Mapping[str, Any]]] = {}
    for p in points:
        if p.get(key) is None:
            continue
        groups.setdefault((p.get("freeze"), bool(p.get("from_scratch"))), []).append(p)
    out = []
    for runs in groups.values():
        accs = [float(r[key]) for r in runs]
        secs = [float(r["train_seconds"]) for r in runs if r.get("train_seconds") is not None]
        if len(accs) >= 2:
            mean, lo, hi = mean_interval(accs)
        else:
            mean = accs[0]
            lo, hi = accuracy_interval(mean, int(runs[0].get("val_images") or 0)) if runs[0].get("val_images") else (mean, mean)
        ms = sum(secs) / len(secs) if secs else None
        sd = math.sqrt(sum((s - ms) ** 2 for s in secs) / (len(secs) - 1)) if len(secs) >= 2 and ms is not None else 0.0
        out.append(
            {
                **runs[0],
                key: mean,
                "acc_low": max(0.0, lo),
                "acc_high": min(1.0, hi),
                "repeats": len(runs),
                "train_seconds": ms,
                "seconds_sd": sd,
                "gflops_per_epoch": next((r["gflops_per_epoch"] for r in runs if r.get("gflops_per_epoch")), None),
                "shared_machine": any(bool(r.get("shared_machine")) for r in runs),
                "run_ids": [r.get("run_id") for r in runs],
            }
        )
    return out


def sweep_overlap_note(points: Sequence[Mapping[str, Any]]) -> str | None:
    """For merged sweep points (:func:`group_repeats`): which depths' 95% intervals overlap."""
    pts = [p for p in points if p.get("acc_low") is not None]
    names = [str(p.get("freeze_label") or p.get("label")) + (" (from scratch)" if p.get("from_scratch") else "") for p in pts]
    return overlap_note(names, [(p["acc_low"], p["acc_high"]) for p in pts])


def limit_per_class(split: Any, n: int, seed: int = 0) -> Any:
    """A copy of a ``data.DatasetSplit`` with at most ``n`` training images per class (a seeded pick).

    Validation is untouched, so runs with fewer training images are scored on the same images.
    """
    import random
    from dataclasses import replace

    if n <= 0:
        return split
    rng = random.Random(seed * 7919 + n)
    by_class: dict[int, list[Any]] = {}
    for s in split.train:
        by_class.setdefault(s.label, []).append(s)
    keep = {id(s) for samples in by_class.values() for s in (samples if len(samples) <= n else rng.sample(samples, n))}
    return replace(split, train=[s for s in split.train if id(s) in keep])
