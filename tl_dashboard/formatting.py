"""The one home of display formats shared by the core (comparison tables) and the pages."""
from __future__ import annotations

import math
import time

__all__ = ["format_params", "format_seconds", "format_time"]


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
