"""The one home of display formats shared by the core (comparison tables) and the pages."""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

__all__ = [
    "NO_EPOCH",
    "best_accuracy",
    "config_view",
    "format_config_value",
    "format_params",
    "format_seconds",
    "format_time",
    "no_completed_epoch",
]

NO_EPOCH = "no completed epoch"
_AUTO_ZERO = ("lr", "epochs", "image_size")  # 0 means "auto": the engine picks
_OFF_ZERO = ("patience", "unfreeze_at")  # 0 means "off"


def format_params(n: int | float | None) -> str:
    """1234 -> '1.2 k', 4_700_000 -> '4.70 M'."""
    if n is None:
        return "-"
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return f"{int(n)}"


def format_seconds(s: float | None) -> str:
    """Seconds, short enough for a metric: '0.42 s', '5 s', '7.5 s', '42 s', '2m 05s', '1h 03m'.

    Example:
        >>> [format_seconds(x) for x in (0.4242, 5.0, 7.46, 42.2, 125, 3790, None)]
        ['0.42 s', '5 s', '7.5 s', '42 s', '2m 05s', '1h 03m', '-']
    """
    if s is None or not math.isfinite(float(s)):
        return "-"
    s = float(s)
    if s < 10:  # two significant digits, no trailing zeros: '0.42 s', '7.5 s', '5 s'
        return f"{float(f'{s:.2g}'):g} s"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def format_time(t: float | None, *, short: bool = False) -> str:
    """Epoch seconds as local 'YYYY-MM-DD HH:MM:SS', or 'MM-DD HH:MM' when ``short``; '' for none."""
    if not t:
        return ""
    return time.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S", time.localtime(float(t)))


def no_completed_epoch(summary: Mapping[str, Any] | None) -> bool:
    """Whether a run ended before its first epoch (no model worth a score; older stores kept one)."""
    return (summary or {}).get("epochs") == 0


def best_accuracy(summary: Mapping[str, Any] | None) -> float | None:
    """The run's best validation accuracy, None when it has none or no epoch completed."""
    s = summary or {}
    best = s.get("best_val_accuracy")
    return None if best is None or no_completed_epoch(s) else float(best)


def format_config_value(key: str, value: Any, summary: Mapping[str, Any] | None = None) -> Any:
    """One config value as people read it: 0 sentinels as 'auto' / 'off', with what auto chose when known.

    Example:
        >>> format_config_value("lr", 0, {"auto": {"lr_used": 0.001}}), format_config_value("patience", 0)
        ('0.001 (auto)', 'off')
    """
    auto = (summary or {}).get("auto") or {}
    if key in _AUTO_ZERO and value in (0, None):
        used = {"lr": auto.get("lr_used"), "epochs": auto.get("epochs_planned"), "image_size": (summary or {}).get("image_size")}[key]
        if key == "lr" and auto.get("solver"):
            return "auto (L-BFGS solver)"
        return "auto" if used is None else f"{used:g} (auto)" if key == "lr" else f"{used} (auto)"
    if key in _OFF_ZERO and value in (0, None):
        return "off"
    if key == "train_per_class" and value in (0, None):
        return "all"
    return value


def config_view(config: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A run's config for display (the Runs page's Config tab): :func:`format_config_value` on every key."""
    return {k: format_config_value(k, v, summary) for k, v in (config or {}).items()}
