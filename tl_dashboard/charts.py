"""Pure chart functions: rows in, plotly Figure out. No Streamlit, no torch.

Colours are shared by every chart: frozen blocks are slate blue-grey, trainable ones orange;
train curves are blue, validation curves orange-red.

Example:
    >>> fig = class_counts_figure({"cats": {"train": 8, "val": 2}, "dogs": {"train": 6, "val": 2}})
    >>> [t.name for t in fig.data]
    ['train', 'val']
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

__all__ = [
    "FROZEN", "TRAINABLE", "TRAIN", "VAL", "class_counts_figure", "blocks_strip_figure",
    "loss_figure", "accuracy_figure",
]

FROZEN = "#7f93ad"  # slate blue-grey: weights kept as loaded
TRAINABLE = "#f28e2b"  # orange: weights that learn
TRAIN = "#4e79a7"  # train split / train curves
VAL = "#e15759"  # validation split / validation curves

_LAYOUT = dict(margin=dict(l=10, r=10, t=48, b=10), legend=dict(orientation="h", yanchor="bottom", y=1.0,
                                                              xanchor="right", x=1.0), hovermode="x unified")


def _get(obj: Any, attr: str, default: Any = None) -> Any:
    return obj.get(attr, default) if isinstance(obj, Mapping) else getattr(obj, attr, default)


def class_counts_figure(counts: Mapping[str, Mapping[str, int]]) -> go.Figure:
    """Images per class, train and validation stacked.

    Args:
        counts: ``{class: {"train": n, "val": n}}`` (``DatasetSplit.counts()``).
    """
    classes = list(counts)
    fig = go.Figure()
    for split, colour, name in (("train", TRAIN, "train"), ("val", VAL, "val")):
        fig.add_bar(x=classes, y=[int(counts[c].get(split, 0)) for c in classes], name=name,
                    marker_color=colour, hovertemplate="%{x}: %{y} " + name + " images<extra></extra>")
    fig.update_layout(barmode="stack", title="Images per class", xaxis_title="class",
                      yaxis_title="images", **{**_LAYOUT, "hovermode": "closest",
                                               "legend": {**_LAYOUT["legend"], "traceorder": "normal"}})
    return fig


def blocks_strip_figure(blocks: Sequence[Any], frozen_names: Sequence[str]) -> go.Figure:
    """The network as bars in forward order: height = parameters, colour = frozen or trainable.

    Args:
        blocks: ``layers.Block`` objects or dicts with ``name``, ``params`` and optionally
            ``kind`` and ``output_shape``, in forward order.
        frozen_names: names of the frozen blocks (the head is always trainable).
    """
    frozen = set(frozen_names)
    names = [str(_get(b, "name")) for b in blocks]
    params = [int(_get(b, "params", 0) or 0) for b in blocks]
    shapes = [_get(b, "output_shape") for b in blocks]
    shape_txt = ["x".join(str(d) for d in s) if s else "?" for s in shapes]
    is_frozen = [n in frozen and _get(b, "kind") != "head" for n, b in zip(names, blocks)]
    fig = go.Figure()
    for state, colour, label in ((True, FROZEN, "frozen"), (False, TRAINABLE, "trainable")):
        idx = [i for i, f in enumerate(is_frozen) if f == state]
        fig.add_bar(
            x=[names[i] for i in idx], y=[params[i] for i in idx], name=label, marker_color=colour,
            customdata=[[shape_txt[i], f"{params[i]:,}"] for i in idx],
            hovertemplate="%{x}: %{customdata[1]} params, output %{customdata[0]}<extra>" + label + "</extra>",
        )
    n_frozen = sum(p for p, f in zip(params, is_frozen) if f)
    total = max(1, sum(params))
    fig.update_layout(
        title=f"Blocks in forward order: {_share(n_frozen, total)} of the parameters frozen",
        xaxis=dict(title="block (input → output)", categoryorder="array", categoryarray=names),
        yaxis=dict(title="parameters (log scale)", type="log", dtick=1, tickformat="~s"),
        barmode="overlay", bargap=0.15, **{**_LAYOUT, "hovermode": "closest"},
    )
    return fig


def _share(part: int, total: int) -> str:
    """Percentage that never rounds a partial share to '0%' or '100%' (e.g. '99.9%')."""
    f = part / total
    if 0 < f < 0.01 or 0.99 < f < 1:
        return f"{min(max(f, 0.001), 0.999):.1%}"
    return f"{f:.0%}"


def _epoch_axis(n_epochs: int | None, n_rows: int) -> dict[str, Any]:
    """x axis in epochs; fixed to [0, n_epochs] when the run's length is known, so a live curve grows
    across a still axis instead of rescaling on every update."""
    axis: dict[str, Any] = {"title": "epoch", "rangemode": "tozero"}
    if n_epochs:
        axis["range"] = [0, n_epochs + 0.2]
    if (n_epochs or n_rows) <= 12:
        axis["dtick"] = 1
    return axis


def loss_figure(steps: Sequence[Mapping[str, Any]], epochs: Sequence[Mapping[str, Any]],
                max_points: int = 1500, n_epochs: int | None = None) -> go.Figure:
    """Training loss per step (thin line) and per epoch, validation loss per epoch.

    Args:
        steps: rows with ``epoch`` (fractional) and ``loss`` (``RunStore.steps``).
        epochs: rows with ``epoch``, ``train_loss`` and ``val_loss`` (``RunStore.epochs``).
        max_points: most per-step points drawn; longer runs are thinned evenly (last step kept).
        n_epochs: the run's planned epochs, to fix the x axis while it trains.
    """
    if len(steps) > max_points:  # a long run: every k-th step keeps the live chart light
        k = -(-len(steps) // max_points)
        steps = list(steps[::k]) + ([steps[-1]] if (len(steps) - 1) % k else [])
    fig = go.Figure()
    fig.add_scatter(x=[s["epoch"] for s in steps], y=[s["loss"] for s in steps], mode="lines",
                    name="train loss (per step)", line=dict(color=TRAIN, width=1), opacity=0.55)
    fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e.get("train_loss") for e in epochs],
                    mode="lines+markers", name="train loss (epoch)", line=dict(color=TRAIN, width=2.5))
    fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e.get("val_loss") for e in epochs],
                    mode="lines+markers", name="val loss", line=dict(color=VAL, width=2.5))
    fig.update_layout(title="Loss", yaxis_title="cross-entropy loss", xaxis=_epoch_axis(n_epochs, len(epochs)),
                      yaxis=dict(rangemode="tozero"), **_LAYOUT)
    return fig


def accuracy_figure(epochs: Sequence[Mapping[str, Any]], n_epochs: int | None = None) -> go.Figure:
    """Train and validation accuracy per epoch, 0-100 %; ``n_epochs`` fixes the x axis as in :func:`loss_figure`."""
    fig = go.Figure()
    for key, colour, name in (("train_acc", TRAIN, "train accuracy"), ("val_acc", VAL, "val accuracy")):
        fig.add_scatter(x=[e["epoch"] for e in epochs],
                        y=[None if e.get(key) is None else 100 * float(e[key]) for e in epochs],
                        mode="lines+markers", name=name, line=dict(color=colour, width=2.5))
    fig.update_layout(title="Accuracy", yaxis_title="accuracy (%)", yaxis=dict(range=[0, 102]),
                      xaxis=_epoch_axis(n_epochs, len(epochs)), **_LAYOUT)
    return fig
