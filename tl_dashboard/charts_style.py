"""The look every chart shares: the colours, the legend under the plot and the short toolbar.

Colours are shared by every chart: frozen blocks are slate blue-grey, trainable ones orange;
train curves are blue, validation curves orange-red; BatchNorm statistics green. Runs and classes
take one colour each from :data:`PALETTE` (Tableau 10, the source of the colours above, then
Dark24), in order. :mod:`charts` re-exports the colours.
"""

from __future__ import annotations

from typing import Any, Mapping

from plotly.colors import qualitative

#: One colour per run or class, in order: Tableau 10, then Dark24 for more than ten.
PALETTE: tuple[str, ...] = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    *qualitative.Dark24,
)
FROZEN = "#7f93ad"  # slate blue-grey: weights kept as loaded
TRAINABLE = PALETTE[1]  # orange: weights that learn
TRAIN = PALETTE[0]  # blue: train split / train curves
VAL = PALETTE[2]  # orange-red: validation split / validation curves
BN_STATS = PALETTE[4]  # green: BatchNorm running statistics

# Legends sit under the plot, left-aligned: they never meet the title (top left) or plotly's
# toolbar (top right, shown on hover), and a long legend on a narrow chart wraps downwards.
_LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0, yref="paper")
# The toolbar keeps only what helps here: download, zoom, pan, reset (four icons, top right).
_MODEBAR = dict(remove=["select2d", "lasso2d", "zoomin", "zoomout", "autoscale", "togglespikelines", "hoverclosest", "hovercompare"])


def _layout(top: int = 48, legend: Mapping[str, Any] = _LEGEND_BELOW, hovermode: str = "closest") -> dict[str, Any]:
    """The layout every chart shares: thin margins (``top`` leaves room for a title and subtitle,
    on the left), the legend under the plot, the hover mode, and a short toolbar."""
    return dict(
        margin=dict(l=10, r=10, t=top, b=10), legend=dict(legend), hovermode=hovermode, title_x=0, title_xref="paper", modebar=_MODEBAR
    )
